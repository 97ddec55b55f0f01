"""The signed rollout plan the operator publishes once per rollout step (pure).

A plan names the stable menu and, during a canary, the canary menu with its
weight and rollout id (each menu by digest, version and revision), the fleet's
label selector and the selection policy; it never lists devices, so publishing
it costs the same for 10 or 10^6 devices.  Devices verify its signature, check
the selector against their own labels, compute their cohort
(`tinymlops.cohort`), verify the menu they follow, then choose their
variant.  `serial` grows with every plan of a fleet: devices refuse an older
one, which is what lets a newer plan send them back to an older menu (a
rollback) without opening the door to replaying old plans.

`serial` and `expires` are stamped when the plan is signed, not decided by the
rollout: the operator re-signs an unchanged plan before it expires (a refresh,
see `tinymlops.freshness`) with a new serial and expiry, and `content_sha256`,
which leaves both out, names the same plan across refreshes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tinymlops import API_GROUP, API_VERSION
from tinymlops.layout import kept_menu, menu_prefix
from tinymlops.store import sha256_bytes

PLAN_KIND = "RolloutPlan"
STAMPS = ("serial", "expires")  # set at each signing; everything else is the rollout's decision


def menu_ref(
    *, namespace: str, model: str, menu_sha256: str, menu_version: int, revision: int, licensee: str = "",
) -> dict[str, Any]:
    """Where a device finds one revision's menu (`kept_menu`) and, in `folder`, its blobs and grants: the
    model's variant directory, or `licensee`'s watermarked one (named in the ref, which plans without one lack)."""
    path, signature = kept_menu(namespace, model, menu_sha256, licensee)
    return {
        "path": path,
        "signature": signature,
        "folder": f"{menu_prefix(namespace, model, licensee)}/",
        "sha256": menu_sha256,
        "version": menu_version,
        "revision": revision,
        **({"licensee": licensee} if licensee else {}),
    }


def build_plan(
    *,
    namespace: str,
    fleet: str,
    model: str,
    menu: Mapping[str, Any],
    policy: Mapping[str, Any],
    selector: Mapping[str, Any] | None = None,
    canary: Mapping[str, Any] | None = None,
    serial: int = 1,
) -> dict[str, Any]:
    """One step's plan.  `menu` is the stable revision's `menu_ref`; `canary`, when a canary has devices, is
    `{"rollout": id, "weight": 0..100, "menu": menu_ref, "policy": ...}`.  `policy` is the stable revision's
    spec.policy as it is (devices interpret it)."""
    plan: dict[str, Any] = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": PLAN_KIND,
        "serial": serial,
        "fleet": {"namespace": namespace, "name": fleet},
        "model": {"namespace": namespace, "name": model},
        "menu": dict(menu),
        "selector": dict(selector or {}),
        "policy": dict(policy),
    }
    if canary is not None:
        plan["canary"] = dict(canary)
    return plan


def plan_bytes(plan: Mapping[str, Any]) -> bytes:
    """Canonical bytes: sorted keys and no whitespace, so equal plans sign equally."""
    return json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()


def plan_content(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The plan without the stamps of its signing (serial, expires): what the rollout decided."""
    return {k: v for k, v in plan.items() if k not in STAMPS}


def same_plan(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal but for serial and expiry: republishing it would only make every device fetch it again."""
    return plan_content(a) == plan_content(b)


def content_sha256(plan: Mapping[str, Any]) -> str:
    """The digest of what the plan decides, the same for every refresh of it (DeviceFleet status.planSha256)."""
    return sha256_bytes(plan_bytes(plan_content(plan)))
