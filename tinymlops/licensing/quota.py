"""Whether a licence lets a device serve the next inferences, and the message when it does not (pure).

Time is the latest the device has seen (`effective_now`), so setting its clock back
neither stretches a licence nor rewinds what it counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymlops.freshness import CLOCK_SKEW_S
from tinymlops.timestamps import rfc3339

if TYPE_CHECKING:  # the token module needs pyseto; deciding needs only the claims
    from tinymlops.licensing.token import License


def effective_now(now: float, latest_seen: float) -> float:
    return max(now, latest_seen)


def clock_set_back(now: float, latest_seen: float) -> float:
    """How many seconds the clock reads before the latest time seen (0 within the allowed skew)."""
    behind = latest_seen - now
    return behind if behind > CLOCK_SKEW_S else 0.0


def refusal(license: License, used: int, wanted: int, now: float) -> str | None:
    """Why `wanted` more inferences may not be served after `used` under `license` at `now`; None when they may."""
    if now < license.not_before:
        return f"licence not valid before {rfc3339(license.not_before)}; inferences refused until then"
    if now >= license.expires:
        return f"licence expired at {rfc3339(license.expires)}; reconnect to refill"
    if used >= license.quota:
        return f"quota exhausted: {used:,} of {license.quota:,} inferences used; reconnect to refill"
    if used + wanted > license.quota:
        return (f"quota: {wanted:,} inferences asked, {license.quota - used:,} of {license.quota:,} left; "
                "ask for fewer or reconnect to refill")
    return None
