"""What the gateway knows about each fleet: the latest report per device (pure).

Times are the gateway's own clock (injected, so tests control it), never the
device's `sent_at`: device clocks drift, and a microcontroller without a
real-time clock restarts at 1970.  `sent_at` only tells a retried report
from a new one, so a batch re-sent after a lost response is not counted twice.

Reports apply in arrival order.  A summary walks the devices of one fleet
only, so the operator's once-a-second poll costs O(devices of that fleet).

During a progressive rollout a device runs one revision (`revision`) and
follows another (`target_revision`, the canary or the stable one).  Phases are
grouped by the followed revision, because a failed install or health check
belongs to the revision that was being installed, while the running models
are grouped by the revision that actually serves.

A device that reports `stale_seconds` cannot get a fresh plan (see
`tinymlops.freshness`); `stale` counts those among the online devices,
whatever their phase, so a frozen mirror shows as a number, not a silence.

A device whose report carries `extraction` watches its model's clients for
model stealing; `extraction_alarms` sums the clients under alarm on the online
devices of a fleet, by device class (at most MAX_ALARM_CLASSES classes, the rest
folded into `_other`): a count, never a device or a client name.  `personalised_devices` counts, the same
way, the online devices whose report says their own last layer serves (`personalised`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tinymlops.report import OFFLINE, PHASES, Report

FleetKey = tuple[str, str]  # (namespace, fleet)
NO_VARIANT = "none"  # a label value for reports without an active variant
MAX_ALARM_CLASSES = 32  # device classes per fleet in the extraction alarm gauge; more fold into OTHER_CLASSES
OTHER_CLASSES = "_other"


@dataclass
class DeviceState:
    report: Report
    seen_at: float
    # When the current uninterrupted Running streak on (menu_version, variant) began:
    # the moment this device converged, which the operator turns into secondsToConverge.
    running_since: float | None


@dataclass(frozen=True)
class Applied:
    """What one report changed: metrics count only fresh reports and only new model loads."""

    fresh: bool
    new_load_ms: float | None = None
    # This report records a new failure (of its target revision): true once per failure, not on
    # every report that repeats it, so a counter of failed installs counts installs, not reports.
    new_failure: bool = False


@dataclass(frozen=True)
class FleetSummary:
    devices_reporting: int
    converged: int
    failed: int
    by_phase: dict[str, int]  # only phases with devices: zeros would be noise in the fleet's status
    by_variant: dict[str, int]
    last_converged_at: float | None
    menu_version: int
    # {"<target revision>": {"<phase>": devices}}, Offline included, only non-zero phases.
    by_revision: dict[str, dict[str, int]] = field(default_factory=dict)
    # {"<running revision>": {"<variant>": devices}} of online Running devices, whatever their menu version.
    running_by_revision: dict[str, dict[str, int]] = field(default_factory=dict)
    stale: int = 0  # online devices whose latest report says they have no fresh plan

    def as_json(self) -> dict[str, Any]:
        return {
            "devices_reporting": self.devices_reporting,
            "converged": self.converged,
            "failed": self.failed,
            "by_phase": dict(self.by_phase),
            "by_variant": dict(self.by_variant),
            "last_converged_at": self.last_converged_at,
            "menu_version": self.menu_version,
            "by_revision": {revision: dict(phases) for revision, phases in self.by_revision.items()},
            "running_by_revision": {
                revision: dict(variants) for revision, variants in self.running_by_revision.items()
            },
            "stale": self.stale,
        }


_PHASE_ORDER = {phase: i for i, phase in enumerate((*PHASES, OFFLINE))}


def _by_revision(counts: dict[int, dict[str, int]], *, key: Callable[[str], Any]) -> dict[str, dict[str, int]]:
    # Numeric order, not string order ("10" after "9"), and stable inner order, so the JSON reads the same each poll.
    return {
        str(revision): {name: inner[name] for name in sorted(inner, key=key)}
        for revision, inner in sorted(counts.items())
    }


def _same_model(a: Report, b: Report) -> bool:
    return (a.menu_version, a.variant) == (b.menu_version, b.variant)


class FleetState:
    def __init__(self, *, offline_after_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.offline_after_s = offline_after_s
        self.clock = clock
        self._fleets: dict[FleetKey, dict[str, DeviceState]] = {}
        # Device names are unique per namespace; a device that moves to another
        # fleet must leave the old one, or it would be counted twice.
        self._fleet_of: dict[tuple[str, str], FleetKey] = {}

    def apply(self, report: Report) -> Applied:
        now = self.clock()
        fleet_key = (report.namespace, report.fleet)
        device_key = (report.namespace, report.device)
        old_fleet = self._fleet_of.get(device_key)
        previous = self._fleets.get(old_fleet, {}).get(report.device) if old_fleet else None
        if previous is not None and previous.report.sent_at == report.sent_at:
            return Applied(fresh=False)  # a retry of what we already have
        if old_fleet is not None and old_fleet != fleet_key:
            self._drop(old_fleet, report.device)
            previous = None
        running_since: float | None = None
        if report.phase == "Running":
            # Leaving Running, or changing version or variant, starts a new convergence.
            streak = previous.running_since if previous and _same_model(previous.report, report) else None
            running_since = now if streak is None else streak
        self._fleets.setdefault(fleet_key, {})[report.device] = DeviceState(report, now, running_since)
        self._fleet_of[device_key] = fleet_key
        # A device that keeps reporting the same failure, or goes quiet and comes back still failed,
        # has failed once; a new attempt failing again, or a failure on another revision, is a new one.
        new_failure = report.phase == "Failed" and (
            previous is None
            or previous.report.phase != "Failed"
            or previous.report.target_revision != report.target_revision
        )
        new_load = report.load_ms is not None and (
            previous is None
            or previous.report.load_ms != report.load_ms
            or previous.report.variant_sha256 != report.variant_sha256
        )
        # Agents may repeat the last load time in every report; observe it once.
        return Applied(
            fresh=True,
            new_load_ms=report.load_ms if new_load else None,
            new_failure=new_failure,
        )

    def _drop(self, fleet_key: FleetKey, device: str) -> None:
        devices = self._fleets.get(fleet_key, {})
        devices.pop(device, None)
        if not devices:
            self._fleets.pop(fleet_key, None)

    def fleets(self) -> list[FleetKey]:
        return list(self._fleets)

    def devices(self, namespace: str, fleet: str) -> Iterator[tuple[str, DeviceState]]:
        yield from self._fleets.get((namespace, fleet), {}).items()

    def device_count(self) -> int:
        return len(self._fleet_of)

    def is_offline(self, state: DeviceState, now: float) -> bool:
        return now - state.seen_at > self.offline_after_s

    def extraction_alarms(self, namespace: str, fleet: str) -> dict[str, int]:
        """Clients under an extraction alarm on the fleet's online devices, by device class (zeros included for
        every class of the fleet), the MAX_ALARM_CLASSES largest classes as they are and the rest summed."""
        now = self.clock()
        counts: dict[str, int] = {}
        for state in self._fleets.get((namespace, fleet), {}).values():
            extraction = state.report.extraction
            # An offline device's alarms are no longer known; its class keeps a series (at zero) for alerts.
            alarms = 0 if extraction is None or self.is_offline(state, now) else len(extraction.alarms)
            counts[state.report.device_class] = counts.get(state.report.device_class, 0) + alarms
        return _fold_classes(counts)

    def personalised_devices(self, namespace: str, fleet: str) -> dict[str, int]:
        """Online devices of the fleet whose own last layer serves (their report's `personalised` flag), by device
        class (zeros included for every class), folded as `extraction_alarms` are."""
        now = self.clock()
        counts: dict[str, int] = {}
        for state in self._fleets.get((namespace, fleet), {}).values():
            mine = state.report.personalised is True and not self.is_offline(state, now)
            counts[state.report.device_class] = counts.get(state.report.device_class, 0) + int(mine)
        return _fold_classes(counts)

    def summary(self, namespace: str, fleet: str, menu_version: int | None = None) -> FleetSummary:
        """Counts for one fleet against `menu_version` (default: the highest any of its devices reported)."""
        devices = self._fleets.get((namespace, fleet), {})
        if menu_version is None:
            menu_version = max((state.report.menu_version for state in devices.values()), default=0)
        now = self.clock()
        by_phase: dict[str, int] = {}
        by_variant: dict[str, int] = {}
        by_revision: dict[int, dict[str, int]] = {}
        running_by_revision: dict[int, dict[str, int]] = {}
        converged = failed = stale = 0
        last_converged_at: float | None = None
        for state in devices.values():
            report = state.report
            phases = by_revision.setdefault(report.target_revision, {})
            if self.is_offline(state, now):
                by_phase[OFFLINE] = by_phase.get(OFFLINE, 0) + 1
                phases[OFFLINE] = phases.get(OFFLINE, 0) + 1
                continue
            by_phase[report.phase] = by_phase.get(report.phase, 0) + 1
            if report.stale_seconds is not None:
                stale += 1
            phases[report.phase] = phases.get(report.phase, 0) + 1
            if report.phase == "Running":
                running = running_by_revision.setdefault(report.revision, {})
                name = report.variant or NO_VARIANT
                running[name] = running.get(name, 0) + 1
            if report.phase == "Failed":
                failed += 1
            elif report.phase == "Running" and report.menu_version == menu_version:
                converged += 1
                variant = report.variant or NO_VARIANT
                by_variant[variant] = by_variant.get(variant, 0) + 1
                since = state.running_since
                if since is not None and (last_converged_at is None or since > last_converged_at):
                    last_converged_at = since
        return FleetSummary(
            devices_reporting=len(devices) - by_phase.get(OFFLINE, 0),
            converged=converged,
            failed=failed,
            by_phase=by_phase,
            by_variant=by_variant,
            last_converged_at=last_converged_at,
            menu_version=menu_version,
            by_revision=_by_revision(by_revision, key=_PHASE_ORDER.__getitem__),
            running_by_revision=_by_revision(running_by_revision, key=str),
            stale=stale,
        )


def _fold_classes(counts: dict[str, int]) -> dict[str, int]:
    """Counts by device class, the MAX_ALARM_CLASSES largest as they are and the rest summed into OTHER_CLASSES."""
    if len(counts) <= MAX_ALARM_CLASSES:
        return dict(sorted(counts.items()))
    ordered = sorted(counts, key=lambda c: (-counts[c], c))
    folded = {c: counts[c] for c in sorted(ordered[:MAX_ALARM_CLASSES])}
    folded[OTHER_CLASSES] = sum(counts[c] for c in ordered[MAX_ALARM_CLASSES:])
    return folded
