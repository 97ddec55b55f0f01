"""Which menu a device follows during a canary, decided on the device itself (pure).

The operator publishes one plan per step, never a device list: each device
hashes its own id with the rollout id into a fixed point in [0, 100) and is in
the canary cohort when that point is below the step's weight.  The point never
changes for one rollout, so cohorts only grow as the weight grows, a device
keeps its cohort across restarts, and a new rollout draws a fresh cohort.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def cohort_point(device_id: str, rollout_id: str) -> float:
    """A uniform, stable point in [0, 100) for this device in this rollout."""
    digest = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def in_canary(device_id: str, rollout_id: str, weight: float) -> bool:
    return cohort_point(device_id, rollout_id) < weight


@dataclass(frozen=True)
class Followed:
    """The menu a device follows under a plan, with the policy and revision that go with it."""

    menu: Mapping[str, Any]
    policy: Mapping[str, Any]
    revision: int
    canary: bool


def follow(plan: Mapping[str, Any], device_id: str) -> Followed:
    """Stable menu, or the canary's when this device is in the cohort of the plan's canary step."""
    canary = plan.get("canary")
    if canary and in_canary(device_id, str(canary["rollout"]), float(canary["weight"])):
        menu = canary["menu"]
        return Followed(menu, canary.get("policy") or plan.get("policy") or {}, int(menu.get("revision", 0)), True)
    menu = plan["menu"]
    return Followed(menu, plan.get("policy") or {}, int(menu.get("revision", 0)), False)
