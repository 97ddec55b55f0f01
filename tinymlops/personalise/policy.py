"""The fleet's personalisation policy, `spec.policy.personalisation`, as the signed plan carries it (pure).

    personalisation:
      enabled: true          # devices of this fleet may fit their own last layer (default: false)
      minImprovement: 0.02   # local validation accuracy must rise by at least this (a fraction: 0.02 = 2 points)
      validationFraction: 0.25
      minSamples: 40         # fewer labelled samples than this: no fit
      l2: 0.01               # pull toward the base layer
      steps: 300             # gradient steps of the fit

Keys it does not know are ignored (a newer fleet's plan still reads); a known key with a bad value is a SpecError
naming it as written (`policy.personalisation.minImprovement`), as the CRD's schema would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tinymlops.errors import SpecError

KEY = "personalisation"
PLAN_KEYS = {"enabled": "enabled", "min_improvement": "minImprovement", "validation_fraction": "validationFraction",
             "min_samples": "minSamples", "l2": "l2", "steps": "steps"}
MAX_STEPS = 10_000


@dataclass(frozen=True)
class PersonalisationPolicy:
    enabled: bool | None = None  # None: the fleet says nothing (off on a fleet; a standalone owner may run it)
    min_improvement: float = 0.02
    validation_fraction: float = 0.25
    min_samples: int = 40
    l2: float = 0.01
    steps: int = 300

    def __post_init__(self) -> None:
        where = f"policy.{KEY}"
        if self.enabled is not None and not isinstance(self.enabled, bool):
            raise SpecError(f"{where}.enabled: {self.enabled!r} is not true or false")
        if not _number(self.min_improvement) or not 0 <= self.min_improvement <= 1:
            raise SpecError(f"{where}.minImprovement: {self.min_improvement!r} is not a fraction in [0, 1]")
        if not _number(self.validation_fraction) or not 0 < self.validation_fraction < 1:
            raise SpecError(f"{where}.validationFraction: {self.validation_fraction!r} is not a fraction in (0, 1)")
        if not _integer(self.min_samples) or self.min_samples < 4:
            raise SpecError(f"{where}.minSamples: {self.min_samples!r} is not an integer >= 4")
        if not _number(self.l2) or not math.isfinite(self.l2) or self.l2 < 0:
            raise SpecError(f"{where}.l2: {self.l2!r} is not a finite number >= 0")
        if not _integer(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise SpecError(f"{where}.steps: {self.steps!r} is not an integer in 1..{MAX_STEPS}")

    @classmethod
    def from_policy(cls, policy: Mapping[str, Any] | None) -> PersonalisationPolicy:
        """Read `policy.personalisation` of a plan (or a standalone device's policy.json)."""
        section = (policy or {}).get(KEY)
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise SpecError(f"policy.{KEY}: {section!r} is not an object")
        names = {f.name for f in fields(cls)}
        return cls(**{name: section[key] for name, key in PLAN_KEYS.items() if name in names and key in section})

    def to_plan(self) -> dict[str, Any]:
        """The section as a plan spells it (what `from_policy` reads back)."""
        return {key: getattr(self, name) for name, key in PLAN_KEYS.items() if getattr(self, name) is not None}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
