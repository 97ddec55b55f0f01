"""Comparing latency histograms: the numbers the canary analysis rests on, checked directly."""

from __future__ import annotations

import math
import random

import pytest

from tinymlops_operator.logic.compare import compare, from_cumulative, mix, quantile, total, u_test

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, math.inf)


def binned(values: list[float], bounds: tuple[float, ...] = BOUNDS) -> list[tuple[float, float]]:
    counts = dict.fromkeys(bounds, 0.0)
    for value in values:
        counts[next(le for le in bounds if value <= le)] += 1
    return sorted(counts.items())


def lognormal(median: float, n: int, seed: int, sigma: float = 0.15) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0, sigma)) for _ in range(n)]


def test_cumulative_buckets_become_per_bucket_counts_and_extrapolation_dips_are_zero() -> None:
    assert from_cumulative({0.1: 2.0, 0.5: 5.0, math.inf: 6.0}) == [(0.1, 2.0), (0.5, 3.0), (math.inf, 1.0)]
    # increase() extrapolates each bucket alone, so a higher bucket can come out a hair lower.
    assert from_cumulative({0.1: 2.0, 0.5: 1.9, math.inf: 3.0}) == [(0.1, 2.0), (0.5, 0.0), (math.inf, 1.0)]


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (0.2, 50.0), (math.inf, 0.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.95, [(0.1, 10.0), (math.inf, 10.0)]) == 0.1  # in +Inf: the highest finite bound
    assert quantile(0.95, [(0.1, 0.0), (math.inf, 0.0)]) is None


def test_mix_weights_histograms_by_the_given_shares() -> None:
    mixed = mix([(3.0, [(1.0, 10.0), (2.0, 0.0)]), (1.0, [(1.0, 0.0), (2.0, 5.0)])])
    assert mixed == [(1.0, 3.0), (2.0, 1.0)]


def test_u_test_agrees_with_scipy_on_one_stratum_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    canary, stable = binned(lognormal(0.006, 300, 1)), binned(lognormal(0.005, 400, 2))
    ours = u_test([(canary, stable)])
    assert ours is not None

    def expand(buckets: list[tuple[float, float]]) -> list[float]:
        return [min(le, 1.0) for le, count in buckets for _ in range(int(count))]  # each bucket one tied value

    theirs = stats.mannwhitneyu(expand(canary), expand(stable), alternative="greater", method="asymptotic",
                                use_continuity=False)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-6)
    assert ours.p_slower == pytest.approx(theirs.statistic / (300 * 400))


def test_u_test_finds_a_slower_canary_and_not_an_equal_one() -> None:
    stable = binned(lognormal(0.004, 500, 3))
    slower = u_test([(binned(lognormal(0.012, 200, 4)), stable)])
    same = u_test([(binned(lognormal(0.004, 200, 5)), stable)])
    assert slower is not None and slower.p_value < 1e-6 and slower.p_slower > 0.9
    assert same is not None and same.p_value > 0.01
    assert u_test([([(1.0, 0.0)], stable)]) is None  # no canary samples: no test
    tied = u_test([([(1.0, 5.0)], [(1.0, 7.0)])])  # every sample in one bucket: no evidence either way
    assert tied is not None and (tied.p_value, tied.p_slower) == (0.5, 0.5)


def test_a_class_mix_difference_is_not_a_regression() -> None:
    """The 5,000-device rollback: canary devices that happen to be slow classes look slower in a pooled p95."""
    fast, slow = 0.002, 0.02  # an x86 gateway and a Pi Zero running the same variant
    canary = {"pc": binned(lognormal(fast, 20, 6)), "zero": binned(lognormal(slow, 200, 7))}
    stable = {"pc": binned(lognormal(fast, 800, 8)), "zero": binned(lognormal(slow, 30, 9))}
    pooled_canary = quantile(0.95, mix((total(b), b) for b in canary.values()))
    pooled_stable = quantile(0.95, mix((total(b), b) for b in stable.values()))
    assert pooled_canary and pooled_stable and pooled_canary / pooled_stable > 3  # what the old query saw
    result = compare(canary, stable)
    assert result.ratio is not None and 0.8 < result.ratio < 1.25
    assert result.test is not None and result.test.p_value > 0.01
    assert result.classes == ("pc", "zero") and result.canary_samples == 220 and result.stable_samples == 830


def test_classes_on_one_side_only_or_with_few_samples_are_left_out() -> None:
    canary = {"pc": binned(lognormal(0.002, 100, 10)), "zero": binned(lognormal(0.02, 3, 11)),
              "bone": binned(lognormal(0.04, 50, 12))}
    stable = {"pc": binned(lognormal(0.002, 100, 13)), "zero": binned(lognormal(0.02, 100, 14))}
    result = compare(canary, stable)
    assert result.classes == ("pc",) and result.left_out == ("bone", "zero")
    nothing = compare({"bone": canary["bone"]}, stable)
    assert nothing.ratio is None and nothing.test is None and nothing.canary_samples == 0


def test_a_really_slower_canary_is_measured_as_such_within_each_class() -> None:
    canary = {"pc": binned(lognormal(0.008, 200, 15)), "zero": binned(lognormal(0.08, 200, 16))}
    stable = {"pc": binned(lognormal(0.002, 200, 17)), "zero": binned(lognormal(0.02, 200, 18))}
    result = compare(canary, stable)
    assert result.ratio is not None and result.ratio > 3
    assert result.test is not None and result.test.p_value < 1e-9
