"""Times as Kubernetes status shows them: RFC 3339 strings in UTC, to the millisecond.

Code that computes with times keeps Unix seconds (floats); the conversion
happens where a time enters or leaves a status.  `seconds` also reads the
Unix seconds that older statuses hold, so an upgraded operator continues
their rollouts.
"""

from __future__ import annotations

import datetime


def rfc3339(seconds: float) -> str:
    """'2026-12-01T09:30:12.345Z' for Unix time `seconds` (milliseconds kept: steps are often < 1 s apart)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds(value: str | float | None) -> float:
    """Unix seconds from an RFC 3339 string or from a number (older statuses); 0.0 for None or ''.

    ValueError for a string that is not RFC 3339 with a time zone."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{value!r}: an RFC 3339 time needs a time zone (Z or an offset)")
    return moment.timestamp()
