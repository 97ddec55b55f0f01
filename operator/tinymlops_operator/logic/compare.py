"""Comparing a canary's latency histogram with the stable one's, like with like (pure numbers, no IO).

Rollout analysis gets bucket counts from Prometheus, per revision and device
class, over one window.  A raw ratio of two p95s is noise-prone: the two sides
may hold different device classes (a canary cohort of five devices can be all
Raspberry Pi Zeros), and a few samples say little.  So, as canary judges do
(Kayenta's Mann-Whitney classifier, Argo Rollouts' minimum counts):

- only device classes present on both sides are compared, and the stable
  histogram is reweighted to the canary's class mix (direct standardisation),
  so the p95 ratio compares the same kinds of devices;
- the verdict also asks whether the canary is *significantly* slower: a
  one-sided Mann-Whitney U test stratified by device class (van Elteren's
  test), with ties (same bucket) given mid-ranks as binned data needs.

Buckets are Prometheus' cumulative `le` buckets turned into per-bucket counts;
counts may be fractional (`increase()` extrapolates) and every formula accepts that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# (upper bound `le`, count in that bucket alone), ascending; the last bound may be +Inf.
Buckets = Sequence[tuple[float, float]]
# A class needs at least this many samples on each side to be compared: one sample in a class would
# otherwise stand for the whole class after reweighting.
MIN_CLASS_SAMPLES = 10.0


def from_cumulative(cumulative: Mapping[float, float]) -> list[tuple[float, float]]:
    """Per-bucket counts from Prometheus' cumulative `le` counts (negative steps, from extrapolation, are 0)."""
    buckets, previous = [], 0.0
    for le in sorted(cumulative):
        count = cumulative[le]
        buckets.append((le, max(count - previous, 0.0)))
        previous = max(previous, count)
    return buckets


def total(buckets: Buckets) -> float:
    return sum(count for _, count in buckets)


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile the way PromQL's histogram_quantile() estimates it: linear within the bucket it falls in,
    the highest finite bound when it falls in +Inf; None without samples."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is not in [0, 1]")
    n = total(buckets)
    if n <= 0:
        return None
    rank, seen, lower = q * n, 0.0, 0.0
    finite = [le for le, _ in buckets if math.isfinite(le)]
    for le, count in buckets:
        if count > 0 and seen + count >= rank:
            if not math.isfinite(le):
                return finite[-1] if finite else None
            return lower + (le - lower) * (rank - seen) / count
        seen += count
        lower = le
    return finite[-1] if finite else None


def mix(histograms: Iterable[tuple[float, Buckets]]) -> list[tuple[float, float]]:
    """Σ weight × histogram / its total: histograms over the same bounds mixed in the given proportions."""
    summed: dict[float, float] = {}
    for weight, buckets in histograms:
        n = total(buckets)
        for le, count in buckets:
            summed[le] = summed.get(le, 0.0) + (weight * count / n if n > 0 else 0.0)
    return sorted(summed.items())


@dataclass(frozen=True)
class UTest:
    """A one-sided Mann-Whitney U test of "canary latencies are larger", stratified by device class."""

    z: float
    p_value: float  # small: the canary is significantly slower
    p_slower: float  # U / (n·m) pooled over classes: P(canary sample > stable sample) + ½ P(tie)


def u_test(strata: Sequence[tuple[Buckets, Buckets]]) -> UTest | None:
    """van Elteren's stratified rank-sum test on binned data, (canary, stable) per stratum; None without data.

    Per stratum the canary's rank sum W uses mid-ranks for each bucket (all its samples tie), with
    E[W] = n(N+1)/2 and Var[W] = nm/12 · (N+1 − Σ(t³−t)/(N(N−1))); strata are weighted 1/(N+1) so each
    contributes on the same scale.  The normal approximation is sound at the sample sizes analysis asks for.
    """
    statistic = expected = variance = 0.0
    u_sum = pairs = 0.0
    for canary, stable in strata:
        counts: dict[float, list[float]] = {}
        for le, count in canary:
            counts.setdefault(le, [0.0, 0.0])[0] += count
        for le, count in stable:
            counts.setdefault(le, [0.0, 0.0])[1] += count
        n, m = total(canary), total(stable)
        big_n = n + m
        if n <= 0 or m <= 0 or big_n < 2:
            continue
        rank_sum, below, ties = 0.0, 0.0, 0.0
        for le in sorted(counts):
            c, s = counts[le]
            t = c + s
            rank_sum += c * (below + (t + 1) / 2)
            ties += t**3 - t
            below += t
        weight = 1.0 / (big_n + 1)
        statistic += weight * rank_sum
        expected += weight * n * (big_n + 1) / 2
        variance += weight**2 * n * m / 12 * ((big_n + 1) - ties / (big_n * (big_n - 1)))
        u_sum += rank_sum - n * (n + 1) / 2
        pairs += n * m
    if pairs <= 0:
        return None
    if variance <= 0:  # every sample in one bucket: no evidence either way
        return UTest(z=0.0, p_value=0.5, p_slower=u_sum / pairs)
    z = (statistic - expected) / math.sqrt(variance)
    return UTest(z=z, p_value=0.5 * math.erfc(z / math.sqrt(2)), p_slower=u_sum / pairs)


@dataclass(frozen=True)
class Comparison:
    """The canary's latency against the stable revision's over the classes both have."""

    ratio: float | None  # canary p95 / stable p95 at the canary's class mix; None when nothing to compare
    canary_samples: float  # in the compared classes
    stable_samples: float
    classes: tuple[str, ...]  # compared
    left_out: tuple[str, ...]  # classes with too few samples on one side
    test: UTest | None


def compare(canary: Mapping[str, Buckets], stable: Mapping[str, Buckets], *, q: float = 0.95,
            min_class_samples: float = MIN_CLASS_SAMPLES) -> Comparison:
    """Compare per-class histograms (class -> buckets) of the canary and the stable revision."""
    classes = tuple(sorted(k for k in set(canary) & set(stable)
                           if total(canary[k]) >= min_class_samples and total(stable[k]) >= min_class_samples))
    left_out = tuple(sorted((set(canary) | set(stable)) - set(classes)))
    n = sum(total(canary[k]) for k in classes)
    m = sum(total(stable[k]) for k in classes)
    if not classes:
        return Comparison(None, 0.0, 0.0, (), left_out, None)
    pooled_canary = mix((total(canary[k]), canary[k]) for k in classes)
    standardised_stable = mix((total(canary[k]), stable[k]) for k in classes)  # the canary's class shares
    ours, theirs = quantile(q, pooled_canary), quantile(q, standardised_stable)
    ratio = None if ours is None or not theirs else ours / theirs
    test = u_test([(canary[k], stable[k]) for k in classes])
    return Comparison(ratio, n, m, classes, left_out, test)
