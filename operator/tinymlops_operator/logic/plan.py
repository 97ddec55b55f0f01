"""The plan a fleet's devices follow, for one decided rollout state (pure).

Every device follows the stable revision's menu and policy; while the canary
has devices (weight above 0) the plan also names the canary's menu, policy,
weight and rollout id, from which each device works out whether it is in the
cohort.  `tinymlops.plan` turns this into the canonical bytes the operator
signs and publishes.

Every signed plan expires (`tinymlops.freshness`): `plan_ttl` is how long, and
`refresh_due` says when to re-sign a plan whose content did not change, so the
devices of a quiet fleet never see theirs expire while the operator is up.  A
refresh writes the artifact store only: no event, no status change (the status
names the plan by `content_sha256`), so a Healthy fleet still costs no API writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinymlops.freshness import PLAN_TTL_S
from tinymlops.plan import build_plan, menu_ref
from tinymlops.timestamps import seconds
from tinymlops_operator.logic.rollout import Revision, RolloutState


def plan_for(namespace: str, fleet: str, state: RolloutState, selector: Mapping[str, Any]) -> dict[str, Any]:
    """The plan for `state`, which has a stable revision (decide always leaves one)."""
    stable = state.stable
    assert stable is not None

    def ref(revision: Revision) -> dict[str, Any]:
        return menu_ref(namespace=namespace, model=revision.model, menu_sha256=revision.menu_sha256,
                        menu_version=revision.menu_version, revision=revision.number, licensee=revision.licensee)

    canary = None
    if state.canary is not None and state.weight > 0:
        canary = {"rollout": state.rollout_id, "weight": state.weight, "menu": ref(state.canary),
                  "policy": dict(state.canary.policy)}
    return build_plan(namespace=namespace, fleet=fleet, model=stable.model, menu=ref(stable),
                      policy=stable.policy, selector=selector, canary=canary)


def plan_message(state: RolloutState, plan_sha256: str) -> str:
    """What a newly published plan sends where, for its PlanPublished event."""
    assert state.stable is not None
    text = f"stable revision {state.stable.number} (menu v{state.stable.menu_version})"
    if state.canary is not None and state.weight > 0:
        text += f", canary revision {state.canary.number} (menu v{state.canary.menu_version}) at {state.weight}%"
    return f"{text} ({plan_sha256[:12]})"


def plan_ttl(spec: Mapping[str, Any], default_s: float = PLAN_TTL_S) -> float:
    """Seconds each signed plan of the fleet stays current: spec.planExpirySeconds, else the operator's default."""
    value = spec.get("planExpirySeconds")
    return float(value) if value else default_s


def refresh_due(published: Mapping[str, Any], now: float, ttl_s: float) -> bool:
    """Whether the published plan must be re-signed though the rollout did not change it: less than half of
    its lifetime is left (devices polling now still get at least `ttl_s / 2` of headroom), it has no valid
    expiry (written by an operator before expiry existed), or it outlives a `ttl_s` shortened since."""
    try:
        expires = seconds(published.get("expires"))
    except (TypeError, ValueError):
        return True
    if not expires:
        return True
    left = expires - now
    return left < ttl_s / 2 or left > ttl_s + 1.0  # + 1 s: `expires` is rounded to the millisecond


def published_at(status: Mapping[str, Any], plan_sha256: str, now: float) -> float:
    """When the plan `plan_sha256` went out: as `status` recorded it for that plan, else now (it is new)."""
    return (seconds(status.get("planPublishedAt")) if status.get("planSha256") == plan_sha256 else 0.0) or now
