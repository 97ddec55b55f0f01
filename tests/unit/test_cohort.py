"""tinymlops.cohort: which menu a device follows during a canary, decided by the device itself."""

from __future__ import annotations

from tinymlops.cohort import cohort_point, follow, in_canary
from tinymlops.plan import build_plan, menu_ref


def test_cohorts_only_grow_and_are_stable_per_rollout() -> None:
    devices = [f"dev-{i}" for i in range(2000)]
    cohorts = {w: {d for d in devices if in_canary(d, "r2-abc", w)} for w in (0, 10, 50, 100)}
    assert cohorts[0] == set() and cohorts[100] == set(devices)
    assert cohorts[10] <= cohorts[50] <= cohorts[100]
    assert 150 < len(cohorts[10]) < 250 and 900 < len(cohorts[50]) < 1100  # the weight is a share of devices
    assert cohort_point("dev-1", "r2-abc") == cohort_point("dev-1", "r2-abc")  # a restart changes nothing
    other = {d for d in devices if in_canary(d, "r3-def", 10)}
    assert other != cohorts[10]  # a new rollout draws a new cohort


def test_devices_follow_the_menu_of_their_cohort() -> None:
    stable = menu_ref(namespace="ns", model="m", menu_sha256="1" * 64, menu_version=1, revision=1)
    canary_ref = menu_ref(namespace="ns", model="m", menu_sha256="2" * 64, menu_version=2, revision=2)
    plan = build_plan(namespace="ns", fleet="f", model="m", menu=stable, policy={"objective": "size"},
                      canary={"rollout": "r2-x", "weight": 30, "menu": canary_ref, "policy": {"objective": "latency"}})
    followed = [follow(plan, f"d{i}") for i in range(300)]
    on_canary = [f for f in followed if f.canary]
    assert 60 < len(on_canary) < 120
    assert {f.revision for f in on_canary} == {2} and on_canary[0].policy == {"objective": "latency"}
    assert {f.revision for f in followed if not f.canary} == {1}
