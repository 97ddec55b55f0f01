"""Refused reports per fleet, and which devices keep failing: what the fleet summary tells the operator (pure).

Prometheus counts refusals by reason only (`tinymlops_gateway_reports_rejected_total`):
a device id is no label.  The operator still needs to name the device that keeps
failing, so the gateway keeps, per fleet, the count by reason and the devices with
the most refusals, and the fleet summary carries them.

A refused report is not authenticated: whom it names is a claim.  So a refusal is
attributed only where the claim cannot grow memory without bound: to a registered
device (the registry bounds them), or to a fleet the gateway already knows from
accepted reports, where at most `max_devices` device names are kept (the least
recently refused go first).  Everything else is counted by the metric alone.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tinymlops.gateway.reports import Rejection

MAX_DEVICES_PER_FLEET = 50
MAX_ERROR_CHARS = 300


@dataclass
class _Device:
    by_reason: Counter[str] = field(default_factory=Counter)
    last_reason: str = ""
    last_error: str = ""
    last_at: float = 0.0


@dataclass
class _Fleet:
    by_reason: Counter[str] = field(default_factory=Counter)
    devices: OrderedDict[str, _Device] = field(default_factory=OrderedDict)


class RejectionLog:
    def __init__(self, *, clock: Callable[[], float], max_devices: int = MAX_DEVICES_PER_FLEET) -> None:
        self.clock = clock
        self.max_devices = max_devices
        self._fleets: dict[tuple[str, str], _Fleet] = {}

    def record(self, rejection: Rejection, *, attributable: bool) -> None:
        """Count `rejection` against the fleet and device it names, if `attributable` (see the module)."""
        if rejection.device is None or rejection.fleet is None or not attributable:
            return
        namespace, name = rejection.device
        fleet = self._fleets.setdefault((namespace, rejection.fleet), _Fleet())
        fleet.by_reason[rejection.reason] += 1
        device = fleet.devices.pop(name, None) or _Device()
        fleet.devices[name] = device  # most recently refused last
        device.by_reason[rejection.reason] += 1
        device.last_reason, device.last_error = rejection.reason, rejection.error[:MAX_ERROR_CHARS]
        device.last_at = self.clock()
        while len(fleet.devices) > self.max_devices:
            fleet.devices.popitem(last=False)

    def for_fleet(self, namespace: str, fleet: str) -> dict[str, Any]:
        """`{"total", "by_reason", "devices": [{"device", "count", "by_reason", "last_reason", "last_error",
        "last_at"}]}`, devices with the most refusals first."""
        entry = self._fleets.get((namespace, fleet))
        if entry is None:
            return {"total": 0, "by_reason": {}, "devices": []}
        devices = sorted(entry.devices.items(), key=lambda item: (-item[1].by_reason.total(), item[0]))
        return {
            "total": entry.by_reason.total(),
            "by_reason": dict(sorted(entry.by_reason.items())),
            "devices": [{"device": name, "count": device.by_reason.total(), "by_reason": dict(sorted(
                device.by_reason.items())), "last_reason": device.last_reason, "last_error": device.last_error,
                "last_at": device.last_at} for name, device in devices],
        }
