"""The demo's drift scenario: one device class starts seeing shifted inputs; the fleet names it.

The fleet runs with drift telemetry in `histograms+dp` mode at ε = 1 per window
(DRIFT_POLICY): the private mode is the point of the feature, so the demo shows
that a real shift stands out of the noise and that the noise alone raises
nothing.  Two phases, both read from the gateway (the merged histograms and their
scores) and the DeviceFleet's `Drifted` condition, never from wall time:

1. control: every device serves the same held-out samples as the reference was
   built from; the phase ends when every device class has been scored (the
   gateway's MIN_ROWS rows), and its verdict is the condition's then (nothing
   may be raised);
2. shift: the simulator transforms one class's workload (`tinymlops.fleet.shift`);
   the phase ends when the condition names that class, or after MAX_SHIFT_WINDOWS
   windows per device (a `--shift none` control run ends there, and must raise
   nothing).

Windows to detection: the windows each device of the shifted class had closed
since the shift when the gateway first scored the class as drifted: the rows of
that score (exact: rows are never noised) in windows, less those the class had
closed before the shift, per device.  Bytes per report: the drift field's
canonical JSON bytes in the signed reports the uplink carried (the simulator's
`tap`), per class.

The fleet is the demo's usual one, built with the normal variant matrix: every
class runs the variant it selects (rpi-zero-2 the int8 one its 128 KB partition
holds).  Each window names the variant that counted it, and the gateway compares
a class's output histograms (confidence, predicted class) with the outputs of the
variants that class ran, as the factory measured them on the reference data
(the menu's `monitoring.outputs`); a quantized class is not drift for being
quantized, and the control phase raises nothing.  The report says per class which
variants its devices ran at the end (`variants`).
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tinymlops import API_GROUP, API_VERSION
from tinymlops.errors import DemoError, InvalidReportError
from tinymlops.fleet import FleetSimulator
from tinymlops.report import SignedReport
from tinymlops.stack.local import LocalStack

CR_API = f"{API_GROUP}/{API_VERSION}"
DRIFT_POLICY = {"mode": "histograms+dp", "epsilon": 1.0, "windowInferences": 250,
                # The demo squeezes a day of windows into a minute: the cap must not end it.
                "dailyEpsilon": 100.0}
SHIFTED_CLASS = "jetson-nano"
INFERENCES_PER_POLL = 100  # each device serves 50 inferences a second: a window every 5 s
MAX_SHIFT_WINDOWS = 8
POLL_S = 0.5
TIMEOUT_S = 10.0


def drift_fleet(fleet: Mapping[str, Any], policy: Mapping[str, Any] = DRIFT_POLICY) -> dict[str, Any]:
    """The DeviceFleet with drift telemetry on (every class, as it selects its variants)."""
    spec = dict(fleet["spec"])
    policy_spec = dict(spec.get("policy") or {})
    policy_spec["telemetry"] = {**(policy_spec.get("telemetry") or {}), "drift": dict(policy)}
    return {**fleet, "spec": {**spec, "policy": policy_spec}}


class ReportMeter:
    """Bytes of the drift field per device class, from the signed reports on the simulator's uplink."""

    def __init__(self, simulator: FleetSimulator) -> None:
        self.bytes: defaultdict[str, list[int]] = defaultdict(list)
        self._previous = simulator.tap
        simulator.tap = self._see

    def _see(self, batch: list[dict[str, Any]]) -> None:
        if self._previous is not None:
            self._previous(batch)
        for item in batch:
            try:
                report = SignedReport.from_json(item).open()
            except InvalidReportError:
                continue
            if report.drift is not None:
                payload = json.dumps(report.drift.to_json(), sort_keys=True, separators=(",", ":"))
                self.bytes[report.device_class].append(len(payload.encode()))

    def per_class(self) -> dict[str, float]:
        return {cls: round(statistics.fmean(sizes), 1) for cls, sizes in sorted(self.bytes.items()) if sizes}


def windows_to_detection(rows_scored: int, window_inferences: int, windows_before: int, devices: int) -> float:
    """Windows per device of the shifted class between the shift and the score that flagged it."""
    merged = rows_scored / window_inferences
    return round(max(0.0, merged - windows_before) / max(1, devices), 1)


def class_verdict(group: Mapping[str, Any] | None) -> str:
    if group is None or not group.get("scored"):
        return "not scored"
    return "drift" if group.get("drifted") else "no drift"


