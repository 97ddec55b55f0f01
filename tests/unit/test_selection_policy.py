"""The fleet's selection policy as the signed plan carries it: parsing and validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tinymlops.errors import SpecError
from tinymlops.selection import SelectionPolicy
from tinymlops.selection.policy import PLAN_KEYS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("policy", "field"), [
    ({"objective": "fastest"}, "policy.objective"),
    ({"objective": 3}, "policy.objective"),
    ({"weights": {"speed": 1}}, "policy.weights.speed"),
    ({"weights": {"energy": -1}}, "policy.weights.energy"),
    ({"weights": {"energy": 0}}, "policy.weights"),
    ({"weights": [1, 2]}, "policy.weights"),
    ({"lowBatteryPct": "low"}, "policy.lowBatteryPct"),
    ({"lowBatteryPct": 120}, "policy.lowBatteryPct"),
    ({"maxAccuracyDrop": 2}, "policy.maxAccuracyDrop"),
])
def test_bad_policy_values_raise_a_spec_error_naming_the_field(policy: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=f"^{field.replace('.', '[.]')}:"):
        SelectionPolicy.from_plan(policy)


def test_policy_from_plan_reads_the_crd_spelling_and_ignores_keys_it_does_not_know() -> None:
    assert SelectionPolicy.from_plan(None) == SelectionPolicy()
    policy = SelectionPolicy.from_plan({"objective": "latency", "lowBatteryPct": 30, "maxAccuracyDrop": 0.02,
                                        "futureKnob": True, "telemetry": {"upload": "never"}})
    assert policy == SelectionPolicy(objective="latency", low_battery_pct=30.0, max_accuracy_drop=0.02)


def test_the_plan_is_read_in_one_spelling_only() -> None:
    # The Python names are not the plan's: a plan spelled that way was not written by the operator.
    assert SelectionPolicy.from_plan({"low_battery_pct": 30, "max_accuracy_drop": 0.02}) == SelectionPolicy()


def test_the_policy_the_crd_defaults_is_the_default_policy() -> None:
    schema = yaml.safe_load((ROOT / "crds" / "devicefleets.tinymlops.io.yaml").read_text())
    spec = schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    defaults = {key: prop["default"] for key, prop in spec["policy"]["properties"].items() if "default" in prop}
    assert SelectionPolicy.from_plan(defaults) == SelectionPolicy()
    assert set(PLAN_KEYS.values()) <= set(spec["policy"]["properties"]), "every key the plan is read by is in the CRD"
