"""The plan a fleet publishes for a decided rollout state, and how its publication is told and timed."""

from __future__ import annotations

import dataclasses

from tinymlops.cohort import follow
from tinymlops_operator.logic import rollout
from tinymlops_operator.logic.plan import plan_for, plan_message, published_at
from tinymlops_operator.logic.strategy import parse_strategy

STEPS = parse_strategy({"strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]}}})
V1 = rollout.Target("digits", "1" * 64, 1, {"objective": "accuracy"})
V2 = rollout.Target("digits", "2" * 64, 2, {"objective": "size"})
SELECTOR = {"matchLabels": {"tinymlops.io/fleet": "f"}}


def decided(*targets: rollout.Target) -> rollout.RolloutState:
    state = rollout.RolloutState()
    for now, target in enumerate(targets):
        state = rollout.decide(state, strategy=STEPS, target=target, now=float(now)).state
    return state


def test_a_stable_fleet_plans_one_menu_for_every_device() -> None:
    state = decided(V1)
    plan = plan_for("ns", "f", state, SELECTOR)
    assert plan["menu"]["sha256"] == "1" * 64 and plan["menu"]["revision"] == 1
    assert plan["policy"] == {"objective": "accuracy"} and plan["selector"] == SELECTOR
    assert "canary" not in plan
    assert plan_message(state, "a" * 64) == f"stable revision 1 (menu v1) ({'a' * 12})"


def test_a_canary_with_devices_is_in_the_plan_with_its_own_menu_and_policy() -> None:
    state = decided(V1, V2)  # 20%, then paused until promoted
    plan = plan_for("ns", "f", state, SELECTOR)
    assert plan["canary"]["weight"] == 20 and plan["canary"]["rollout"] == state.rollout_id
    assert plan["canary"]["menu"]["sha256"] == "2" * 64 and plan["canary"]["policy"] == {"objective": "size"}
    followed = {follow(plan, f"device-{i}").revision for i in range(200)}
    assert followed == {1, 2}
    assert plan_message(state, "b" * 64).endswith(f", canary revision 2 (menu v2) at 20% ({'b' * 12})")


def test_a_canary_at_weight_zero_is_left_out() -> None:
    state = decided(V1, V2)
    at_zero = dataclasses.replace(state, weight=0)
    assert "canary" not in plan_for("ns", "f", at_zero, SELECTOR)
    assert "canary" not in plan_message(at_zero, "c" * 64)


def test_a_plan_keeps_its_publication_time_and_a_new_plan_starts_now() -> None:
    status = {"planSha256": "a" * 64, "planPublishedAt": "2026-12-02T06:00:00.000Z"}
    assert published_at(status, "a" * 64, now=2e9) == 1_796_191_200.0
    assert published_at(status, "b" * 64, now=2e9) == 2e9
    assert published_at({}, "a" * 64, now=2e9) == 2e9
