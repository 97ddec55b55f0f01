"""The fleet's selection policy as the signed plan carries it: parsing and validation."""

from __future__ import annotations

from typing import Any

import pytest

from tinymlops.errors import SpecError
from tinymlops.selection import SelectionPolicy


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


def test_policy_from_plan_ignores_unknown_keys_and_reads_both_spellings() -> None:
    assert SelectionPolicy.from_plan(None) == SelectionPolicy()
    policy = SelectionPolicy.from_plan({"objective": "latency", "lowBatteryPct": 30, "futureKnob": True,
                                        "max_accuracy_drop": 0.02})
    assert policy == SelectionPolicy(objective="latency", low_battery_pct=30.0, max_accuracy_drop=0.02)
