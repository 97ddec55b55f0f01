"""The rollout state machine, its strategy and its analysis, as pure functions over status."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tinymlops.errors import SpecError
from tinymlops.merge_patch import merge_patch
from tinymlops.timestamps import seconds
from tinymlops_operator.logic import analysis
from tinymlops_operator.logic.rollout import (
    Commands,
    RolloutState,
    Target,
    analysis_due,
    consumed_annotations,
    decide,
    read_commands,
)
from tinymlops_operator.logic.strategy import parse_strategy
from tinymlops_operator.logic.upgrade import upgraded_status

V1 = Target("digits", "1" * 64, 1, {"objective": "accuracy"})
V2 = Target("digits", "2" * 64, 2, {"objective": "accuracy"})
V3 = Target("digits", "3" * 64, 3, {"objective": "accuracy"})
ERRORS = {"name": "error-rate", "max": 0.05}


def strategy(*steps: dict[str, Any], metrics: list[dict[str, Any]] | None = None, **canary: Any) -> Any:
    spec: dict[str, Any] = {"steps": list(steps), **canary}
    if metrics is not None:
        spec["analysis"] = {"interval": "5s", "metrics": metrics, "minDevicesReporting": 2}
    return parse_strategy({"strategy": {"canary": spec}})


FOUR_STEPS = strategy({"setWeight": 10}, {"pause": {"duration": "10s"}}, {"setWeight": 50},
                      {"pause": {"duration": 10}}, {"setWeight": 100}, metrics=[ERRORS])


def stable_on(target: Target, now: float = 0.0) -> RolloutState:
    """A fleet whose first revision went out (to every device at once)."""
    return decide(RolloutState(), strategy=FOUR_STEPS, target=target, now=now).state


def run(verdict: str, at: float, value: float | None = 0.0) -> analysis.AnalysisRun:
    spec = FOUR_STEPS.analysis
    texts = analysis.queries(spec, namespace="ns", fleet="f", canary=2, stable=1)
    values = {"error-rate": value if verdict != "Failed" else 0.5,
              "devices-reporting": 0.0 if verdict == "Inconclusive" else 10.0}
    return analysis.evaluate(spec, texts, values, at=at)


# --- strategy ------------------------------------------------------------------------------

@pytest.mark.parametrize(("steps", "field"), [
    ([{"setWeight": 50}, {"setWeight": 20}, {"setWeight": 100}], r"steps\[1\]\.setWeight: 20 is below the 50"),
    ([{"setWeight": 10}, {"pause": {}}], "must end with setWeight: 100"),
    ([{"setWeight": 101}], r"steps\[0\]\.setWeight: 101 is not a percentage"),
    ([{"setWeight": 10, "pause": {}}], r"steps\[0\]: needs exactly one"),
    ([{"pause": {"duration": "soon"}}, {"setWeight": 100}], r"steps\[0\]\.pause\.duration: 'soon'"),
    ([{"analysis": {}}, {"setWeight": 100}], r"steps\[0\]\.analysis: needs spec\.strategy\.canary\.analysis"),
])
def test_senseless_steps_are_named(steps: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        parse_strategy({"strategy": {"canary": {"steps": steps}}})


def test_unknown_metric_is_named() -> None:
    with pytest.raises(SpecError, match=r"analysis\.metrics\[0\]\.name: unknown metric 'accuracy'"):
        strategy({"setWeight": 100}, metrics=[{"name": "accuracy", "max": 1}])
    with pytest.raises(SpecError, match=r"metrics\[0\]\.min: metric devices-reporting needs a numeric min"):
        strategy({"setWeight": 100}, metrics=[{"name": "devices-reporting", "max": 1}])


def test_durations_read_like_argo() -> None:
    parsed = strategy({"pause": {"duration": "1m"}}, {"pause": {"duration": "500ms"}}, {"pause": {"duration": 3}},
                      {"pause": {}}, {"setWeight": 100})
    assert [s.duration_s for s in parsed.steps[:4]] == [60.0, 0.5, 3.0, None]
    assert parsed.pauses_s == 63.5


# --- the state machine --------------------------------------------------------------------------

def test_the_first_revision_goes_to_every_device_at_once() -> None:
    decision = decide(RolloutState(), strategy=FOUR_STEPS, target=V1, now=0.0)
    assert decision.state.stable is not None and decision.state.stable.number == 1
    assert decision.state.canary is None and [e.reason for e in decision.events] == ["RolloutCompleted"]


def test_a_good_canary_walks_the_steps_and_is_promoted() -> None:
    state = stable_on(V1)
    started = decide(state, strategy=FOUR_STEPS, target=V2, now=100.0)
    s = started.state
    # setWeight 10 is taken at once; the pause then waits for its duration and a passing analysis.
    assert s.canary is not None and s.canary.number == 2 and s.weight == 10 and s.step_index == 1
    assert [e.reason for e in started.events] == ["RolloutStarted", "StepCompleted"]
    assert analysis_due(s, FOUR_STEPS, 100.0)
    waiting = decide(s, strategy=FOUR_STEPS, target=V2, now=105.0, run=run("Passed", 105.0))
    assert waiting.state.step_index == 1 and waiting.reason == "Pausing"
    moved = decide(waiting.state, strategy=FOUR_STEPS, target=V2, now=111.0, run=run("Passed", 111.0))
    assert moved.state.weight == 50 and moved.state.step_index == 3
    done = decide(moved.state, strategy=FOUR_STEPS, target=V2, now=122.0, run=run("Passed", 122.0))
    assert done.promoted and done.state.canary is None and done.state.stable is not None
    assert done.state.stable.number == 2 and done.state.weight == 0
    assert [h["outcome"] for h in done.state.history] == ["Promoted", "Promoted"]
    assert [entry["step"] for entry in done.state.steps_log][-1] == "promoted"


def test_a_failed_analysis_rolls_back_and_the_revision_is_not_retried() -> None:
    s = decide(stable_on(V1), strategy=FOUR_STEPS, target=V2, now=100.0).state
    failed = decide(s, strategy=FOUR_STEPS, target=V2, now=105.0, run=run("Failed", 105.0))
    assert failed.rolled_back and failed.state.canary is None and failed.state.weight == 0
    assert "error-rate 0.5 > 0.05" in (failed.state.abort_reason or "")
    assert failed.events[-1].type == "Warning" and failed.events[-1].reason == "RolloutAborted"
    again = decide(failed.state, strategy=FOUR_STEPS, target=V2, now=200.0)
    assert again.state.canary is None and again.reason == "RolloutAborted"
    # A new model version is a new revision and rolls out again; so does an explicit retry.
    assert decide(failed.state, strategy=FOUR_STEPS, target=V3, now=200.0).state.canary is not None
    retried = decide(failed.state, strategy=FOUR_STEPS, target=V2, now=200.0, commands=Commands(retry=True))
    assert retried.state.canary is not None and retried.state.canary.number == 3


def test_inconclusive_analysis_pauses_and_never_promotes() -> None:
    s = decide(stable_on(V1), strategy=FOUR_STEPS, target=V2, now=100.0).state
    for t in (111.0, 140.0, 400.0):
        d = decide(s, strategy=FOUR_STEPS, target=V2, now=t, run=run("Inconclusive", t))
        assert d.hold == "Paused" and d.reason == "AnalysisInconclusive" and d.state.step_index == 1
        s = d.state
    resumed = decide(s, strategy=FOUR_STEPS, target=V2, now=401.0, run=run("Passed", 401.0))
    assert resumed.state.step_index == 3


def test_failure_limit_tolerates_isolated_failures() -> None:
    tolerant = parse_strategy({"strategy": {"canary": {
        "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}],
        "analysis": {"metrics": [ERRORS], "failureLimit": 1}}}})
    s = decide(stable_on(V1), strategy=tolerant, target=V2, now=0.0).state
    once = decide(s, strategy=tolerant, target=V2, now=10.0, run=run("Failed", 10.0))
    assert once.state.canary is not None and once.state.failures == 1
    twice = decide(once.state, strategy=tolerant, target=V2, now=20.0, run=run("Failed", 20.0))
    assert twice.rolled_back


def test_manual_controls() -> None:
    steps = strategy({"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}, {"setWeight": 100})
    s = decide(stable_on(V1), strategy=steps, target=V2, now=0.0).state
    held = decide(s, strategy=steps, target=V2, now=1000.0)
    assert held.hold == "Paused" and held.reason == "PausedUntilPromoted" and held.state.step_index == 1
    paused = decide(s, strategy=steps, target=V2, now=1000.0, commands=Commands(paused=True, promote="step"))
    assert paused.reason == "PausedBySpec" and paused.state.step_index == 1  # paused wins over promote
    stepped = decide(s, strategy=steps, target=V2, now=1000.0, commands=Commands(promote="step"))
    assert stepped.state.weight == 60 and stepped.state.step_index == 3
    full = decide(stepped.state, strategy=steps, target=V2, now=1001.0, commands=Commands(promote="full"))
    assert full.promoted and full.state.stable is not None and full.state.stable.number == 2
    # Roll back to revision 1: every device returns to it, and revision 2 is not rolled out by itself again.
    back = decide(full.state, strategy=steps, target=V2, now=1002.0, commands=Commands(rollback_to=1))
    assert back.rolled_back and back.state.stable is not None and back.state.stable.number == 1
    assert decide(back.state, strategy=steps, target=V2, now=1003.0).state.canary is None
    unknown = decide(full.state, strategy=steps, target=V2, now=1002.0, commands=Commands(rollback_to=9))
    assert unknown.events[-1].reason == "RollbackRejected" and "revision 9" in unknown.events[-1].message
    aborted = decide(s, strategy=steps, target=V2, now=5.0, commands=Commands(abort=True))
    assert aborted.rolled_back and aborted.events[-1].reason == "RolloutAbortedByUser"


def test_commands_come_from_spec_paused_and_annotations() -> None:
    commands, problems = read_commands({"paused": True}, {
        "tinymlops.io/promote": "true", "tinymlops.io/abort": "", "tinymlops.io/rollback-to": "3"})
    assert commands == Commands(paused=True, promote="step", abort=True, rollback_to=3) and problems == []
    assert read_commands({}, {"tinymlops.io/promote": "Full"})[0].promote == "full"
    bad, problems = read_commands({}, {"tinymlops.io/promote": "later", "tinymlops.io/rollback-to": "two"})
    assert not bad.any_annotation
    assert problems == ["annotation tinymlops.io/promote: 'later' is not step or full",
                        "annotation tinymlops.io/rollback-to: 'two' is not a revision number"]
    assert read_commands({}, {"tinymlops.io/something-else": "x"}) == (Commands(), [])


def test_a_command_annotation_acts_once_understood_or_not() -> None:
    annotations = {"tinymlops.io/promote": "full", "tinymlops.io/retry": "", "app": "digits"}
    commands, problems = read_commands({}, annotations)
    assert consumed_annotations(annotations, commands, problems) == ["tinymlops.io/promote", "tinymlops.io/retry"]
    bad = {"tinymlops.io/rollback-to": "two"}
    assert consumed_annotations(bad, *read_commands({}, bad)) == ["tinymlops.io/rollback-to"]
    assert consumed_annotations({"app": "digits"}, *read_commands({"paused": True}, {"app": "digits"})) == []


def test_a_revision_asked_for_again_is_the_same_revision() -> None:
    stable = stable_on(V1).stable
    assert stable is not None and stable.target == V1 and stable.target.key == stable.key


def test_state_survives_a_round_trip_through_status() -> None:
    """What a restarted operator reads back is the state it wrote: same step, same cohort id, same history."""
    d = decide(stable_on(V1), strategy=FOUR_STEPS, target=V2, now=100.0)
    status: dict[str, Any] = {**d.state.as_status()}
    restored = RolloutState.from_status(status)
    assert restored == d.state
    again = decide(restored, strategy=FOUR_STEPS, target=V2, now=101.0)
    assert again.events == () and again.state.step_index == d.state.step_index
    assert again.state.rollout_id == d.state.rollout_id


def test_the_state_lives_under_status_rollout_and_the_printer_columns_show_it() -> None:
    """A restart reads status.rollout alone; the fields at the top are views for `kubectl get`."""
    d = decide(decide(stable_on(V1), strategy=FOUR_STEPS, target=V2, now=100.0).state, strategy=FOUR_STEPS,
               target=V2, now=111.0, run=run("Passed", 111.0))
    status = d.state.as_status()
    assert set(status) == {"rollout", "stableRevision", "canaryRevision", "currentStepIndex", "canaryWeight"}
    assert (status["stableRevision"], status["canaryRevision"], status["currentStepIndex"], status["canaryWeight"]) \
        == (1, 2, 3, 50) == (status["rollout"]["stable"]["revision"], status["rollout"]["canary"]["revision"],
                             status["rollout"]["stepIndex"], status["rollout"]["weight"])
    assert status["rollout"]["analysis"]["verdict"] == "Passed" and len(status["rollout"]["history"]) == 2
    assert RolloutState.from_status({"rollout": status["rollout"]}) == d.state


# --- the earlier status layout -------------------------------------------------------------

def earlier_layout(status: dict[str, Any]) -> dict[str, Any]:
    """`status` as operators before the move under status.rollout wrote it: the analysis, history, step and
    weight at the top, status.rollout without them."""
    moved = {"analysis": "analysis", "history": "history", "stepIndex": "currentStepIndex", "weight": "canaryWeight"}
    rollout = {k: v for k, v in status["rollout"].items() if k not in moved}
    top = {old: status["rollout"][new] for new, old in moved.items()}
    return merge_patch({**status, "rollout": rollout}, top)  # a None step is no key, as the server holds it


def test_a_status_in_the_earlier_layout_moves_under_status_rollout_once() -> None:
    """A fleet mid-canary keeps its step, weight, last analysis and history across the upgrade."""
    d = decide(decide(stable_on(V1), strategy=FOUR_STEPS, target=V2, now=100.0).state, strategy=FOUR_STEPS,
               target=V2, now=111.0, run=run("Passed", 111.0))
    earlier = earlier_layout(d.state.as_status())
    assert RolloutState.from_status(earlier) != d.state  # read as it is, it would restart the rollout
    patch = upgraded_status(earlier)
    assert patch is not None and (patch["analysis"], patch["history"]) == (None, None)
    assert set(patch["rollout"]) == {"analysis", "history", "stepIndex", "weight"}
    upgraded = merge_patch(earlier, patch)
    assert RolloutState.from_status(upgraded) == d.state
    assert "analysis" not in upgraded and "history" not in upgraded  # no stale copy at the top
    assert (upgraded["currentStepIndex"], upgraded["canaryWeight"]) == (3, 50)  # the printer columns stay
    assert upgraded_status(upgraded) is None  # once
    again = decide(RolloutState.from_status(upgraded), strategy=FOUR_STEPS, target=V2, now=112.0)
    assert again.events == () and again.state.step_index == 3


def test_an_upgraded_fleet_still_rolls_back_to_a_revision_of_its_earlier_history() -> None:
    promoted = decide(stable_on(V1), strategy=FOUR_STEPS, target=V2, now=100.0, commands=Commands(promote="full"))
    earlier = earlier_layout(promoted.state.as_status())
    state = RolloutState.from_status(merge_patch(earlier, upgraded_status(earlier)))
    back = decide(state, strategy=FOUR_STEPS, target=V2, now=200.0, commands=Commands(rollback_to=1))
    assert [e.reason for e in back.events] == ["RolledBack"]
    assert back.state.stable is not None and back.state.stable.number == 1


@pytest.mark.parametrize("status", [
    {},
    stable_on(V1).as_status(),
    decide(stable_on(V1), strategy=FOUR_STEPS, target=V2, now=100.0).state.as_status(),
], ids=["new fleet", "stable", "mid-canary"])
def test_a_status_in_the_current_layout_needs_no_upgrade(status: dict[str, Any]) -> None:
    assert upgraded_status(merge_patch({}, status)) is None


def test_a_partly_moved_status_keeps_what_status_rollout_holds_and_loses_no_revision() -> None:
    current = merge_patch({}, stable_on(V1, now=0.0).as_status())  # revision 1, and no analysis yet
    aborted = decide(decide(stable_on(V1, now=5.0), strategy=FOUR_STEPS, target=V3, now=90.0).state,
                     strategy=FOUR_STEPS, target=V3, now=95.0, run=run("Failed", 95.0))
    earlier = earlier_layout(aborted.state.as_status())  # revisions 1 and 2, and a failed analysis
    partly = {**current, "analysis": earlier["analysis"], "history": earlier["history"]}
    patch = upgraded_status(partly)
    assert patch is not None and set(patch["rollout"]) == {"analysis", "history"}
    upgraded = merge_patch(partly, patch)
    assert "analysis" not in upgraded and "history" not in upgraded
    assert upgraded["rollout"]["analysis"]["verdict"] == "Failed"  # only the earlier copy had one
    history = upgraded["rollout"]["history"]
    # Revision 1 is in both: status.rollout's entry wins; revision 2 only the earlier copy knew.
    assert history == [current["rollout"]["history"][0], earlier["history"][1]]
    assert history[1]["outcome"] == "Aborted"
    assert upgraded_status(upgraded) is None


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIME_KEYS = {"at", "createdAt", "finishedAt", "startedAt", "stepStartedAt"}


def times_in(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in TIME_KEYS] + [t for v in node.values() for t in times_in(v)]
    if isinstance(node, list):
        return [t for v in node for t in times_in(v)]
    return []


def test_times_in_status_are_rfc3339_and_an_older_status_in_unix_seconds_still_reads() -> None:
    d = decide(stable_on(V1, now=1_796_191_232.7486), strategy=FOUR_STEPS, target=V2, now=1_796_191_300.25,
               run=None)
    d = decide(d.state, strategy=FOUR_STEPS, target=V2, now=1_796_191_305.5, run=run("Passed", 1_796_191_305.5))
    status = d.state.as_status()
    times = times_in(status)
    assert len(times) >= 8 and all(isinstance(t, str) and RFC3339.match(t) for t in times), times
    assert status["rollout"]["startedAt"] == "2026-12-02T06:01:40.250Z"
    # What an older operator wrote: the same status with Unix seconds.
    older = json.loads(json.dumps(status), object_hook=lambda entry: {
        k: seconds(v) if k in TIME_KEYS and isinstance(v, str) else v for k, v in entry.items()})
    assert all(isinstance(t, float) for t in times_in(older))
    restored, current = RolloutState.from_status(older), RolloutState.from_status(status)
    assert (restored.started_at, restored.step_started_at, restored.last_analysis_at, restored.canary) == (
        current.started_at, current.step_started_at, current.last_analysis_at, current.canary)
    assert restored.as_status() == status  # and the next write holds strings only
    # Written, read back and written again, a time does not drift (milliseconds, truncated once).
    assert RolloutState.from_status(status).as_status() == status


def test_a_newer_target_supersedes_the_canary() -> None:
    s = decide(stable_on(V1), strategy=FOUR_STEPS, target=V2, now=0.0).state
    newer = decide(s, strategy=FOUR_STEPS, target=V3, now=1.0)
    assert newer.state.canary is not None and newer.state.canary.number == 3
    assert [h["outcome"] for h in newer.state.history] == ["Promoted", "Superseded", "Created"]
    reverted = decide(s, strategy=FOUR_STEPS, target=V1, now=1.0)
    assert reverted.state.canary is None and reverted.events[-1].reason == "CanaryDropped"


def test_progress_deadline() -> None:
    strict = parse_strategy({"strategy": {"canary": {
        "steps": [{"setWeight": 10}, {"analysis": {}}, {"setWeight": 100}], "progressDeadlineSeconds": 60,
        "progressDeadlineAbort": True, "analysis": {"metrics": [ERRORS]}}}})
    s = decide(stable_on(V1), strategy=strict, target=V2, now=0.0).state
    assert decide(s, strategy=strict, target=V2, now=30.0).reason == "Analysing"
    late = decide(s, strategy=strict, target=V2, now=61.0)
    assert late.rolled_back and late.events[-1].reason == "ProgressDeadlineExceeded"


# --- analysis -------------------------------------------------------------------------------------

def test_queries_are_promql_on_revision_labels() -> None:
    spec = parse_strategy({"strategy": {"canary": {"steps": [{"setWeight": 100}], "analysis": {
        "window": "1m", "minSamples": 80, "metrics": [ERRORS, {"name": "latency-p95-ratio", "max": 1.5},
                                                      {"name": "health-check-failures", "max": 0}]}}}}).analysis
    texts = analysis.queries(spec, namespace="ns", fleet="f", canary=2, stable=1)
    assert set(texts) == {"error-rate", "latency-p95-ratio", "health-check-failures", "devices-reporting"}
    assert 'revision="2"' in texts["error-rate"] and "[60s]" in texts["error-rate"]
    assert texts["error-rate"].endswith(">= 80")  # no value (inconclusive) until the window holds 80 inferences
    # Both revisions' histograms per device class, in one query over one window.
    assert 'revision=~"2|1"' in texts["latency-p95-ratio"]
    assert "sum by (revision, device_class, le)" in texts["latency-p95-ratio"]
    assert 'phase="Failed"' in texts["health-check-failures"]
    assert "tinymlops_fleet_devices{" in texts["devices-reporting"]


LATENCY = {"name": "latency-p95-ratio", "max": 3}
BOUNDS = ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "+Inf")


def series(revision: int, device_class: str, counts: list[float]) -> list[analysis.Sample]:
    """Cumulative `le` series as Prometheus answers `sum by (revision, device_class, le)`."""
    running, found = 0.0, []
    for le, count in zip(BOUNDS, counts, strict=True):
        running += count
        found.append(({"revision": str(revision), "device_class": device_class, "le": le}, running))
    return found


def latency_run(samples: list[analysis.Sample], *, min_samples: int = 50,
                stable_has_data: bool = True) -> analysis.AnalysisRun:
    spec = parse_strategy({"strategy": {"canary": {"steps": [{"setWeight": 100}], "analysis": {
        "minSamples": min_samples, "metrics": [LATENCY]}}}}).analysis
    texts = analysis.queries(spec, namespace="ns", fleet="f", canary=2, stable=1)
    return analysis.evaluate(spec, texts, {"latency-p95-ratio": samples, "devices-reporting": 5.0}, at=0.0,
                             canary=2, stable=1, stable_has_data=stable_has_data)


def test_a_canary_of_slow_device_classes_passes_when_each_class_is_as_fast_as_before() -> None:
    # The canary cohort drew mostly Pi Zeros (slow), the stable side mostly PCs: pooled p95s differ 8x.
    samples = [*series(2, "pc", [10, 30, 0, 0, 0, 0, 0]), *series(2, "zero", [0, 0, 0, 20, 60, 0, 0]),
               *series(1, "pc", [100, 300, 0, 0, 0, 0, 0]), *series(1, "zero", [0, 0, 0, 5, 15, 0, 0])]
    run = latency_run(samples)
    assert run.verdict == "Passed", run.message
    (result, _) = run.metrics
    assert result.value == pytest.approx(1.0, rel=0.05)
    assert "120 canary and 420 stable samples over pc, zero" in result.detail


def test_a_significantly_slower_canary_fails_and_says_why() -> None:
    samples = [*series(2, "pc", [0, 0, 0, 10, 90, 0, 0]), *series(1, "pc", [20, 80, 0, 0, 0, 0, 0])]
    run = latency_run(samples)
    assert run.verdict == "Failed" and "latency-p95-ratio" in run.message and "> 3" in run.message
    assert "significantly slower" in run.metrics[0].detail
    assert run.as_status()["metrics"][0]["detail"] == run.metrics[0].detail


def test_too_few_samples_on_a_side_is_inconclusive_never_failed() -> None:
    slow = [*series(2, "pc", [0, 0, 0, 0, 30, 0, 0]), *series(1, "pc", [30, 0, 0, 0, 0, 0, 0])]
    run = latency_run(slow)
    assert run.verdict == "Inconclusive" and "fewer than minSamples 50" in run.message
    assert latency_run(slow, min_samples=20).verdict == "Failed"
    # A class only the canary has cannot be compared: left out, and named.
    alone = [*series(2, "bone", [0, 0, 0, 0, 90, 0, 0]), *series(1, "pc", [90, 0, 0, 0, 0, 0, 0])]
    run = latency_run(alone)
    assert run.verdict == "Inconclusive" and "left out (too few samples on a side): bone, pc" in run.message
    assert latency_run([]).verdict == "Inconclusive"


def test_above_max_but_not_significant_waits() -> None:
    # Two slow samples in twelve put the canary's p95 far above, but the stable side has such outliers too
    # (10 in 200): that is no evidence of a slower revision (p ≈ 0.05).
    samples = [*series(2, "pc", [10, 0, 0, 0, 2, 0, 0]), *series(1, "pc", [190, 0, 0, 0, 10, 0, 0])]
    run = latency_run(samples, min_samples=10)
    assert run.metrics[0].value is not None and run.metrics[0].value > 3
    assert run.verdict == "Inconclusive" and "not significant" in run.message


def test_without_a_baseline_the_latency_check_is_skipped() -> None:
    assert latency_run([], stable_has_data=False).verdict == "Passed"


def test_verdicts() -> None:
    spec = parse_strategy({"strategy": {"canary": {"steps": [{"setWeight": 100}], "analysis": {
        "minDevicesReporting": 3, "metrics": [ERRORS, {"name": "health-check-failures", "max": 0}]}}}}).analysis
    texts = analysis.queries(spec, namespace="ns", fleet="f", canary=2, stable=1)

    def verdict(**values: float | None) -> analysis.AnalysisRun:
        base: dict[str, float | None] = {"error-rate": 0.01, "health-check-failures": 0, "devices-reporting": 5}
        return analysis.evaluate(spec, texts, {**base, **values}, at=0.0)

    assert verdict().verdict == "Passed"
    failing = verdict(**{"health-check-failures": 2})
    assert failing.verdict == "Failed" and "health-check-failures 2 > 0" in failing.message
    assert verdict(**{"devices-reporting": 1}).verdict == "Inconclusive"
    waiting = verdict(**{"error-rate": None})
    assert waiting.verdict == "Inconclusive" and "fewer than minSamples" in waiting.message
    # A failure is a failure even with few devices: one broken device is enough to stop.
    assert verdict(**{"devices-reporting": 1, "error-rate": 0.9}).verdict == "Failed"
    down = analysis.unavailable(spec, texts, "http://127.0.0.1:1: connection refused", at=0.0)
    assert down.verdict == "Inconclusive" and "connection refused" in down.as_status()["message"]
    shown = verdict().as_status()
    assert {m["name"] for m in shown["metrics"]} >= {"error-rate", "devices-reporting"}
    assert all("query" in m for m in shown["metrics"])


def test_min_samples_is_read_and_checked() -> None:
    def parsed(value: Any) -> Any:
        return parse_strategy({"strategy": {"canary": {"steps": [{"setWeight": 100}], "analysis": {
            "minSamples": value, "metrics": [ERRORS]}}}}).analysis

    assert parsed(200).min_samples == 200
    assert FOUR_STEPS.analysis is not None and FOUR_STEPS.analysis.min_samples == 50  # the default
    with pytest.raises(SpecError, match=r"analysis\.minSamples: -1 is not an integer >= 0"):
        parsed(-1)
