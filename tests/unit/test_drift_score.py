"""Fleet-level drift scoring: the statistics, their no-drift calibration and the merge's refusals."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import numpy as np
import pytest

from tests.unit import drift_samples as samples
from tinymlops.drift import merge as drift_merge
from tinymlops.drift import privacy
from tinymlops.drift import score as drift_score
from tinymlops.drift.reference import Monitoring
from tinymlops.errors import DriftRefusedError, IntegrityError


def raw_psi(reference_x: np.ndarray, live_x: np.ndarray, edges: np.ndarray) -> float:
    """PSI computed straight from raw values (np.histogram over the same edges), with the same smoothing."""
    bounds = np.concatenate(([-np.inf], edges, [np.inf]))
    # np.histogram's bins are [a, b); ours are (a, b]: negate to get the same sides.
    ref = np.histogram(-reference_x, bins=-bounds[::-1])[0][::-1] + drift_score.SMOOTHING
    live = np.histogram(-live_x, bins=-bounds[::-1])[0][::-1] + drift_score.SMOOTHING
    ref, live = ref / ref.sum(), live / live.sum()
    return float(np.sum((live - ref) * np.log(live / ref)))


def test_psi_from_exact_histograms_equals_psi_on_the_raw_data() -> None:
    rng = np.random.default_rng(3)
    edges = samples.edges(rng)
    reference_x, live_x = rng.standard_normal((5000, samples.FEATURES)), rng.standard_normal((4000, samples.FEATURES))
    live_x[:, 1] += 0.3
    ref_h, live_h = samples.histograms(reference_x, edges), samples.histograms(live_x, edges)
    for f in range(samples.FEATURES):
        from_histograms = float(drift_score.statistics(ref_h[f], live_h[f])[0])
        assert from_histograms == pytest.approx(raw_psi(reference_x[:, f], live_x[:, f], edges[:, f]), abs=1e-3)


def test_statistics_are_zero_for_equal_histograms_and_grow_with_the_gap() -> None:
    equal = drift_score.statistics([10, 20, 30], [10, 20, 30])
    assert np.allclose(equal, 0.0)
    near, far = drift_score.statistics([10, 20, 30], [12, 20, 28]), drift_score.statistics([10, 20, 30], [30, 20, 10])
    assert np.all(far > near) and np.all(near > 0)
    assert far[1] <= 1.0  # JS in bits is bounded by 1
    # An empty live bin stays finite thanks to the smoothing.
    assert np.all(np.isfinite(drift_score.statistics([10, 20, 30], [0, 0, 60])))


def test_ks_is_the_largest_gap_of_the_binned_cdfs() -> None:
    ks = float(drift_score.statistics([50, 50, 0], [0, 50, 50])[2])
    smooth = drift_score.proportions([50, 50, 0]), drift_score.proportions([0, 50, 50])
    assert ks == pytest.approx(float(np.max(np.abs(np.cumsum(smooth[0]) - np.cumsum(smooth[1]))[:-1])))


def test_benjamini_hochberg_rejects_the_step_up_set() -> None:
    p = [0.001, 0.008, 0.039, 0.041, 0.2]
    assert drift_score.benjamini_hochberg(p, 0.05).tolist() == [True, True, False, False, False]
    assert drift_score.benjamini_hochberg(p, 0.15).tolist() == [True, True, True, True, False]
    assert drift_score.benjamini_hochberg([], 0.05).tolist() == []


def test_the_fitted_tail_agrees_with_the_chi_square_it_approximates() -> None:
    # For chi-square(5) draws, the fitted p-value of the 99th percentile (15.09) is close to 0.01.
    rng = np.random.default_rng(0)
    null = np.stack([rng.chisquare(5, 4000)] * 2 + [np.sqrt(rng.chisquare(5, 4000))], axis=1)
    p = drift_score.fitted_p_values(np.array([15.09, 15.09, math.sqrt(15.09)]), null)
    assert np.all((p > 0.005) & (p < 0.02))


def _baseline(seed: int = 0) -> tuple[drift_merge.Baseline, np.ndarray]:
    monitoring, edges = samples.monitoring(seed)
    return samples.baseline(monitoring), edges


def _fleet(baseline: drift_merge.Baseline, edges: np.ndarray, rng: np.random.Generator, *, devices: int,
           shift: float = 0.0, epsilon: float | None = None) -> drift_merge.Merged:
    releases = [drift_merge.check(samples.drift_payload(rng, edges, shift=shift, feature=2, epsilon=epsilon,
                                                        window=d), baseline, revision=1)
                for d in range(devices)]
    return drift_merge.merge(baseline, releases)


@pytest.mark.parametrize("epsilon", [None, 1.0])
def test_a_shifted_feature_is_flagged_and_named(epsilon: float | None) -> None:
    baseline, edges = _baseline()
    merged = _fleet(baseline, edges, np.random.default_rng(7), devices=100, shift=0.25, epsilon=epsilon)
    result = merged.score(seed=1)
    assert result.scored and result.drifted
    assert result.top()[0].name == "x[2]"
    assert [f.name for f in result.features if f.drifted] == ["x[2]"]


def test_no_drift_rarely_raises_an_alarm() -> None:
    # 50 seeded fleets without drift, 6 histograms each, FDR 1%: the expected alarms are about 0.5; allowing 4
    # leaves a margin no machine's arithmetic can cross (P(>4) < 0.002 even at twice the nominal rate).
    baseline, edges = _baseline()
    rng = np.random.default_rng(11)
    alarms = 0
    for trial in range(50):
        merged = _fleet(baseline, edges, rng, devices=12, epsilon=1.0 if trial % 2 else None)
        alarms += merged.score(seed=trial, simulations=200).drifted
    assert alarms <= 4


def test_nothing_is_scored_before_enough_rows() -> None:
    baseline, edges = _baseline()
    merged = _fleet(baseline, edges, np.random.default_rng(1), devices=4, shift=2.0)
    result = merged.score(min_rows=5000)
    assert merged.rows == 2000 and not result.scored and not result.drifted and result.features == ()
    assert result.as_json()["scored"] is False


def test_the_merged_noise_variance_is_the_sum_of_the_devices() -> None:
    baseline, edges = _baseline()
    merged = _fleet(baseline, edges, np.random.default_rng(1), devices=5, epsilon=2.0)
    scale = privacy.scale_for(samples.FEATURES + 2, 2.0)
    per_device = drift_merge.count_variance(2.0, samples.FEATURES + 2)
    assert per_device == pytest.approx(privacy.noise_variance(scale)) and per_device == pytest.approx(2 * scale**2,
                                                                                                        rel=0.01)
    assert merged.noise_variance == pytest.approx(5 * per_device) and merged.releases == 5 and merged.rows == 2500
    assert merged.noises() == (drift_score.Noise(5, 2500, scale),)
    # The simulated sums of the devices' noise have the variance the merge carries.
    draws = privacy.discrete_laplace_sums(np.random.default_rng(0), 5, scale, (20000,))
    assert draws.var() == pytest.approx(merged.noise_variance, rel=0.1)


def test_the_null_models_the_devices_clamp_without_narrowing_the_noise() -> None:
    """The no-drift model (multinomial + summed noise + the clamp's mean bias) against devices simulated one by one
    with the device's own release function: the same mean per bin, and a variance never smaller."""
    rng = np.random.default_rng(2)
    p, rows, devices, scale = np.array([0.002, 0.02, 0.2, 0.778]), 100, 50, 6.0
    windows = rng.multinomial(rows, p, size=(4000, devices))
    real = privacy.release(rng, windows, scale).sum(axis=1)
    noise = drift_score.Noise(devices, devices * rows, scale)
    model = (rng.multinomial(devices * rows, p, size=4000)
             + privacy.discrete_laplace_sums(rng, devices, scale, (4000, 4)) + noise.bias(p))
    standard_error = real.std(axis=0) / math.sqrt(4000) * 5
    assert np.all(np.abs(real.mean(axis=0) - model.mean(axis=0)) < standard_error + 1.0)
    assert np.all(model.var(axis=0) > 0.9 * real.var(axis=0))
    assert noise.bias(p)[0] > 10 * standard_error[0]  # the clamp's bias is far larger than the test's margin


def test_sparse_bins_under_strong_noise_raise_no_alarm() -> None:
    # A class the model almost never predicts: its bin is ~0 on every device, so every device's clamp adds about
    # scale / 2 to it: 200 devices at scale 12 add ~1200 counts, five noise SDs, flagged every time were the bias
    # not modelled.  Allowing 2 alarms in 10 seeded fleets leaves a wide margin at FDR 1 %.
    monitoring, edges = samples.monitoring(0)
    monitoring["reference"]["classes"] = [19_990, 10, 0]
    baseline = samples.baseline(monitoring)
    rng = np.random.default_rng(4)
    alarms = 0
    for trial in range(10):
        merged = drift_merge.Merged(baseline)
        for device in range(200):
            payload = samples.drift_payload(rng, edges, window=device, epsilon=0.5)
            classes = rng.multinomial(500, [0.9995, 0.0005, 0.0])
            payload["classes"] = [int(c) for c in privacy.release(rng, classes, privacy.scale_for(6, 0.5))]
            merged.add(drift_merge.check(payload, baseline, revision=1))
        alarms += merged.score(seed=trial, simulations=200).drifted
    assert alarms <= 2


def _payload(**changes: Any) -> dict[str, Any]:
    _, edges = samples.monitoring(0)
    payload = samples.drift_payload(np.random.default_rng(0), edges)
    payload.update(changes)
    return payload


@pytest.mark.parametrize(("change", "reason", "field"), [
    ({"menu_sha256": "0" * 64}, "unknown-menu", "menu_sha256"),
    ({"revision": 2}, "wrong-revision", "revision"),
    ({"mode": "raw"}, "malformed", "mode"),
    ({"rows": 10**9}, "too-many-rows", "rows"),
    ({"rows": 100}, "too-many-rows", "features[0]"),  # 500 counted in a window of 100 rows
    ({"mode": "histograms+dp", "epsilon": 0}, "malformed", "epsilon"),
])
def test_a_bad_payload_is_refused_by_name(change: dict[str, Any], reason: str, field: str) -> None:
    baseline, _ = _baseline()
    with pytest.raises(DriftRefusedError, match=re.escape(field)) as refused:
        drift_merge.check(_payload(**change), baseline, revision=1)
    assert refused.value.reason == reason and reason in drift_merge.REASONS


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda p: p["features"].pop(), "wrong-bins"),
    (lambda p: p["features"][1].append(0), "wrong-bins"),
    (lambda p: p.update(classes=[1, 2]), "wrong-bins"),
    (lambda p: p["features"][0].__setitem__(0, -1), "bad-counts"),
    (lambda p: p["features"][0].__setitem__(0, float("nan")), "bad-counts"),
    (lambda p: p["features"][0].__setitem__(0, float("inf")), "bad-counts"),
    (lambda p: p["features"][0].__setitem__(0, "3"), "bad-counts"),
    (lambda p: p["confidence"].__setitem__(0, 0.5), "bad-counts"),  # exact counts are integers
])
def test_bad_histograms_are_refused_and_merge_nothing(mutate: Any, reason: str) -> None:
    baseline, _ = _baseline()
    payload = _payload()
    merged = drift_merge.Merged(baseline)
    merged.add(drift_merge.check(copy.deepcopy(payload), baseline, revision=1))
    before = [c.copy() for c in merged.counts]
    mutate(payload)
    with pytest.raises(DriftRefusedError) as refused:
        merged.add(drift_merge.check(payload, baseline, revision=1))
    assert refused.value.reason == reason
    assert all(np.array_equal(a, b) for a, b in zip(before, merged.counts, strict=True)) and merged.rows == 500


