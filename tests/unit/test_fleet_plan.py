"""The plan a fleet publishes for a decided rollout state, and how its publication is told and timed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.cohort import follow
from tinymlops.freshness import PLAN_TTL_S
from tinymlops.plan import content_sha256
from tinymlops.signing import verify
from tinymlops.store import DirectoryStore
from tinymlops.timestamps import rfc3339, seconds
from tinymlops_operator.handlers.devicefleet import _publish_plan
from tinymlops_operator.logic import rollout
from tinymlops_operator.logic.plan import plan_for, plan_message, plan_ttl, published_at, refresh_due
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


NOW = 2e9
DAY = 86400.0


def test_a_plan_lives_as_long_as_the_fleet_says_else_the_operator_default() -> None:
    assert plan_ttl({}) == PLAN_TTL_S == DAY
    assert plan_ttl({}, 7200.0) == 7200.0 and plan_ttl({"planExpirySeconds": 3600}, 7200.0) == 3600.0


@pytest.mark.parametrize(
    ("expires", "due"),
    [
        (NOW + DAY, False),  # just signed
        (NOW + DAY / 2 + 1, False),  # more than half its lifetime left
        (NOW + DAY / 2 - 1, True),  # less than half: devices polling now should get a full day again
        (NOW - 1, True),  # expired (the operator was down)
        (None, True),  # signed by an operator before plans expired
        ("not a time", True),
        (NOW + 7 * DAY, True),  # outlives a TTL shortened since
    ],
)
def test_a_plan_is_re_signed_once_half_its_lifetime_has_passed(expires: float | str | None, due: bool) -> None:
    published = {} if expires is None else {"expires": rfc3339(expires) if isinstance(expires, float) else expires}
    assert refresh_due(published, NOW, DAY) is due


def test_a_refresh_re_signs_the_same_plan_with_a_new_serial_and_expiry_and_is_not_news(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    runtime = SimpleNamespace(store=DirectoryStore(tmp_path), signing_key=key)
    plan = plan_for("ns", "f", decided(V1), SELECTOR)
    path = tmp_path / "plans/ns/f/plan.json"

    def published() -> dict:
        data = path.read_bytes()
        verify(key.public_key(), data, (tmp_path / "plans/ns/f/plan.sig").read_bytes(), what="plan.json")
        return json.loads(data)

    assert _publish_plan(runtime, "ns", "f", plan, ttl_s=DAY, now=NOW) == (content_sha256(plan), True)
    first = published()
    assert seconds(first["expires"]) == NOW + DAY
    # Within half a day nothing is written; past it the same plan is signed again, which is no event and
    # changes no status (the digest names the content), so a quiet fleet costs no API write.
    assert _publish_plan(runtime, "ns", "f", plan, ttl_s=DAY, now=NOW + DAY / 4) == (content_sha256(plan), False)
    assert published() == first
    assert _publish_plan(runtime, "ns", "f", plan, ttl_s=DAY, now=NOW + DAY * 0.6) == (content_sha256(plan), False)
    refreshed = published()
    assert refreshed["serial"] > first["serial"] and seconds(refreshed["expires"]) == NOW + DAY * 1.6
    assert content_sha256(refreshed) == content_sha256(first) == content_sha256(plan)
    # A changed rollout is news at once, whatever time is left.
    plan2 = plan_for("ns", "f", decided(V1, V2), SELECTOR)
    sha, new = _publish_plan(runtime, "ns", "f", plan2, ttl_s=DAY, now=NOW + DAY * 0.7)
    assert new and sha == content_sha256(plan2) != content_sha256(plan)
