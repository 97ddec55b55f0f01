"""The fleet's selection policy: what its devices optimise when several variants fit (pure).

The policy is the DeviceFleet's `spec.policy`, which the operator publishes unchanged in the signed
plan (`plan["policy"]`), so it keeps the CRD's camelCase on the wire.  `SelectionPolicy.from_plan`
is the one place that reads it into Python names; everything else uses the typed object.  Other
readers of `plan["policy"]` (telemetry) take their own keys and ignore these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import SpecError

COSTS = ("accuracy", "latency", "size", "energy")
# Presets: the objective gets weight 1; the others stay small but non-zero so that context rules
# (which multiply) can still move the choice.  Accuracy keeps 0.25 elsewhere: losing 4 points
# weighs as much as halving the objective's cost.  Under the accuracy objective the others only
# break near-ties (0.01: a variant 4x smaller and 2x cheaper does not outweigh 0.05 points), so
# latency noise at build time cannot flip a whole fleet to a less accurate variant.
OBJECTIVE_WEIGHTS: Mapping[str, Mapping[str, float]] = {
    "accuracy": {"accuracy": 1.0, "latency": 0.01, "size": 0.01, "energy": 0.01},
    "latency": {"accuracy": 0.25, "latency": 1.0, "size": 0.05, "energy": 0.1},
    "size": {"accuracy": 0.25, "latency": 0.05, "size": 1.0, "energy": 0.1},
    "energy": {"accuracy": 0.25, "latency": 0.05, "size": 0.05, "energy": 1.0},
    "balanced": {"accuracy": 1.0, "latency": 1.0, "size": 1.0, "energy": 1.0},
}
# Each field's key in the plan: the DeviceFleet CRD's camelCase, since the plan carries spec.policy as it is.
PLAN_KEYS = {
    "objective": "objective",
    "weights": "weights",
    "low_battery_pct": "lowBatteryPct",
    "max_accuracy_drop": "maxAccuracyDrop",
}


@dataclass(frozen=True)
class SelectionPolicy:
    """The fleet's selection policy; errors name the field as the user wrote it (`policy.lowBatteryPct`)."""

    objective: str = "accuracy"  # a key of OBJECTIVE_WEIGHTS
    weights: Mapping[str, float] | None = None  # explicit weights per cost, overriding objective
    low_battery_pct: float = 20.0
    max_accuracy_drop: float | None = None  # a fraction like the metrics: 0.01 = one point

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVE_WEIGHTS:
            raise SpecError(f"policy.objective: {self.objective!r} is not one of {', '.join(OBJECTIVE_WEIGHTS)}")
        if self.weights is not None:
            for key, value in self.weights.items():
                if key not in COSTS:
                    raise SpecError(f"policy.weights.{key}: unknown cost, use {', '.join(COSTS)}")
                if not _is_number(value) or not math.isfinite(value) or value < 0:
                    raise SpecError(f"policy.weights.{key}: {value!r} is not a finite number >= 0")
            if not any(self.weights.values()):
                raise SpecError("policy.weights: at least one weight must be > 0")
        if not _is_number(self.low_battery_pct) or not 0 <= self.low_battery_pct <= 100:
            raise SpecError(f"policy.lowBatteryPct: {self.low_battery_pct!r} is not a percentage in [0, 100]")
        drop = self.max_accuracy_drop
        if drop is not None and (not _is_number(drop) or not 0 <= drop <= 1):
            raise SpecError(f"policy.maxAccuracyDrop: {drop!r} is not a fraction in [0, 1]")

    @classmethod
    def from_plan(cls, policy: Mapping[str, Any] | None) -> SelectionPolicy:
        """Read `plan["policy"]`, spelled as in the CRD (`PLAN_KEYS`).  Keys it does not know are ignored, so
        a device follows a plan written for newer devices, and the plan's other readers keep theirs."""
        policy = policy or {}
        kwargs: dict[str, Any] = {}
        for field_name, key in PLAN_KEYS.items():
            value: Any = policy.get(key)
            if value is None:
                continue
            if field_name == "objective" and not isinstance(value, str):
                raise SpecError(f"policy.{key}: {value!r} is not a string")
            if field_name == "weights":
                if not isinstance(value, Mapping):
                    raise SpecError(f"policy.{key}: {value!r} is not a mapping of cost to weight")
                value = dict(value)
            if field_name in ("low_battery_pct", "max_accuracy_drop"):
                if not _is_number(value):
                    raise SpecError(f"policy.{key}: {value!r} is not a number")
                value = float(value)
            kwargs[field_name] = value
        return cls(**kwargs)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
