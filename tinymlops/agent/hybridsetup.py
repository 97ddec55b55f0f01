"""Wire the hybrid choice onto a device's active variant: which head blobs it needs, and its `HybridExecutor`.

The fleet policy's `hybrid` section turns it on (`selection.hybrid.HybridPolicy`); without one, or without split
parts in the menu and a cloud variant to cascade to, the device serves locally as before.  Heads are verified
against the signed menu's digests before they are loaded; tails stay on the gateway and are named by digest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.hybrid import HybridExecutor, TailClient
from tinymlops.runners import Runner
from tinymlops.selection.energy import target_model
from tinymlops.selection.hybrid import HybridPolicy, costs
from tinymlops.store import check_digest


def wanted_heads(variant: Mapping[str, Any]) -> dict[int, str]:
    """The head blob digest of each exact split point the factory published for `variant`, by k."""
    return {int(p["k"]): str(p["head"]["sha256"]) for p in (variant.get("split") or {}).get("points", [])
            if p.get("exact") and "head" in p and "tail" in p}


def hybrid_policy(policy: Mapping[str, Any] | None) -> HybridPolicy | None:
    """The fleet policy's hybrid section (SpecError naming a wrong field); None when it has none."""
    return HybridPolicy.from_policy(policy) if (policy or {}).get("hybrid") else None


def hybrid_executor(agent: DeviceAgent, menu: Mapping[str, Any], heads: Mapping[int, bytes], client: TailClient, *,
                    consent_inputs: bool, link_model: Callable[[int, float], float] | None = None,
                    clock: Callable[[], float] = time.time) -> HybridExecutor | None:
    """The executor for the agent's active variant under its fleet policy; None when the policy has no hybrid
    section or nothing is active.  `heads`: the bytes of `wanted_heads` (IntegrityError when one differs)."""
    policy = hybrid_policy(agent.policy)
    active = agent.active
    if policy is None or active is None:
        return None
    variant = active.variant
    digests = wanted_heads(variant)
    runners = {}
    for k, blob in heads.items():
        check_digest(blob, digests[k], what=f"head of split point {k} of {active.variant_id}", named_by="the menu")
        runners[k] = Runner.load(blob)
    cloud = next((v for v in menu["variants"] if v["id"] == policy.cloud_variant), None)
    model = menu["model"]
    return HybridExecutor(
        runner=active.runner, heads=runners,
        tails={int(p["k"]): str(p["tail"]["sha256"]) for p in variant["split"]["points"] if int(p["k"]) in runners}
        if runners else {},
        costs=costs(variant, slowdown=target_model(agent.caps.device_class, agent.caps.arch).slowdown,
                    ram_mb=agent.caps.ram_mb, policy=policy, cloud=cloud),
        policy=policy, client=client, model=(str(model["namespace"]), str(model["name"])), clock=clock,
        cloud=str(cloud["sha256"]) if cloud else None, consent_inputs=consent_inputs, link_model=link_model)
