"""The signed rollout plan the operator publishes once per fleet revision (pure).

A plan names the menu (by digest and version), the fleet's label selector and
the selection policy; it never lists devices, so publishing it costs the same
for 10 or 10^6 devices.  Devices verify its signature, check the selector
against their own labels, verify the menu, then choose their variant.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tinymlops import API_GROUP, API_VERSION

PLAN_KIND = "RolloutPlan"


def build_plan(
    *,
    namespace: str,
    fleet: str,
    generation: int,
    model: str,
    menu_sha256: str,
    menu_version: int,
    policy: Mapping[str, Any],
    selector: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The plan for one fleet generation; `policy` is the fleet's spec.policy as it is (devices interpret it)."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": PLAN_KIND,
        "fleet": {"namespace": namespace, "name": fleet, "generation": generation},
        "model": {"namespace": namespace, "name": model},
        "menu": {
            "path": f"models/{namespace}/{model}/menu.json",
            "sha256": menu_sha256,
            "version": menu_version,
        },
        "selector": dict(selector or {}),
        "policy": dict(policy),
    }


def plan_bytes(plan: Mapping[str, Any]) -> bytes:
    """Canonical bytes: sorted keys and no whitespace, so equal plans sign equally."""
    return json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()
