"""The device side of drift telemetry: the policy, windows, OpenDP noise and the budget ledger,
and the report's `drift` field (tinymlops/drift/{policy,window,privacy}.py, tinymlops/report.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import numpy as np
import pytest

from tinymlops.drift.policy import DriftPolicy
from tinymlops.drift.privacy import (
    BudgetLedger,
    clamp_bias,
    estimated_rows,
    noise_scale,
    noisy,
    release,
    sensitivity,
)
from tinymlops.drift.reference import Counts, build_reference
from tinymlops.drift.window import MAX_PENDING, DriftRecorder, Source
from tinymlops.errors import InvalidReportError, SpecError
from tinymlops.report import DriftHistograms, Report

DAY = 86400.0
NOON = 1_700_000_000.0 - 1_700_000_000.0 % DAY + DAY / 2


def reference_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 64), dtype=np.float32)
    return x, rng.dirichlet(np.ones(10), n).astype(np.float32)


MONITORING = build_reference(*reference_data()).to_json()
SOURCE = Source("a" * 64, 3, "c" * 64)


def test_the_policy_is_read_once_with_named_errors() -> None:
    assert DriftPolicy.from_policy(None) == DriftPolicy()
    assert not DriftPolicy().enabled
    policy = DriftPolicy.from_policy({"telemetry": {"drift": {"mode": "histograms+dp", "epsilon": 0.5,
                                                              "windowInferences": 100, "dailyEpsilon": 2}}})
    assert policy == DriftPolicy("histograms+dp", 0.5, 100, 2.0) and policy.private
    for bad, field in [({"mode": "raw"}, "mode"), ({"epsilon": 0}, "epsilon"), ({"windowInferences": 0},
                       "windowInferences"), ({"dailyEpsilon": float("nan")}, "dailyEpsilon"),
                       ({"mode": "histograms+dp", "epsilon": 5, "dailyEpsilon": 1}, "epsilon")]:
        with pytest.raises(SpecError, match=rf"policy\.telemetry\.drift\.{field}"):
            DriftPolicy.from_policy({"telemetry": {"drift": bad}})


def test_a_window_closes_after_window_inferences_with_exact_counts() -> None:
    x, scores = reference_data(25, seed=1)
    recorder = DriftRecorder()
    policy = DriftPolicy("histograms", window_inferences=10)
    for sample, output in zip(x, scores, strict=True):
        recorder.observe(policy, SOURCE, MONITORING, sample, output, now=NOON)
    first, withheld = recorder.take()
    assert withheld is None and first is not None
    assert (first.window, first.rows, first.revision, first.epsilon) == (0, 10, 3, None)
    expected = build_reference(*reference_data()).count(x[:10], scores[:10])
    assert first.features == tuple(tuple(h.tolist()) for h in expected.features)
    second, _ = recorder.take()
    assert second is not None and second.window == 1
    assert recorder.take() == (None, None) and recorder.rows == 5  # the open window keeps counting


def test_off_counts_nothing_and_a_switch_discards_the_open_window() -> None:
    x, scores = reference_data(8, seed=2)
    recorder = DriftRecorder()
    recorder.observe(DriftPolicy(), SOURCE, MONITORING, x[0], scores[0], now=NOON)
    assert recorder.rows == 0 and recorder.open is None
    policy = DriftPolicy("histograms", window_inferences=5)
    for sample, output in zip(x[:4], scores[:4], strict=True):
        recorder.observe(policy, SOURCE, MONITORING, sample, output, now=NOON)
    recorder.observe(policy, Source(SOURCE.menu_sha256, 4, SOURCE.variant_sha256), MONITORING, x[4], scores[4],
                     now=NOON)
    assert recorder.rows == 1
    # Another variant of the same revision: its outputs are not the old one's, so the window starts again.
    recorder.observe(policy, Source(SOURCE.menu_sha256, 4, "d" * 64), MONITORING, x[5], scores[5], now=NOON)
    assert recorder.rows == 1 and recorder.source is not None and recorder.source.variant_sha256 == "d" * 64
    for sample, output in zip(x[6:8], scores[6:8], strict=True):
        recorder.observe(policy, Source(SOURCE.menu_sha256, 4, "d" * 64), MONITORING, sample, output, now=NOON)
    recorder.observe(policy, Source(SOURCE.menu_sha256, 4, "d" * 64), MONITORING, x[0], scores[0], now=NOON)
    recorder.observe(policy, Source(SOURCE.menu_sha256, 4, "d" * 64), MONITORING, x[1], scores[1], now=NOON)
    window, _ = recorder.take()
    assert window is not None and window.variant_sha256 == "d" * 64 and window.rows == 5


def test_closed_windows_waiting_for_a_report_are_bounded() -> None:
    x, scores = reference_data(MAX_PENDING + 2, seed=3)
    recorder = DriftRecorder()
    for sample, output in zip(x, scores, strict=True):
        recorder.observe(DriftPolicy("histograms", window_inferences=1), SOURCE, MONITORING, sample, output,
                         now=NOON)
    assert len(recorder.pending) == MAX_PENDING and recorder.dropped == 2
    assert recorder.take()[0].window == 2  # type: ignore[union-attr]


def test_window_seconds_is_read_with_the_policy_and_named_when_bad() -> None:
    assert DriftPolicy().window_seconds is None  # windows close on count only unless the fleet says otherwise
    read = DriftPolicy.from_policy({"telemetry": {"drift": {"mode": "histograms", "windowSeconds": 600}}})
    assert read == DriftPolicy("histograms", window_seconds=600)
    for bad in (0, -5, 1.5, True, "600"):
        with pytest.raises(SpecError, match=r"policy\.telemetry\.drift\.windowSeconds: .* integer >= 1"):
            DriftPolicy.from_policy({"telemetry": {"drift": {"windowSeconds": bad}}})


def test_a_window_closes_on_time_before_the_late_inference_which_opens_the_next() -> None:
    x, scores = reference_data(5, seed=6)
    recorder = DriftRecorder()
    policy = DriftPolicy("histograms", window_inferences=100, window_seconds=60)
    # The window opens at its first inference (NOON + 10), so NOON + 69 is still inside it.
    for sample, output, at in zip(x[:3], scores[:3], (NOON + 10, NOON + 40, NOON + 69), strict=True):
        recorder.observe(policy, SOURCE, MONITORING, sample, output, now=at)
    assert recorder.take() == (None, None) and recorder.rows == 3
    recorder.observe(policy, SOURCE, MONITORING, x[3], scores[3], now=NOON + 70)
    first, withheld = recorder.take()
    assert withheld is None and first is not None and (first.window, first.rows) == (0, 3)
    expected = build_reference(*reference_data()).count(x[:3], scores[:3])
    assert first.features == tuple(tuple(h.tolist()) for h in expected.features)
    assert recorder.rows == 1 and recorder.opened_at == NOON + 70  # the late inference opened window 1


def test_whichever_limit_comes_first_closes_the_window() -> None:
    x, scores = reference_data(4, seed=7)
    recorder = DriftRecorder()
    policy = DriftPolicy("histograms", window_inferences=2, window_seconds=3600)
    for sample, output in zip(x, scores, strict=True):
        recorder.observe(policy, SOURCE, MONITORING, sample, output, now=NOON)  # all in the first second
    assert [w.rows for w in recorder.pending] == [2, 2]


def test_a_quiet_device_sends_its_window_when_its_time_is_up_and_nothing_when_it_counted_nothing() -> None:
    x, scores = reference_data(1, seed=8)
    recorder = DriftRecorder()
    policy = DriftPolicy("histograms", window_inferences=500, window_seconds=300)
    recorder.close_due(policy, NOON + 10_000)  # no inference yet: no window to close
    assert recorder.take() == (None, None) and recorder.window == 0
    recorder.observe(policy, SOURCE, MONITORING, x[0], scores[0], now=NOON)
    recorder.close_due(policy, NOON + 299)
    assert not recorder.pending
    recorder.close_due(policy, NOON + 300)  # what the agent does before each report
    lone = recorder.take()[0]
    assert lone is not None and lone.rows == 1 and all(sum(h) == 1 for h in lone.features)
    recorder.close_due(policy, NOON + 100_000)  # a day without inferences opens no window
    assert recorder.take() == (None, None) and recorder.window == 1


def test_a_clock_set_back_restarts_the_window_timer_instead_of_freezing_it() -> None:
    x, scores = reference_data(1, seed=9)
    recorder = DriftRecorder()
    policy = DriftPolicy("histograms", window_seconds=60)
    recorder.observe(policy, SOURCE, MONITORING, x[0], scores[0], now=NOON)
    recorder.close_due(policy, NOON - 3600)  # the clock went back an hour
    assert not recorder.pending and recorder.opened_at == NOON - 3600
    recorder.close_due(policy, NOON - 3600 + 60)
    assert len(recorder.pending) == 1


def test_a_window_closed_on_time_with_noise_reports_estimated_rows_and_costs_epsilon() -> None:
    x, scores = reference_data(40, seed=10)
    recorder = DriftRecorder(BudgetLedger(3.0))
    policy = DriftPolicy("histograms+dp", epsilon=1.0, window_inferences=500, daily_epsilon=3.0, window_seconds=60)
    for window in range(4):  # four windows of 10 inferences, each closed on time by the next one's first
        for i in range(10):
            at = NOON + 100 * window + i
            recorder.observe(policy, SOURCE, MONITORING, x[10 * window + i], scores[10 * window + i], now=at)
    recorder.close_due(policy, NOON + 1000)
    sent = list(recorder.pending)
    assert [w.window for w in sent] == [0, 1, 2]  # the budget pays for three windows of ε = 1
    assert recorder.ledger.spent == 3.0 and any("window 3 withheld" in w for w in recorder.withheld)
    assert all(w.epsilon == 1.0 and 1 <= w.rows <= 500 for w in sent)
    # Rows are not the exact 10 but the rounded mean of the noisy totals (post-processing, no further ε).
    histograms_per_window = len(MONITORING["features"]) + 2
    for w in sent:
        totals = [sum(h) for h in (*w.features, w.confidence, w.classes)]
        assert len(totals) == histograms_per_window
        assert w.rows == min(max(round(sum(totals) / histograms_per_window), 1), 500)


def test_estimated_rows_are_the_mean_noisy_total_within_the_window_bounds() -> None:
    assert estimated_rows(counts_of(3, 4, 5), 500) == 20  # every histogram adds up to 20
    assert estimated_rows(counts_of(3, 4, 0), 500) == 1  # a sent window holds at least one inference
    assert estimated_rows(counts_of(3, 4, 1000), 500) == 500  # and at most windowInferences


def test_a_window_closed_on_count_with_noise_reports_exactly_window_inferences() -> None:
    x, scores = reference_data(3, seed=11)
    recorder = DriftRecorder()
    policy = DriftPolicy("histograms+dp", epsilon=1.0, window_inferences=3, window_seconds=3600)
    for sample, output in zip(x, scores, strict=True):
        recorder.observe(policy, SOURCE, MONITORING, sample, output, now=NOON)
    assert recorder.take()[0].rows == 3  # type: ignore[union-attr]


def test_the_recorder_state_round_trips_for_a_standalone_device() -> None:
    x, scores = reference_data(7, seed=4)
    recorder = DriftRecorder()
    for sample, output in zip(x, scores, strict=True):
        recorder.observe(DriftPolicy("histograms", window_inferences=5), SOURCE, MONITORING, sample, output,
                         now=NOON)
    again = DriftRecorder.from_json(json.loads(json.dumps(recorder.to_json())))
    assert again.to_json() == recorder.to_json() and again.opened_at == NOON  # the open window keeps its start


def counts_of(n_features: int, bins: int, value: int) -> Counts:
    return Counts(tuple(np.full(bins, value, dtype=np.int64) for _ in range(n_features)),
                  np.full(bins, value, dtype=np.int64), np.full(bins, value, dtype=np.int64))


def test_the_sensitivity_is_one_per_histogram() -> None:
    counts = counts_of(7, 10, 0)
    assert sensitivity(counts) == 9
    assert noise_scale(counts, 0.5) == 18


def test_opendp_noise_has_the_discrete_laplace_scale() -> None:
    """OpenDP draws from the OS's CSPRNG (it cannot be seeded, by design), so the check is statistical:
    with 9 * 2000 draws the sample variance is within a few percent of the discrete Laplace's;
    the margin (15 %) is more than ten standard errors, so the test fails only on a wrong scale."""
    true = 1000  # far from 0: clamping never applies
    counts = counts_of(7, 2000, true)
    epsilon = 9.0  # scale b = 9 / 9 = 1
    released = noisy(counts, epsilon)
    noise = np.concatenate([*released.features, released.confidence, released.classes]) - true
    b = noise_scale(counts, epsilon)
    variance = 2 * math.exp(-1 / b) / (1 - math.exp(-1 / b)) ** 2
    assert abs(noise.mean()) < 0.1
    assert noise.var() == pytest.approx(variance, rel=0.15)
    assert released.features[0].dtype == np.int64


def test_noisy_counts_are_clamped_at_zero() -> None:
    released = noisy(counts_of(7, 500, 0), 0.1)  # scale 90: about half the draws are negative
    values = np.concatenate([*released.features, released.confidence, released.classes])
    assert values.min() == 0 and values.max() > 0


def test_opendp_and_the_numpy_mechanism_agree_in_distribution() -> None:
    """The fleet's no-drift simulation draws the device's noise with `privacy.release` (numpy), never OpenDP;
    both must release the same distribution, clamp included.  OpenDP cannot be seeded, so the check is a
    chi-square test of homogeneity at p > 1e-6 (a false failure once in a million runs), and the clamp's mean
    against `clamp_bias` within six standard errors."""
    from scipy.stats import chi2_contingency

    true = 3  # near 0 at scale 4: about a third of the draws are clamped
    counts = counts_of(7, 4000, true)
    epsilon = 9 / 4.0
    scale = noise_scale(counts, epsilon)
    from_opendp = np.concatenate([*(r := noisy(counts, epsilon)).features, r.confidence, r.classes])
    from_numpy = release(np.random.default_rng(0), np.full(from_opendp.size, true), scale)
    levels = np.arange(0, 16)
    table = np.array([[np.sum(np.minimum(draws, 15) == level) for level in levels]
                      for draws in (from_opendp, from_numpy)])
    assert chi2_contingency(table[:, table.min(axis=0) > 0]).pvalue > 1e-6
    expected = true + float(clamp_bias([1.0], true, scale)[0])  # p = 1: the window's count is exactly `true`
    for draws in (from_opendp, from_numpy):
        assert abs(draws.mean() - expected) < 6 * draws.std() / math.sqrt(draws.size)


def test_the_ledger_stops_releases_when_the_day_is_spent_and_persists(tmp_path: Any) -> None:
    x, scores = reference_data(12, seed=5)
    path = tmp_path / "privacy-budget.json"
    recorder = DriftRecorder(BudgetLedger(2.5, path))
    policy = DriftPolicy("histograms+dp", epsilon=1.0, window_inferences=3, daily_epsilon=2.5)
    for sample, output in zip(x[:9], scores[:9], strict=True):
        recorder.observe(policy, SOURCE, MONITORING, sample, output, now=NOON)
    released = [recorder.take() for _ in range(2)]
    assert [r[0].window for r in released if r[0]] == [0, 1]  # type: ignore[union-attr]
    assert all(r[0] is not None and r[0].epsilon == 1.0 and r[0].mode == "histograms+dp" for r in released)
    assert released[0][1] is not None and "window 2 withheld: the daily privacy budget is spent" in released[0][1]
    assert json.loads(path.read_text())["spent"] == 2.0
    # A restarted device reads what it spent today; tomorrow it may send again.
    restarted = DriftRecorder(BudgetLedger(2.5, path))
    for sample, output in zip(x[9:12], scores[9:12], strict=True):
        restarted.observe(policy, SOURCE, MONITORING, sample, output, now=NOON + 60)
    assert restarted.take()[0] is None
    assert BudgetLedger(2.5, path).spend(1.0, NOON + DAY)


def histograms(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"menu_sha256": "b" * 64, "revision": 2, "variant_sha256": "e" * 64,
                           "window": 0, "rows": 4,
                           "mode": "histograms", "epsilon": None, "features": [[1, 3], [4, 0, 0]],
                           "confidence": [2, 2], "classes": [0, 4]}
    raw.update(overrides)
    return raw


def report_with(drift: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"device": "dev-1", "namespace": "edge", "fleet": "cams", "device_class": "rpi4",
                           "arch": "aarch64", "phase": "Running", "menu_version": 2, "sent_at": 1000.0,
                           "revision": 2, "drift": drift}
    raw.update(overrides)
    return raw


def test_a_report_carries_drift_and_round_trips_through_the_schema() -> None:
    from importlib import resources

    schema = json.loads(resources.files("tinymlops").joinpath("schemas/report.schema.json").read_text())
    report = Report.from_json(report_with(histograms()))
    assert report.drift == DriftHistograms.from_json(histograms())
    wire = report.to_json()
    jsonschema.validate(wire, schema)
    assert Report.from_json(json.loads(json.dumps(wire))) == report
    plain = Report.from_json(report_with(None))  # type: ignore[arg-type]
    assert "drift" not in plain.to_json() and "drift_withheld" not in plain.to_json()


@pytest.mark.parametrize(("drift", "named"), [
    (histograms(features=[[1, 3], [4, 0, -1]]), r"drift\.features\[1\]: exact histograms hold integer counts"),
    (histograms(features=[[1, 3], [4, 1]]), r"drift\.features\[1\]: counts add up to 5, the window has 4"),
    (histograms(confidence=[1, 2]), r"drift\.confidence: counts add up to 3"),
    (histograms(mode="histograms+dp", epsilon=1.0, classes=[1.0, -0.5]), r"drift\.classes\[1\]: .* is negative"),
    (histograms(mode="histograms+dp", epsilon=1.0, classes=[1.0, float("inf")]),
     r"drift\.classes\[1\]: inf is not a finite number"),
    (histograms(mode="histograms+dp", epsilon=1.0, classes=[1.0, float("nan")]), r"drift\.classes\[1\]"),
    (histograms(mode="histograms+dp", epsilon=None), r"drift\.epsilon: .*needs an epsilon > 0"),
    (histograms(mode="histograms+dp", epsilon=0), r"drift\.epsilon"),
    (histograms(epsilon=1.0), r"drift\.epsilon: .*adds no noise"),
    (histograms(mode="raw"), r"drift\.mode"),
    (histograms(features=[]), r"drift\.features: must be a list of 1\.\.64"),
    (histograms(classes=[]), r"drift\.classes: must be a list of 1\.\.1024 counts"),
    (histograms(revision=1), r"drift\.revision: 1 is not the revision the device runs \(2\)"),
])
def test_bad_drift_is_refused_naming_the_field(drift: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidReportError, match=rf"^reports\[0\]\.{named}"):
        Report.from_json(report_with(drift), where="reports[0]")


def test_a_bad_drift_policy_turns_drift_off_and_keeps_the_upload_rules() -> None:
    from tinymlops.agent.telemetry import TelemetryPolicy

    policy = TelemetryPolicy.from_plan({"telemetry": {"upload": "wifi-only", "drift": {"mode": "raw"}}})
    assert policy.upload == "wifi-only" and not policy.drift.enabled