def run_drift(
    stack: LocalStack,
    simulator: FleetSimulator,
    *,
    fleet: Mapping[str, Any],
    shift: str,
    device_class: str = SHIFTED_CLASS,
    policy: Mapping[str, Any] = DRIFT_POLICY,
    deadline: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Run the control phase, shift `device_class`'s inputs by `shift`, and follow the fleet's verdict."""
    assert stack.kube is not None and stack.gateway is not None
    kube = stack.kube
    namespace, name = fleet["metadata"].get("namespace", "default"), fleet["metadata"]["name"]
    summary_url = f"{stack.gateway.url}/v1/fleets/{namespace}/{name}/summary"
    window = int(policy["windowInferences"])
    devices = list(simulator.agents.values())
    classes = sorted({o.agent.caps.device_class for o in devices})
    shifted = [o for o in devices if o.agent.caps.device_class == device_class]
    if not shifted:
        raise DemoError(f"no device of class {device_class!r} in the fleet (classes: {', '.join(classes)})")
    meter = ReportMeter(simulator)

    def groups() -> dict[str, dict[str, Any]]:
        with urllib.request.urlopen(summary_url, timeout=TIMEOUT_S) as response:
            summary = json.load(response)
        return {str(g["device_class"]): g for g in summary.get("drift") or ()}

    def drifted_condition() -> tuple[dict[str, Any], list[str]]:
        obj = kube.get(CR_API, "DeviceFleet", namespace, name) or {}
        status = obj.get("status") or {}
        condition = next((dict(c) for c in status.get("conditions") or () if c.get("type") == "Drifted"), {})
        return condition, [str(d) for d in status.get("drifted") or ()]

    # 1. Control: every class scored, and the condition read after that.
    started = time.monotonic()
    while True:
        current = groups()
        waiting = [f"{cls} {current[cls]['rows'] if cls in current else 0}/{_min_rows(current)} rows"
                   for cls in classes if not (current.get(cls) or {}).get("scored")]
        condition, named = drifted_condition()
        # The operator rewrites the condition when the set of drifted classes changes, not when only the rows
        # grow: its message may count fewer groups than the gateway scored by now.  The gateway's verdict on
        # every class is the one it reads, so the control is raised if either says drift.
        if not waiting and condition.get("status") in ("True", "False"):
            break
        progress("control: " + (", ".join(waiting) if waiting else f"Drifted {condition.get('reason', '-')}"))
        _check_deadline(deadline, "every device class to be scored in the control phase")
        time.sleep(POLL_S)
    control = {"seconds": round(time.monotonic() - started, 1), "condition": _condition_json(condition, named),
               "raised": condition.get("status") == "True" or any(g.get("drifted") for g in current.values()),
               "by_class": {cls: _group_json(current.get(cls)) for cls in classes}}
    progress(f"control: Drifted {condition.get('status')} ({condition.get('reason')}) with every class scored")

    # 2. The shift: the class's world changes, its devices do not.
    windows_before = sum(o.agent.drift.window for o in shifted)
    if shift != "none":
        simulator.shift_inputs(device_class, shift)
    shifted_at = time.monotonic()
    detected_rows: int | None = None
    gateway_seconds: float | None = None
    condition_seconds: float | None = None
    while True:
        current = groups()
        group = current.get(device_class)
        if detected_rows is None and group is not None and group.get("drifted"):
            detected_rows, gateway_seconds = int(group["rows"]), time.monotonic() - shifted_at
        condition, named = drifted_condition()
        if condition_seconds is None and condition.get("status") == "True" and any(
                d.startswith(f"{device_class}/") for d in named):
            condition_seconds = time.monotonic() - shifted_at
        closed = (sum(o.agent.drift.window for o in shifted) - windows_before) / len(shifted)
        progress(f"{shift} inputs on {device_class}: {closed:.1f} windows per device, Drifted "
                 f"{condition.get('status', '-')} {named or ''}")
        if condition_seconds is not None and detected_rows is not None:
            break
        if closed >= MAX_SHIFT_WINDOWS:
            break
        _check_deadline(deadline, f"the fleet to name {device_class} as drifted")
        time.sleep(POLL_S)

    sizes = meter.per_class()
    by_class = {}
    for cls in classes:
        entry = _group_json(current.get(cls))
        entry.update(devices=sum(1 for o in devices if o.agent.caps.device_class == cls),
                     shifted=cls == device_class and shift != "none",
                     variants=sorted({o.agent.active.variant_id for o in devices
                                      if o.agent.caps.device_class == cls and o.agent.active is not None}),
                     bytes_per_report=sizes.get(cls))
        if cls == device_class:
            entry["windows_to_detection"] = None if detected_rows is None else windows_to_detection(
                detected_rows, window, windows_before, len(shifted))
        by_class[cls] = entry
    return {
        "mode": policy["mode"], "epsilon": policy.get("epsilon"), "window_inferences": window,
        "daily_epsilon": policy.get("dailyEpsilon"),
        "shift": {"kind": shift, "device_class": device_class, "devices": len(shifted)},
        "control": control,
        "condition": _condition_json(condition, named),
        "named_classes": sorted({d.split("/", 1)[0] for d in named}),
        "seconds_to_gateway_verdict": None if gateway_seconds is None else round(gateway_seconds, 1),
        "seconds_to_condition": None if condition_seconds is None else round(condition_seconds, 1),
        "by_class": by_class,
    }


def _min_rows(groups: Mapping[str, Mapping[str, Any]]) -> int | str:
    return next((int(g["min_rows"]) for g in groups.values() if "min_rows" in g), "?")


def _check_deadline(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise DemoError(f"timed out waiting for {what}")


def _condition_json(condition: Mapping[str, Any], named: Sequence[str]) -> dict[str, Any]:
    return {"status": condition.get("status"), "reason": condition.get("reason"),
            "message": condition.get("message"), "drifted": list(named)}


def _group_json(group: Mapping[str, Any] | None) -> dict[str, Any]:
    group = group or {}
    return {"verdict": class_verdict(group or None), "rows": int(group.get("rows") or 0),
            "top": [dict(f) for f in group.get("top") or ()]}