def test_a_noisy_histogram_may_exceed_its_rows_by_its_noise_only() -> None:
    baseline, edges = _baseline()
    rng = np.random.default_rng(5)
    drift_merge.check(samples.drift_payload(rng, edges, epsilon=1.0), baseline, revision=1)  # accepted
    inflated = samples.drift_payload(rng, edges, epsilon=1.0)
    inflated["features"][0] = [c * 10 for c in inflated["features"][0]]
    with pytest.raises(DriftRefusedError, match=r"features\[0\]") as refused:
        drift_merge.check(inflated, baseline, revision=1)
    assert refused.value.reason == "too-many-rows"


def test_a_malformed_reference_is_named() -> None:
    monitoring, _ = samples.monitoring(0)
    monitoring["features"][0]["edges"] = [0.0]
    with pytest.raises(IntegrityError, match=r"monitoring.reference.features\[0\]: must be 2 integer counts"):
        samples.baseline(monitoring)
    monitoring, _ = samples.monitoring(0)
    monitoring["reference"]["classes"][0] += 1
    with pytest.raises(IntegrityError, match=r"monitoring.reference.classes: counts add up to 20001"):
        samples.baseline(monitoring)


def test_the_baseline_is_the_monitoring_object_in_scoring_order() -> None:
    monitoring, _ = samples.monitoring(0)
    baseline = samples.baseline(monitoring)
    assert baseline.monitoring.to_json() == Monitoring.from_json(monitoring).to_json() == monitoring
    assert baseline.names == (*(f"x[{f}]" for f in range(samples.FEATURES)), "@confidence", "@class")
    assert [c.tolist() for c in baseline.counts] == [*monitoring["reference"]["features"],
                                                     monitoring["reference"]["confidence"],
                                                     monitoring["reference"]["classes"]]
    assert baseline.rows == monitoring["rows"] and baseline.features == samples.FEATURES
