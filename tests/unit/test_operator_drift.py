"""The fleet's Drifted condition, its events and writes, and input-drift as a canary analysis metric (pure)."""

from __future__ import annotations

from typing import Any

from tinymlops.merge_patch import merge_patch
from tinymlops_operator.logic import analysis, devicefleet, rollout
from tinymlops_operator.logic.conditions import condition_status
from tinymlops_operator.logic.drift import drift_verdict
from tinymlops_operator.logic.strategy import METRICS, Analysis, MetricCheck, Strategy, parse_strategy

FIRST = rollout.decide(rollout.RolloutState(), strategy=Strategy(),
                       target=rollout.Target("m", "s" * 64, 3, {}), now=100.0)
ASSIGNMENT = devicefleet.Assignment(by_variant={"int8": 40}, devices=40)


def group(device_class: str, *, drifted: bool = False, scored: bool = True, psi: float = 0.01,
          rows: int = 20000) -> dict[str, Any]:
    top = [{"feature": "x[3]", "psi": psi, "p_value": 1e-9}, {"feature": "@confidence", "psi": psi / 2,
                                                              "p_value": 1e-4}] if drifted else []
    return {"revision": 1, "device_class": device_class, "rows": rows, "min_rows": 5000, "scored": scored,
            "drifted": drifted, "top": top}


def summary(*groups: dict[str, Any]) -> dict[str, Any]:
    return {"failed": 0, "by_phase": {"Running": 40}, "last_converged_at": 112.5,
            "by_revision": {"1": {"Running": 40}}, "running_by_revision": {"1": {"int8": 40}}, "drift": list(groups)}


def fleet(observed: dict[str, Any] | None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return devicefleet.fleet_status(status or {}, generation=1, assignment=ASSIGNMENT, menu_version=3,
                                    plan_sha256="p", plan_published_at=100.0, summary=observed, decision=FIRST,
                                    strategy=Strategy())


def drifted_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Drifted")


def test_the_condition_names_the_class_the_features_and_the_score() -> None:
    status = fleet(summary(group("jetson"), group("rpi4", drifted=True, psi=0.0412)))
    condition = drifted_condition(status)
    assert condition["status"] == "True" and condition["reason"] == "InputDrift"
    assert condition["message"].startswith("rpi4 on revision 1: x[3] PSI 0.0412 (p=1e-09), @confidence")
    assert "jetson" not in condition["message"] and status["drifted"] == ["rpi4/1"]


def test_no_drift_not_enough_rows_and_no_telemetry_are_told_apart() -> None:
    assert drift_verdict(summary(group("rpi4"))).status is False
    assert drift_verdict(summary(group("rpi4"))).reason == "NoDrift"
    waiting = drift_verdict(summary(group("rpi4", scored=False, rows=1200)))
    assert (waiting.status, waiting.reason) == (None, "NotEnoughRows") and "1200/5000 rows" in waiting.message
    assert drift_verdict(summary()).reason == "NoDriftTelemetry"
    assert drift_verdict(None).reason == "GatewayUnavailable"
    assert drift_verdict({"drift": "nonsense"}).reason == "NoDriftTelemetry"  # an older gateway, or junk


def test_drift_starting_and_ending_are_events_and_nothing_else_is() -> None:
    calm = merge_patch({}, fleet(summary(group("rpi4"))))
    drifting = fleet(summary(group("rpi4", drifted=True)), status=calm)
    events = devicefleet.fleet_events(FIRST, [],
                                      plan_message=None, phase_before="Healthy", desired=drifting,
                                      drifted_before=calm.get("drifted"))
    assert [(e.type, e.reason) for e in events if e.reason.startswith("Drift")] == [("Warning", "Drifted")]
    held = merge_patch(calm, drifting)
    still = fleet(summary(group("rpi4", drifted=True, psi=0.09)), status=held)
    assert devicefleet.drift_events(held.get("drifted"), still) == []
    cleared = fleet(summary(group("rpi4")), status=held)
    assert cleared["drifted"] is None  # merge-patch null removes the list
    assert [(e.type, e.reason) for e in devicefleet.drift_events(held["drifted"], cleared)] == [
        ("Normal", "DriftCleared")]


def test_moving_scores_cost_no_write_but_a_new_drifted_class_does() -> None:
    held = merge_patch({}, fleet(summary(group("rpi4", drifted=True, psi=0.05), group("jetson"))))
    rescored = fleet(summary(group("rpi4", drifted=True, psi=0.07), group("jetson", rows=30000)), status=held)
    assert not devicefleet.significant_change(held, rescored)  # the message moves; the write waits
    spread = fleet(summary(group("rpi4", drifted=True), group("jetson", drifted=True)), status=held)
    assert devicefleet.significant_change(held, spread)
    assert condition_status(spread["conditions"], "Drifted") == "True"
    cleared = fleet(summary(group("rpi4"), group("jetson")), status=held)
    assert devicefleet.significant_change(held, cleared)


def test_input_drift_is_a_max_metric_whose_query_reads_only_significant_drift_of_the_canary() -> None:
    assert METRICS["input-drift"] == "max"
    text = analysis.query_for("input-drift", namespace="ns", fleet="f", canary=2, stable=1, window_s=30)
    assert 'tinymlops_fleet_drift_score{namespace="ns",fleet="f",revision="2",statistic="psi"}' in text
    assert 'tinymlops_fleet_drifted{namespace="ns",fleet="f",revision="2"}' in text and text.startswith("max(")
    spec = Analysis(metrics=(MetricCheck("input-drift", "max", 0.1),))
    texts = analysis.queries(spec, namespace="ns", fleet="f", canary=2, stable=1)
    verdict = analysis.evaluate(spec, texts, {"input-drift": 0.25, "devices-reporting": 5}, at=1.0)
    assert verdict.verdict == "Failed" and "input-drift 0.25 > 0.1" in verdict.message
    waiting = analysis.evaluate(spec, texts, {"input-drift": None, "devices-reporting": 5}, at=1.0)
    assert waiting.verdict == "Inconclusive"  # too few rows merged: no score, never a pass
    assert analysis.evaluate(spec, texts, {"input-drift": 0.0, "devices-reporting": 5}, at=1.0).verdict == "Passed"


def test_the_strategy_takes_input_drift() -> None:
    spec = {"strategy": {"canary": {"steps": [{"setWeight": 100}],
                                    "analysis": {"metrics": [{"name": "input-drift", "max": 0.1}]}}}}
    strategy = parse_strategy(spec)
    assert strategy.analysis is not None
    assert strategy.analysis.metrics == (MetricCheck("input-drift", "max", 0.1),)
