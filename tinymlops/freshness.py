"""How long a signed plan or menu stays current, and what a device makes of one that is not (pure).

A signature proves who wrote a document, not that it is still the newest one: a
frozen edge node or mirror that keeps serving yesterday's plan (a *freeze
attack*, which withholds a rollback or a fix), or one that replays an old
signed plan, passes every signature check.  So, as TUF's timestamp role does,
each plan and menu carries `expires` (RFC 3339, UTC) inside its signed bytes:

- the plan's expiry is short (PLAN_TTL_S, a day by default, per fleet
  `spec.planExpirySeconds`) and the operator re-signs the plan well before it
  passes even when nothing changed, so a device that stops getting fresh plans
  knows within a day and says so (`Stale`, with the age) instead of silently
  running what it has;
- the menu's expiry is long (MENU_TTL_S, a year by default, `variants build
  --expires`): a fresh plan pins a menu by digest, which vouches for it however
  old it is (a rollback may pin a year-old stable menu), so a menu's own expiry
  only guards what no plan pins, a sideloaded install (`agent install`).

Device clocks drift, so a document counts as expired only CLOCK_SKEW_S after
its `expires` (the 5 minutes Kerberos allows); the age reported is counted
from `expires` itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tinymlops.errors import IntegrityError
from tinymlops.timestamps import rfc3339, seconds

PLAN_TTL_S = 24 * 3600.0
MENU_TTL_S = 365 * 24 * 3600.0
CLOCK_SKEW_S = 300.0
MIN_TTL_S = 2 * CLOCK_SKEW_S  # shorter, and the tolerance for clock skew would be most of the lifetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def expires_after(now: float, ttl_s: float) -> str:
    """The `expires` value for a document signed at `now` that stays current `ttl_s` seconds."""
    return rfc3339(now + ttl_s)


def expiry(document: Mapping[str, Any], *, what: str) -> float | None:
    """A signed document's `expires` in Unix seconds; None when it has none (written before expiry existed).

    IntegrityError, naming `what`, for a value that is not an RFC 3339 time with a time zone."""
    value = document.get("expires")
    if value is None:
        return None
    if not isinstance(value, str):
        raise IntegrityError(f"{what}: expires {value!r} is not an RFC 3339 time")
    try:
        return seconds(value)
    except ValueError as exc:
        raise IntegrityError(f"{what}: expires {value!r} is not an RFC 3339 time ({exc})") from exc


def expired(expires: float | None, now: float, *, skew_s: float = CLOCK_SKEW_S) -> bool:
    """Whether a document that `expires` is past it at `now`, beyond the tolerance for clock skew."""
    return expires is not None and now > expires + skew_s


def stale_seconds(fresh_until: float | None, now: float, *, skew_s: float = CLOCK_SKEW_S) -> float | None:
    """How long ago a device's freshest plan expired (None: it is still current, or never claimed an expiry)."""
    if fresh_until is None or not expired(fresh_until, now, skew_s=skew_s):
        return None
    return round(now - fresh_until, 3)


def expires_option(text: str, now: float) -> str:
    """An `expires` from what a user typed: a duration from `now` ('90d') or an RFC 3339 time; ValueError when
    it is neither, or already past."""
    try:
        moment = now + parse_duration(text)
    except ValueError:
        try:
            moment = seconds(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither a duration (e.g. 90d, 12h) nor an RFC 3339 time") from None
    if moment <= now:
        raise ValueError(f"{text!r} is not in the future")
    return rfc3339(moment)


def parse_duration(text: str) -> float:
    """Seconds in '90d', '12h', '30m', '45s' or a bare number of seconds; ValueError naming the text."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (a number with an optional unit s, m, h or d, e.g. 90d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
