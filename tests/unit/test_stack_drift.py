"""The drift scenario's pure parts: its manifests and how windows to detection are counted."""

from __future__ import annotations

from tinymlops.bundled import examples_dir
from tinymlops.drift.policy import DriftPolicy
from tinymlops.stack.drift import (
    DRIFT_POLICY,
    class_verdict,
    drift_fleet,
    windows_to_detection,
)
from tinymlops.stack.kube import load_manifests


def _examples() -> tuple[dict, dict]:
    manifests = load_manifests(sorted(examples_dir().glob("*.yaml")))
    return (next(m for m in manifests if m["kind"] == "EdgeModel"),
            next(m for m in manifests if m["kind"] == "DeviceFleet"))


def test_the_fleet_turns_drift_telemetry_on_with_a_policy_the_agent_accepts() -> None:
    _, fleet = _examples()
    changed = drift_fleet(fleet)
    policy = DriftPolicy.from_policy(changed["spec"]["policy"])
    assert policy.private and policy.epsilon == 1.0 and policy.window_inferences == DRIFT_POLICY["windowInferences"]
    assert changed["spec"]["policy"]["objective"] == fleet["spec"]["policy"]["objective"]
    # Every class stays in: a quantized class is compared with its own variant's outputs, not left out.
    assert changed["spec"]["selector"] == fleet["spec"]["selector"]
    assert "telemetry" not in fleet["spec"]["policy"]  # the example itself is untouched


def test_windows_to_detection_counts_only_windows_after_the_shift_per_device() -> None:
    # 10 devices had closed 20 windows of 250 before the shift; the flagging score covered 12,500 rows = 50 windows.
    assert windows_to_detection(12_500, 250, 20, 10) == 3.0
    assert windows_to_detection(4_000, 250, 20, 10) == 0.0  # a score older than the shift never counts negative


def test_class_verdicts() -> None:
    assert class_verdict(None) == "not scored"
    assert class_verdict({"scored": False, "drifted": False}) == "not scored"
    assert class_verdict({"scored": True, "drifted": False}) == "no drift"
    assert class_verdict({"scored": True, "drifted": True}) == "drift"
