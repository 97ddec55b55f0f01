"""When a fleet's devices keep sending reports the gateway refuses, tell the fleet's owner (pure).

The gateway's fleet summary carries `rejected` (`gateway/rejections.py`): refusals
by reason, and the devices with the most.  A device that reaches `THRESHOLD`
refusals keeps failing (a lost identity key, a clock of sequence numbers reset by
a re-flash, or someone forging its reports), and the fleet gets one Warning Event,
`ReportsRejected`, naming it, its reasons and the last error.  A device is named
again only after `REPEAT_S` and only if its count grew meanwhile, and one Event
names at most `MAX_NAMED` devices, so a fleet under attack costs an Event a
pass at most and a quiet fleet costs nothing.

`Announced` remembers, per device, the count last announced and when: the
operator keeps it in memory (a restarted operator announces once more).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops_operator.logic.rollout import Event

THRESHOLD = 3
REPEAT_S = 600.0
MAX_NAMED = 5
REASON = "ReportsRejected"


@dataclass(frozen=True)
class Announced:
    count: int
    at: float


def rejection_event(
    rejected: Mapping[str, Any] | None, announced: Mapping[str, Announced], *, now: float
) -> tuple[Event | None, dict[str, Announced]]:
    """The Event to post for devices that keep failing (None: none), and what is announced afterwards."""
    remembered = dict(announced)
    due: list[Mapping[str, Any]] = []
    for device in (rejected or {}).get("devices") or ():
        name, count = str(device.get("device")), int(device.get("count") or 0)
        before = remembered.get(name)
        if before is not None and count < before.count:  # the gateway restarted and counts afresh
            remembered[name] = before = Announced(count, before.at)
        if count < THRESHOLD:
            continue
        if before is None or (count > before.count and now - before.at >= REPEAT_S):
            due.append(device)
    if not due:
        return None, remembered
    named = due[:MAX_NAMED]
    for device in named:
        remembered[str(device["device"])] = Announced(int(device["count"]), now)
    parts = [f"{d['device']} ({_reasons(d)}; last: {d.get('last_error', '')})" for d in named]
    more = f" and {len(due) - len(named)} more" if len(due) > len(named) else ""
    message = f"{len(due)} device(s) keep sending reports the gateway refuses: {'; '.join(parts)}{more}"
    return Event("Warning", REASON, message), remembered


def _reasons(device: Mapping[str, Any]) -> str:
    by_reason = device.get("by_reason") or {}
    return ", ".join(f"{reason} x{count}" for reason, count in sorted(by_reason.items()))
