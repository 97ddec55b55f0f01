"""The gateway's pure core: report validation, fleet aggregation and metric cardinality."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tinymlops.errors import BatchTooLargeError, InvalidReportError
from tinymlops.gateway.fleetstate import FleetState
from tinymlops.gateway.metrics import MAX_FLEET_REVISIONS, OVERFLOW, GatewayMetrics
from tinymlops.gateway.reports import parse_batch
from tinymlops.report import MAX_LATENCIES, MAX_REVISION, Report


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def raw_report(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "device": "dev-1", "namespace": "edge", "fleet": "cams", "device_class": "gateway", "arch": "x86_64",
        "phase": "Running", "menu_version": 2, "variant": "int8", "variant_sha256": "a" * 64,
        "sent_at": 1000.0,
    }
    raw.update(overrides)
    return raw


_sent = iter(range(1, 10**9))


def report(**overrides: Any) -> Report:
    overrides.setdefault("sent_at", float(next(_sent)))
    return Report.from_json(raw_report(**overrides))


# --- reports -----------------------------------------------------------------------------------------------------


def test_a_full_report_parses_with_defaults() -> None:
    parsed = Report.from_json(raw_report())
    assert parsed.device == "dev-1" and parsed.phase == "Running" and parsed.menu_version == 2
    defaults = (parsed.reason, parsed.inferences, parsed.errors, parsed.latencies_ms, parsed.load_ms)
    assert defaults == ("", 0, 0, (), None)
    assert (parsed.revision, parsed.target_revision) == (0, 0)  # an agent that predates rollouts


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"revision": 3, "target_revision": 4}, (3, 4)),  # moving to the canary
        ({"revision": 3}, (3, 3)),  # no target: following what it runs
        ({"revision": 3, "target_revision": None}, (3, 3)),
        ({"revision": None, "target_revision": 2}, (0, 2)),  # nothing installed by a rollout yet
        ({"revision": 0, "target_revision": MAX_REVISION}, (0, MAX_REVISION)),
    ],
)
def test_revisions_parse_with_their_defaults(fields: dict[str, Any], expected: tuple[int, int]) -> None:
    parsed = Report.from_json(raw_report(**fields))
    assert (parsed.revision, parsed.target_revision) == expected


def test_unknown_fields_are_ignored_for_newer_agents() -> None:
    assert Report.from_json(raw_report(battery=0.4)).device == "dev-1"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"phase": "Runing"},
            "reports[3].phase: 'Runing' is not one of Pending, Downloading, Verifying, Running, Failed",
        ),
        ({"device": ""}, "reports[3].device: must be 1..253 characters, got 0"),
        ({"device": "d" * 254}, "reports[3].device: must be 1..253 characters"),
        ({"device": 7}, "reports[3].device: 7 is not a string"),
        ({"fleet": None}, "reports[3].fleet: is required"),
        ({"fleet": "a/b"}, "reports[3].fleet: 'a/b' must not contain '/'"),
        ({"menu_version": -1}, "reports[3].menu_version: -1 is not an integer >= 0"),
        ({"menu_version": True}, "reports[3].menu_version: True is not an integer >= 0"),
        ({"menu_version": 1.5}, "reports[3].menu_version: 1.5 is not an integer >= 0"),
        ({"inferences": -3}, "reports[3].inferences: -3 is not an integer >= 0"),
        ({"latencies_ms": [1.0, -2.0]}, "reports[3].latencies_ms[1]: -2.0 is negative"),
        ({"latencies_ms": [math.nan]}, "reports[3].latencies_ms[0]: nan is not a finite number"),
        ({"latencies_ms": [0.1] * (MAX_LATENCIES + 1)}, "reports[3].latencies_ms: 257 values, at most 256"),
        ({"latencies_ms": "fast"}, "reports[3].latencies_ms: is not a list"),
        ({"load_ms": "slow"}, "reports[3].load_ms: 'slow' is not a finite number"),
        ({"sent_at": None}, "reports[3].sent_at: is required"),
        ({"sent_at": math.inf}, "reports[3].sent_at: inf is not a finite number"),
        ({"variant": 3}, "reports[3].variant: 3 is not a string"),
        ({"reason": ["x"]}, "reports[3].reason: ['x'] is not a string"),
        ({"revision": -1}, "reports[3].revision: -1 is not an integer in 0..1000000000"),
        ({"revision": True}, "reports[3].revision: True is not an integer in 0..1000000000"),
        ({"revision": 2.0}, "reports[3].revision: 2.0 is not an integer in 0..1000000000"),
        ({"revision": "2"}, "reports[3].revision: '2' is not an integer in 0..1000000000"),
        ({"revision": 10**100}, f"reports[3].revision: {10**100} is not an integer in 0..1000000000"),
        ({"target_revision": MAX_REVISION + 1}, "reports[3].target_revision: 1000000001 is not an integer in 0.."),
        ({"target_revision": False}, "reports[3].target_revision: False is not an integer"),
        ({"revision": 1, "target_revision": [2]}, "reports[3].target_revision: [2] is not an integer"),
    ],
)
def test_bad_fields_are_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidReportError) as caught:
        Report.from_json(raw_report(**overrides), where="reports[3]")
    assert str(caught.value).startswith(message)


def test_missing_required_field_is_named() -> None:
    raw = raw_report()
    del raw["device_class"]
    with pytest.raises(InvalidReportError, match=r"^report\.device_class: is required$"):
        Report.from_json(raw)


def test_a_long_reason_is_truncated_not_rejected() -> None:
    assert len(Report.from_json(raw_report(reason="x" * 5000)).reason) == 1024


def test_a_batch_keeps_good_reports_and_rejects_bad_ones_by_index() -> None:
    accepted, rejected = parse_batch({"reports": [raw_report(), raw_report(phase="Runing"), "nope", raw_report()]})
    assert len(accepted) == 2
    assert [(r.index, r.error.split(":")[0]) for r in rejected] == [(1, "reports[1].phase"), (2, "reports[2]")]


def test_a_bad_revision_rejects_only_its_report() -> None:
    accepted, rejected = parse_batch({"reports": [raw_report(revision=2), raw_report(target_revision=-1)]})
    assert [r.revision for r in accepted] == [2]
    assert [(r.index, r.error.split(":")[0]) for r in rejected] == [(1, "reports[1].target_revision")]


@pytest.mark.parametrize("body", [[], {"reports": {}}, {"report": []}, None])
def test_a_malformed_envelope_raises(body: Any) -> None:
    with pytest.raises(InvalidReportError):
        parse_batch(body)


def test_a_batch_over_the_limit_is_too_large() -> None:
    with pytest.raises(BatchTooLargeError, match="reports: 3 reports, at most 2 per request"):
        parse_batch({"reports": [raw_report()] * 3}, max_reports=2)


# --- fleet state -------------------------------------------------------------------------------------------------


def test_unknown_fleet_summarises_to_zeros() -> None:
    summary = FleetState().summary("edge", "nobody", 3).as_json()
    assert summary == {
        "devices_reporting": 0, "converged": 0, "failed": 0, "by_phase": {}, "by_variant": {},
        "last_converged_at": None, "menu_version": 3, "by_revision": {}, "running_by_revision": {},
        "stale": 0,
    }


def test_convergence_counts_only_running_devices_at_the_asked_version() -> None:
    clock = Clock()
    state = FleetState(clock=clock)
    state.apply(report(device="a", phase="Running", menu_version=2, variant="int8"))
    clock.now = 1005.0
    state.apply(report(device="b", phase="Running", menu_version=2, variant="fp32"))
    state.apply(report(device="c", phase="Running", menu_version=1, variant="fp32"))
    state.apply(report(device="d", phase="Downloading", menu_version=2, variant=None))
    state.apply(report(device="e", phase="Failed", menu_version=1, variant=None, reason="digest mismatch"))
    summary = state.summary("edge", "cams", 2)
    assert (summary.devices_reporting, summary.converged, summary.failed) == (5, 2, 1)
    assert summary.by_phase == {"Running": 3, "Downloading": 1, "Failed": 1}
    assert summary.by_variant == {"int8": 1, "fp32": 1}
    assert summary.last_converged_at == 1005.0  # the moment the last of the converged devices got there
    assert state.summary("edge", "cams", 1).converged == 1


def test_without_a_version_the_highest_reported_one_is_used() -> None:
    state = FleetState()
    state.apply(report(device="a", menu_version=1))
    state.apply(report(device="b", menu_version=3))
    summary = state.summary("edge", "cams")
    assert (summary.menu_version, summary.converged) == (3, 1)


def test_convergence_time_is_the_first_running_report_not_the_latest() -> None:
    clock = Clock(100.0)
    state = FleetState(clock=clock)
    state.apply(report(device="a", phase="Verifying"))
    clock.now = 110.0
    state.apply(report(device="a", phase="Running"))
    clock.now = 150.0
    state.apply(report(device="a", phase="Running", inferences=40))
    assert state.summary("edge", "cams", 2).last_converged_at == 110.0


def test_switching_variant_restarts_the_convergence_clock() -> None:
    clock = Clock(100.0)
    state = FleetState(clock=clock)
    state.apply(report(device="a", variant="fp32"))
    clock.now = 130.0  # e.g. the battery ran low and the device fell back to int8
    state.apply(report(device="a", variant="int8"))
    summary = state.summary("edge", "cams", 2)
    assert summary.by_variant == {"int8": 1}
    assert summary.last_converged_at == 130.0


def test_leaving_running_restarts_the_convergence_clock() -> None:
    clock = Clock(100.0)
    state = FleetState(clock=clock)
    state.apply(report(device="a"))
    clock.now = 120.0
    state.apply(report(device="a", phase="Failed"))
    assert state.summary("edge", "cams", 2).last_converged_at is None
    clock.now = 140.0
    state.apply(report(device="a"))
    assert state.summary("edge", "cams", 2).last_converged_at == 140.0


def test_silent_devices_count_as_offline_and_neither_converged_nor_failed() -> None:
    clock = Clock(100.0)
    state = FleetState(offline_after_s=30.0, clock=clock)
    state.apply(report(device="a", phase="Running"))
    state.apply(report(device="b", phase="Failed"))
    clock.now = 125.0
    state.apply(report(device="c", phase="Running"))
    clock.now = 130.0  # exactly at the limit: still online
    assert state.summary("edge", "cams", 2).by_phase == {"Running": 2, "Failed": 1}
    clock.now = 131.0
    summary = state.summary("edge", "cams", 2)
    assert summary.by_phase == {"Offline": 2, "Running": 1}
    assert (summary.devices_reporting, summary.converged, summary.failed) == (1, 1, 0)
    clock.now = 132.0
    state.apply(report(device="a", phase="Running"))  # back online: it was running all along
    assert state.summary("edge", "cams", 2).converged == 2


def test_a_device_moving_fleet_leaves_the_old_one() -> None:
    state = FleetState()
    state.apply(report(device="a", fleet="cams"))
    state.apply(report(device="a", fleet="doors"))
    assert state.summary("edge", "cams").devices_reporting == 0
    assert state.summary("edge", "doors").devices_reporting == 1
    assert state.fleets() == [("edge", "doors")] and state.device_count() == 1


def test_same_device_name_in_two_namespaces_is_two_devices() -> None:
    state = FleetState()
    state.apply(report(device="a", namespace="one"))
    state.apply(report(device="a", namespace="two"))
    assert state.device_count() == 2


def test_a_retried_report_is_not_fresh_and_a_repeated_load_time_is_observed_once() -> None:
    state = FleetState()
    first = report(device="a", load_ms=12.0)
    assert state.apply(first).new_load_ms == 12.0
    assert not state.apply(first).fresh  # the same sent_at: a retry after a lost response
    again = state.apply(report(device="a", load_ms=12.0))
    assert again.fresh and again.new_load_ms is None
    assert state.apply(report(device="a", load_ms=9.0, variant_sha256="b" * 64)).new_load_ms == 9.0


def test_a_failure_is_new_only_when_entering_failed_or_failing_another_revision() -> None:
    clock = Clock(100.0)
    state = FleetState(offline_after_s=30.0, clock=clock)
    failing = report(device="a", phase="Failed", revision=1, target_revision=2, reason="health check")
    first = state.apply(failing)
    assert first.fresh and first.new_failure
    assert not state.apply(failing).new_failure  # the same report retried: not fresh, not counted again
    assert not state.apply(report(device="a", phase="Failed", revision=1, target_revision=2)).new_failure
    clock.now = 500.0  # silent, then back still failed on the same revision: the same failure
    assert not state.apply(report(device="a", phase="Failed", revision=1, target_revision=2)).new_failure
    assert state.apply(report(device="a", phase="Failed", revision=1, target_revision=3)).new_failure
    state.apply(report(device="a", phase="Downloading", revision=1, target_revision=3))
    assert state.apply(report(device="a", phase="Failed", revision=1, target_revision=3)).new_failure  # new attempt
    assert not state.apply(report(device="b", phase="Running", revision=3)).new_failure


def test_summary_groups_phases_by_target_revision_and_running_models_by_running_revision() -> None:
    clock = Clock(100.0)
    state = FleetState(offline_after_s=30.0, clock=clock)
    state.apply(report(device="gone", phase="Running", revision=1, variant="fp32"))
    clock.now = 140.0
    state.apply(report(device="s1", phase="Running", revision=1, variant="fp32"))
    state.apply(report(device="s2", phase="Running", revision=1, variant="int8", menu_version=1))
    state.apply(report(device="c1", phase="Running", revision=2, variant="int8"))
    state.apply(report(device="c2", phase="Downloading", revision=1, target_revision=2))
    state.apply(report(device="c3", phase="Failed", revision=1, target_revision=2, variant="fp32"))
    state.apply(report(device="old", phase="Running", variant=None))  # an agent without rollout fields
    summary = state.summary("edge", "cams", 2)
    assert summary.by_revision == {
        "0": {"Running": 1},
        "1": {"Running": 2, "Offline": 1},
        "2": {"Downloading": 1, "Running": 1, "Failed": 1},
    }
    # The failed device still runs revision 1, yet it is not Running: it is in neither map.
    assert summary.running_by_revision == {"0": {"none": 1}, "1": {"fp32": 1, "int8": 1}, "2": {"int8": 1}}
    # The existing fields keep their meaning.
    assert summary.by_phase == {"Offline": 1, "Running": 4, "Downloading": 1, "Failed": 1}
    assert summary.by_variant == {"fp32": 1, "int8": 1, "none": 1}
    assert (summary.devices_reporting, summary.converged, summary.failed) == (6, 3, 1)
    body = summary.as_json()
    assert list(body["by_revision"]) == ["0", "1", "2"]
    assert list(body["by_revision"]["2"]) == ["Downloading", "Running", "Failed"]  # the phases' own order
    assert body["running_by_revision"]["1"] == {"fp32": 1, "int8": 1}


def test_summary_orders_revisions_as_numbers() -> None:
    state = FleetState()
    for revision in (10, 9, 100):
        state.apply(report(device=f"d{revision}", revision=revision))
    assert list(state.summary("edge", "cams").as_json()["by_revision"]) == ["9", "10", "100"]


# --- metrics -----------------------------------------------------------------------------------------------------


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.exposition(None)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_metrics_count_reports_and_fleet_gauges() -> None:
    clock = Clock(100.0)
    state = FleetState(clock=clock)
    metrics = GatewayMetrics(state)
    for rep in (
        report(device="a", inferences=10, errors=1, latencies_ms=[0.2, 3.0], load_ms=40.0),
        report(device="b", inferences=5, latencies_ms=[0.4]),
        report(device="c", phase="Failed", variant=None),
    ):
        metrics.observe_report(rep, state.apply(rep))
    metrics.count_reports(accepted=3, rejected=1)
    got = samples(metrics)
    labels = (
        ("device_class", "gateway"), ("fleet", "cams"), ("namespace", "edge"), ("revision", "0"), ("variant", "int8"),
    )
    assert got[("tinymlops_device_inferences_total", labels)] == 15
    assert got[("tinymlops_device_inference_errors_total", labels)] == 1
    assert got[("tinymlops_device_inference_latency_seconds_count", labels)] == 3
    bucket = tuple(sorted((*labels, ("le", "0.00025"))))
    assert got[("tinymlops_device_inference_latency_seconds_bucket", bucket)] == 1  # 0.2 ms
    assert got[("tinymlops_device_model_load_seconds_count", labels[1:])] == 1
    fleet = (("fleet", "cams"), ("namespace", "edge"))
    revision = (("revision", "0"),)
    assert got[("tinymlops_fleet_devices", (*fleet, ("phase", "Running"), *revision))] == 2
    assert got[("tinymlops_fleet_devices", (*fleet, ("phase", "Offline"), *revision))] == 0
    assert got[("tinymlops_fleet_converged_devices", (*fleet, ("variant", "int8")))] == 2
    assert got[("tinymlops_gateway_reports_total", (("result", "rejected"),))] == 1
    clock.now = 1000.0
    assert samples(metrics)[("tinymlops_fleet_devices", (*fleet, ("phase", "Offline"), *revision))] == 3


def test_metric_names_follow_prometheus_conventions() -> None:
    """Base units, ratios not percentages, no label name in a metric name, no _created series."""
    state = FleetState()
    metrics = GatewayMetrics(state)
    for rep in (report(device="a", inferences=3, errors=1, latencies_ms=[1.0], warmup_latencies_ms=[4.0],
                       load_ms=5.0, energy_mj=2.0),
                report(device="b", phase="Failed", target_revision=1)):
        metrics.observe_report(rep, state.apply(rep))
    metrics.count_store_request("blob", 200)
    names = {name for name, _ in samples(metrics)}
    assert not [n for n in names if n.endswith("_created")]
    # Units and groupings are not name parts: "by", a label's name or a scaled unit would be.
    wrong = {"by", "variant", "revision", "phase", "percent", "millijoules", "ms", "kb", "mb"}
    assert [n for n in sorted(names) if wrong & set(n.split("_"))] == []
    assert {"tinymlops_device_energy_joules_total", "tinymlops_fleet_devices",
            "tinymlops_fleet_converged_devices"} <= names


def test_no_label_ever_holds_a_device_id() -> None:
    state = FleetState()
    metrics = GatewayMetrics(state)
    devices = [f"device-{i:04d}" for i in range(50)]
    for i, device in enumerate(devices):
        rep = report(device=device, phase=("Running", "Failed", "Pending")[i % 3], inferences=1,
                     latencies_ms=[1.0], load_ms=5.0)
        metrics.observe_report(rep, state.apply(rep))
    values = {value for _, labels in samples(metrics) for _, value in labels}
    assert not values & set(devices)


def test_label_combinations_past_the_cap_fold_into_other() -> None:
    state = FleetState()
    metrics = GatewayMetrics(state, max_series=2)
    for variant in ("a", "b", "c", "d"):
        rep = report(variant=variant, device=variant, inferences=1)
        metrics.observe_report(rep, state.apply(rep))
    inference_series = {labels for name, labels in samples(metrics) if name == "tinymlops_device_inferences_total"}
    variants = sorted(dict(labels)["variant"] for labels in inference_series)
    assert variants == [OVERFLOW, "a", "b"]


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_device_series_are_labelled_with_the_running_revision() -> None:
    state = FleetState()
    metrics = GatewayMetrics(state)
    for rep in (
        report(device="stable", revision=1, inferences=10, latencies_ms=[1.0], load_ms=30.0, energy_mj=2.0),
        report(device="canary", revision=2, inferences=3, errors=2, latencies_ms=[2.0, 3.0], load_ms=50.0),
        # Still running revision 1 while it fetches revision 2: its inferences are revision 1's.
        report(device="moving", phase="Downloading", revision=1, target_revision=2, inferences=5),
    ):
        metrics.observe_report(rep, state.apply(rep))
    device = {"namespace": "edge", "fleet": "cams", "variant": "int8", "device_class": "gateway"}
    assert sample(metrics, "tinymlops_device_inferences_total", **device, revision="1") == 15
    assert sample(metrics, "tinymlops_device_inferences_total", **device, revision="2") == 3
    assert sample(metrics, "tinymlops_device_inference_errors_total", **device, revision="2") == 2
    assert sample(metrics, "tinymlops_device_inference_errors_total", **device, revision="1") == 0
    assert sample(metrics, "tinymlops_device_energy_joules_total", **device, revision="1") == 0.002  # 2 mJ
    assert sample(metrics, "tinymlops_device_inference_latency_seconds_count", **device, revision="2") == 2
    load = {"namespace": "edge", "fleet": "cams", "variant": "int8"}
    assert sample(metrics, "tinymlops_device_model_load_seconds_count", **load, revision="1") == 1
    assert sample(metrics, "tinymlops_device_model_load_seconds_sum", **load, revision="2") == 0.05


def test_warm_up_latencies_are_kept_out_of_the_latency_the_analysis_reads() -> None:
    state = FleetState()
    metrics = GatewayMetrics(state)
    rep = report(device="canary", revision=2, inferences=8, latencies_ms=[1.0, 1.0, 1.0],
                 warmup_latencies_ms=[9.0, 5.0, 2.0, 1.5, 1.2])
    metrics.observe_report(rep, state.apply(rep))
    device = {"namespace": "edge", "fleet": "cams", "variant": "int8", "device_class": "gateway", "revision": "2"}
    assert sample(metrics, "tinymlops_device_inference_latency_seconds_count", **device) == 3
    assert sample(metrics, "tinymlops_device_inference_latency_seconds_sum", **device) == pytest.approx(0.003)
    assert sample(metrics, "tinymlops_device_warmup_inference_latency_seconds_count", **device) == 5
    assert sample(metrics, "tinymlops_device_inferences_total", **device) == 8
    with pytest.raises(InvalidReportError, match=r"reports\[0\]\.warmup_latencies_ms\[1\]: -1 is negative"):
        Report.from_json(raw_report(warmup_latencies_ms=[1.0, -1]), where="reports[0]")


def test_revision_gauge_counts_devices_by_target_revision_with_zeros_and_offline() -> None:
    clock = Clock(100.0)
    state = FleetState(offline_after_s=30.0, clock=clock)
    metrics = GatewayMetrics(state)
    for rep in (
        report(device="s1", revision=1),
        report(device="s2", revision=1),
        report(device="c1", revision=2),
        report(device="c2", phase="Failed", revision=1, target_revision=2),
        report(device="c3", phase="Verifying", revision=1, target_revision=2),
    ):
        metrics.observe_report(rep, state.apply(rep))
    gauge = {
        (dict(labels)["revision"], dict(labels)["phase"]): value
        for (name, labels), value in samples(metrics).items() if name == "tinymlops_fleet_devices"
    }
    phases = ("Pending", "Downloading", "Verifying", "Running", "Failed", "Offline")
    assert set(gauge) == {(revision, phase) for revision in ("1", "2") for phase in phases}  # zeros exported
    assert {key: value for key, value in gauge.items() if value} == {
        ("1", "Running"): 2, ("2", "Running"): 1, ("2", "Failed"): 1, ("2", "Verifying"): 1,
    }
    clock.now = 120.0
    rep = report(device="c2", phase="Failed", revision=1, target_revision=2)
    metrics.observe_report(rep, state.apply(rep))
    clock.now = 140.0  # everyone but c2 silent too long
    fleet = {"namespace": "edge", "fleet": "cams"}
    assert sample(metrics, "tinymlops_fleet_devices", **fleet, revision="1", phase="Offline") == 2
    assert sample(metrics, "tinymlops_fleet_devices", **fleet, revision="1", phase="Running") == 0
    assert sample(metrics, "tinymlops_fleet_devices", **fleet, revision="2", phase="Offline") == 2
    assert sample(metrics, "tinymlops_fleet_devices", **fleet, revision="2", phase="Failed") == 1


def test_update_failures_count_transitions_into_failed_once_per_target_revision() -> None:
    state = FleetState()
    metrics = GatewayMetrics(state)

    def send(rep: Report) -> None:
        metrics.observe_report(rep, state.apply(rep))

    fleet = {"namespace": "edge", "fleet": "cams"}
    send(report(device="a", phase="Downloading", revision=1, target_revision=2))
    # The series exists at zero before the first failure, so increase() sees that failure.
    assert sample(metrics, "tinymlops_device_update_failures_total", **fleet, revision="2") == 0
    failed = report(device="a", phase="Failed", revision=1, target_revision=2, reason="golden samples differ")
    send(failed)
    send(failed)  # a retry after a lost response
    send(report(device="a", phase="Failed", revision=1, target_revision=2))  # still failed, reported again
    assert sample(metrics, "tinymlops_device_update_failures_total", **fleet, revision="2") == 1
    send(report(device="b", phase="Failed", revision=1, target_revision=2))
    send(report(device="a", phase="Verifying", revision=1, target_revision=2))
    send(report(device="a", phase="Failed", revision=1, target_revision=2))  # the next attempt failed too
    send(report(device="a", phase="Failed", revision=1, target_revision=3))
    assert sample(metrics, "tinymlops_device_update_failures_total", **fleet, revision="2") == 3
    assert sample(metrics, "tinymlops_device_update_failures_total", **fleet, revision="3") == 1
    assert sample(metrics, "tinymlops_device_update_failures_total", **fleet, revision="1") is None


def test_the_cap_holds_with_many_revisions() -> None:
    state = FleetState()
    metrics = GatewayMetrics(state, max_series=5)
    for revision in range(200):  # a device lying about its revision on every report
        rep = report(device="liar", phase=("Running", "Failed")[revision % 2], revision=revision,
                     target_revision=revision + 1, inferences=1, latencies_ms=[1.0], load_ms=float(revision))
        metrics.observe_report(rep, state.apply(rep))
    got = samples(metrics)

    def values(name: str, label: str) -> set[str]:
        return {dict(labels)[label] for sample_name, labels in got if sample_name == name}

    assert values("tinymlops_device_inferences_total", "revision") == {"0", "1", "2", "3", "4", OVERFLOW}
    assert values("tinymlops_device_model_load_seconds_count", "revision") == {"0", "1", "2", "3", "4", OVERFLOW}
    assert values("tinymlops_device_update_failures_total", "revision") == {"1", "2", "3", "4", "5", OVERFLOW}
    overflow = {"namespace": OVERFLOW, "fleet": OVERFLOW, "variant": OVERFLOW, "device_class": OVERFLOW}
    assert sample(metrics, "tinymlops_device_inferences_total", **overflow, revision=OVERFLOW) == 195
    failures = sample(metrics, "tinymlops_device_update_failures_total",
                      namespace=OVERFLOW, fleet=OVERFLOW, revision=OVERFLOW)
    assert failures == 98  # 100 failures, 2 of them on revisions 2 and 4 inside the cap


def test_the_revision_gauge_keeps_the_newest_revisions_and_folds_the_rest() -> None:
    state = FleetState()
    metrics = GatewayMetrics(state)
    total = MAX_FLEET_REVISIONS + 5
    for revision in range(total):
        rep = report(device=f"d{revision}", revision=revision)
        metrics.observe_report(rep, state.apply(rep))
    revisions = {
        dict(labels)["revision"]: value for (name, labels), value in samples(metrics).items()
        if name == "tinymlops_fleet_devices" and dict(labels)["phase"] == "Running"
    }
    kept = {str(revision): 1.0 for revision in range(total - MAX_FLEET_REVISIONS, total)}
    assert revisions == {**kept, OVERFLOW: 5.0}
    assert len(state.summary("edge", "cams").by_revision) == total  # the JSON summary stays exact


def test_stale_devices_are_counted_per_fleet_whatever_their_phase_and_offline_ones_are_not() -> None:
    clock = Clock(100.0)
    state = FleetState(clock=clock, offline_after_s=30.0)
    metrics = GatewayMetrics(state)
    for rep in (report(device="fresh"), report(device="frozen", stale_seconds=3600.0),
                report(device="frozen-failed", phase="Failed", stale_seconds=12.5)):
        metrics.observe_report(rep, state.apply(rep))
    summary = state.summary("edge", "cams")
    assert summary.stale == 2 and summary.as_json()["stale"] == 2
    assert summary.by_phase == {"Running": 2, "Failed": 1}  # a stale Running device still counts as Running
    fleet = (("fleet", "cams"), ("namespace", "edge"))
    assert samples(metrics)[("tinymlops_fleet_stale_devices", fleet)] == 2
    clock.now = 1000.0  # all silent: Offline, and an offline device's staleness is no longer known
    assert samples(metrics)[("tinymlops_fleet_stale_devices", fleet)] == 0


def test_extraction_alarms_are_counted_per_fleet_and_device_class_without_device_labels() -> None:
    clock = Clock(100.0)
    state = FleetState(clock=clock, offline_after_s=30.0)
    metrics = GatewayMetrics(state)
    alarm = {"client": "thief", "since": 50.0, "w": 0.6}
    for rep in (report(device="a", extraction={"clients_watched": 2, "alarms": [alarm]}),
                report(device="b", extraction={"clients_watched": 3, "alarms": [alarm, {**alarm, "client": "x"}]}),
                report(device="c", device_class="mcu"), report(device="d", device_class="mcu")):
        metrics.observe_report(rep, state.apply(rep))
    got = {tuple(sorted(labels)): value for (name, labels), value in samples(metrics).items()
           if name == "tinymlops_fleet_extraction_alarms"}
    fleet = (("fleet", "cams"), ("namespace", "edge"))
    assert got == {tuple(sorted((*fleet, ("device_class", "gateway")))): 3.0,
                   tuple(sorted((*fleet, ("device_class", "mcu")))): 0.0}
    clock.now = 1000.0  # silent devices: their alarms are no longer known
    assert {v for (name, _), v in samples(metrics).items() if name == "tinymlops_fleet_extraction_alarms"} == {0.0}


def test_the_alarm_gauge_folds_device_classes_past_its_cap() -> None:
    from tinymlops.gateway.fleetstate import MAX_ALARM_CLASSES, OTHER_CLASSES

    state = FleetState()
    for i in range(MAX_ALARM_CLASSES + 3):
        state.apply(report(device=f"d{i}", device_class=f"class-{i:02d}"))
    alarms = state.extraction_alarms("edge", "cams")
    assert len(alarms) == MAX_ALARM_CLASSES + 1 and alarms[OTHER_CLASSES] == 0


def test_personalised_devices_are_counted_per_fleet_and_device_class_without_device_labels() -> None:
    clock = Clock(100.0)
    state = FleetState(clock=clock, offline_after_s=30.0)
    metrics = GatewayMetrics(state)
    for rep in (report(device="a", personalised=True), report(device="b", personalised=False),
                report(device="c", personalised=True, device_class="mcu"), report(device="d", device_class="mcu"),
                report(device="e")):
        metrics.observe_report(rep, state.apply(rep))
    got = {tuple(sorted(labels)): value for (name, labels), value in samples(metrics).items()
           if name == "tinymlops_fleet_personalised_devices"}
    fleet = (("fleet", "cams"), ("namespace", "edge"))
    assert got == {tuple(sorted((*fleet, ("device_class", "gateway")))): 1.0,
                   tuple(sorted((*fleet, ("device_class", "mcu")))): 1.0}
    clock.now = 1000.0  # silent devices: whether their own layer serves is no longer known
    assert {v for (name, _), v in samples(metrics).items() if name == "tinymlops_fleet_personalised_devices"} == {0.0}
