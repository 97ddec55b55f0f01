"""Drift scores of merged live histograms against a menu's reference histograms (pure, numpy).

Three statistics per feature, each from the two histograms over the same fixed bins:

- PSI, the population stability index: sum over bins of (live - ref) * ln(live / ref);
- JS, the Jensen-Shannon divergence in bits (0 for equal histograms, at most 1);
- KS, the Kolmogorov-Smirnov statistic of the binned CDFs: the largest gap between the
  two cumulative proportions at the bin edges.

Proportions.  Counts below zero (differentially private counts may be) count as zero, and
every bin of both histograms gets SMOOTHING (a Jeffreys pseudo-count of 0.5) before the
counts become proportions, so an empty bin on one side gives a finite PSI.  The same rule
applies to the data and to the simulations below, so it moves no threshold.

The reference side.  For the input features it is the menu's reference counts; for the output
histograms (`@confidence`, `@class`) it is the mixture of the output references of the variants that
counted the live windows, weighted by their rows and scaled to the reference's rows (`merge.Baseline.
reference_for`; every variant ran on the same reference data).  Counts that need not be integers, but the
null model below treats them exactly as it treats a single reference: a sample of the reference's row
count from the pooled distribution.  A mixture of references drawn from the same data varies no more than
one of them, so this keeps the no-drift draws at least as wide as the real reference's variation.

Thresholds.  A score alone says little: its size under no drift depends on the rows on both
sides, the bins and the noise the devices added.  So each feature's scores get a p-value from a
parametric simulation of no drift: `simulations` pairs of histograms drawn from the pooled
distribution, a reference of the reference's row count and a live one of the live row count,
plus what the devices' privacy mechanism did to it (`Noise`, modelled with the device's own
functions in `privacy.py`): the sum of the releases' discrete Laplace noises, drawn exactly
(a difference of two negative binomials), and the clamp at zero's bias, exactly in mean
(`privacy.clamp_bias`; the pooled distribution is estimated net of it, by a few fixed-point steps).  Only the clamp's
own randomness is left out, and leaving it out is cautious: a clamped count max(-c, Z) is a
1-Lipschitz function of the noise Z, so its variance is at most Z's; the simulated noise is never
narrower than the real one (tests/unit/test_drift_score.py checks both against simulated
devices).  A scaled chi-square fitted to the simulated statistics' mean and variance
(as Satterthwaite does; KS is squared first) gives the p-value in the tail, where a few hundred
draws could not reach, through the Wilson-Hilferty normal approximation.  A feature's p-value
is the smallest of its three, times three (Bonferroni over the statistics); Benjamini-Hochberg
across the features at `fdr` decides which drifted.  Fewer than `min_rows` live rows: no score
at all, only the rows counted.  Seeded, so the same histograms always get the same verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tinymlops.drift.privacy import clamp_bias, discrete_laplace_sums, noise_variance

SMOOTHING = 0.5  # pseudo-count per bin on both sides (Jeffreys)
MIN_ROWS = 5_000  # live rows merged before any score is computed
# The target is at most 1 % false alarms per feature per day of no-drift traffic.  The gateway scores a rolling
# hour, so a day holds about 24 independent looks: each look's Benjamini-Hochberg false discovery rate across the
# features of one histogram set is that day's budget split 24 ways (a 0.1 SD shift is still flagged at this level:
# benchmarks/drift.py).
DAILY_FALSE_ALARMS, LOOKS_PER_DAY = 0.01, 24
FDR = DAILY_FALSE_ALARMS / LOOKS_PER_DAY
SIMULATIONS = 400  # no-drift draws per feature: enough for a mean and a variance, cheap at scrape cadence
STATISTICS = ("psi", "js", "ks")
BIAS_ITERATIONS = 8  # fixed-point steps estimating no-drift proportions net of the clamp's bias

Array = NDArray[np.float64]


def proportions(counts: ArrayLike, smoothing: float = SMOOTHING) -> Array:
    """Counts (last axis: bins) as smoothed proportions; negative counts count as zero."""
    clipped = np.maximum(np.asarray(counts, dtype=np.float64), 0.0) + smoothing
    total: Array = clipped.sum(axis=-1, keepdims=True)
    return clipped / total


def psi(reference: Array, live: Array) -> Array:
    """Population stability index of proportions (last axis: bins)."""
    return np.asarray(np.sum((live - reference) * np.log(live / reference), axis=-1))


def jensen_shannon(reference: Array, live: Array) -> Array:
    """Jensen-Shannon divergence in bits of proportions (last axis: bins)."""
    middle = (reference + live) / 2.0
    return np.asarray(0.5 * np.sum(reference * np.log2(reference / middle), axis=-1)
                      + 0.5 * np.sum(live * np.log2(live / middle), axis=-1))


def ks(reference: Array, live: Array) -> Array:
    """Kolmogorov-Smirnov statistic of the binned CDFs (last axis: bins)."""
    gap = np.abs(np.cumsum(reference, axis=-1) - np.cumsum(live, axis=-1))
    return np.asarray(gap[..., :-1].max(axis=-1, initial=0.0))


def statistics(reference_counts: ArrayLike, live_counts: ArrayLike) -> Array:
    """PSI, JS and KS (last axis, in STATISTICS order) of counts over the same bins, smoothed alike."""
    reference, live = proportions(reference_counts), proportions(live_counts)
    return np.stack([psi(reference, live), jensen_shannon(reference, live), ks(reference, live)], axis=-1)


@dataclass(frozen=True)
class Noise:
    """The noisy releases summed into a live histogram that share one noise scale: how many, and their rows."""

    releases: int
    rows: int
    scale: float  # b of every count's discrete Laplace noise (privacy.scale_for)

    @property
    def variance(self) -> float:
        """Of each merged count's noise (the releases' variances add up)."""
        return self.releases * noise_variance(self.scale)

    def bias(self, proportions: Array) -> Array:
        """The clamp's expected excess per bin, summed over the releases (windows of equal rows)."""
        return self.releases * clamp_bias(proportions, round(self.rows / self.releases), self.scale)


def no_drift_proportions(reference: Array, live: Array, live_rows: int, noise: Sequence[Noise]) -> Array:
    """The proportions both histograms share under no drift: without noise, the pooled counts'.

    With noise, the live counts are first taken net of the clamp's bias (which depends on the proportions it
    inflates: a few fixed-point steps), and each side weighs by its precision per bin: a sparse bin's noisy
    live count says little next to the reference's exact one, and pooling them as equals would put the
    noise's excursions into the simulated reference as well."""
    pooled = proportions(reference + live)
    if not any(n.releases for n in noise):
        return pooled
    reference_rows, variance = max(float(reference.sum()), 1.0), sum(n.variance for n in noise)
    floor = 1.0 / (reference_rows + live_rows)
    for _ in range(BIAS_ITERATIONS):
        bias = sum((n.bias(pooled) for n in noise if n.releases), np.zeros(live.shape))
        p = np.maximum(pooled, floor)
        reference_weight = reference_rows / p
        live_weight = live_rows**2 / (live_rows * p + variance)
        combined = (reference_weight * reference / reference_rows + live_weight * (live - bias) / max(live_rows, 1)) \
            / (reference_weight + live_weight)
        pooled = proportions(np.maximum(combined, 0.0) * (reference_rows + live_rows))
    return pooled


def null_statistics(
    reference_counts: ArrayLike, live_counts: ArrayLike, *, rows: int | None = None, noise: Sequence[Noise] = (),
    simulations: int = SIMULATIONS, rng: np.random.Generator,
) -> Array:
    """(simulations, 3) statistics of histograms drawn under no drift, sized and noised like the data.

    `rows`: the live histogram's true rows (its counts' sum, noise and all, without it); `noise`: its noisy
    releases (none: exact counts)."""
    reference = np.asarray(reference_counts, dtype=np.float64)
    live = np.maximum(np.asarray(live_counts, dtype=np.float64), 0.0)
    live_rows = round(live.sum()) if rows is None else rows
    pooled = no_drift_proportions(reference, live, live_rows, noise)
    simulated_reference = rng.multinomial(round(reference.sum()), pooled, size=simulations).astype(np.float64)
    simulated_live = rng.multinomial(live_rows, pooled, size=simulations).astype(np.float64)
    for n in noise:
        if n.releases:
            simulated_live += discrete_laplace_sums(rng, n.releases, n.scale, simulated_live.shape) + n.bias(pooled)
    return statistics(simulated_reference, simulated_live)


def chi2_sf_wilson_hilferty(x: Array, df: Array) -> Array:
    """P(X >= x) for X ~ chi-square(df), by the Wilson-Hilferty cube-root normal approximation."""
    df = np.maximum(df, 1e-9)
    z = ((np.maximum(x, 0.0) / df) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * df))) / np.sqrt(2.0 / (9.0 * df))
    return np.asarray(0.5 * np.vectorize(math.erfc)(z / math.sqrt(2.0)))


def fitted_p_values(observed: Array, null: Array) -> Array:
    """p-values of `observed` (3,) under a scaled chi-square fitted to the columns of `null` (sims, 3)."""
    observed, null = observed.copy(), null.copy()
    observed[2], null[:, 2] = observed[2] ** 2, null[:, 2] ** 2  # KS^2 is the chi-square-like one
    mean, variance = null.mean(axis=0), null.var(axis=0, ddof=1)
    degenerate = (mean <= 0) | (variance <= 0)
    safe_mean, safe_variance = np.where(degenerate, 1.0, mean), np.where(degenerate, 1.0, variance)
    scale, df = safe_variance / (2.0 * safe_mean), 2.0 * safe_mean**2 / safe_variance
    p = chi2_sf_wilson_hilferty(observed / scale, df)
    return np.where(degenerate, np.where(observed > mean, 0.0, 1.0), p)


def benjamini_hochberg(p_values: ArrayLike, fdr: float) -> NDArray[np.bool_]:
    """Which hypotheses Benjamini-Hochberg rejects at false discovery rate `fdr`."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p)
    below = p[order] <= fdr * np.arange(1, p.size + 1) / p.size
    rejected = np.zeros(p.size, dtype=bool)
    if below.any():
        rejected[order[: int(np.nonzero(below)[0].max()) + 1]] = True
    return rejected


@dataclass(frozen=True)
class FeatureScore:
    name: str
    psi: float
    js: float
    ks: float
    p_value: float  # the smallest of the three statistics' p-values, times three
    drifted: bool

    def value(self, statistic: str) -> float:
        return {"psi": self.psi, "js": self.js, "ks": self.ks}[statistic]

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "psi": round(self.psi, 6), "js": round(self.js, 6), "ks": round(self.ks, 6),
                "p_value": float(f"{self.p_value:.3g}"), "drifted": self.drifted}


@dataclass(frozen=True)
class DriftScore:
    """The verdict on one merged histogram set: no `features` (unscored) until `min_rows` live rows."""

    rows: int
    min_rows: int
    fdr: float
    features: tuple[FeatureScore, ...] = ()

    @property
    def scored(self) -> bool:
        return self.rows >= self.min_rows

    @property
    def drifted(self) -> bool:
        return any(feature.drifted for feature in self.features)

    def top(self, limit: int = 3) -> list[FeatureScore]:
        """The drifted features, most significant first (then by PSI)."""
        drifted = [feature for feature in self.features if feature.drifted]
        return sorted(drifted, key=lambda f: (f.p_value, -f.psi))[:limit]

    def as_json(self) -> dict[str, object]:
        return {"rows": self.rows, "min_rows": self.min_rows, "fdr": self.fdr, "scored": self.scored,
                "drifted": self.drifted, "top": [feature.name for feature in self.top()],
                "features": [feature.as_json() for feature in self.features]}


def score(
    names: Sequence[str], reference: Sequence[ArrayLike], live: Sequence[ArrayLike], *, rows: int,
    noise: Sequence[Noise] = (), fdr: float = FDR, min_rows: int = MIN_ROWS, simulations: int = SIMULATIONS,
    seed: int = 0,
) -> DriftScore:
    """Score each named histogram of `live` (merged, `rows` rows) against the same-binned `reference`.

    `noise` describes the noisy releases merged into `live` (none without differential privacy)."""
    if not len(names) == len(reference) == len(live):
        raise ValueError(f"{len(names)} names, {len(reference)} reference and {len(live)} live histograms")
    if rows < min_rows:
        return DriftScore(rows=rows, min_rows=min_rows, fdr=fdr)
    rng = np.random.default_rng(seed)
    observed: list[Array] = []
    p_values: list[float] = []
    for reference_counts, live_counts in zip(reference, live, strict=True):
        stats = statistics(reference_counts, live_counts)
        null = null_statistics(reference_counts, live_counts, rows=rows, noise=noise, simulations=simulations,
                               rng=rng)
        observed.append(stats)
        p_values.append(min(1.0, len(STATISTICS) * float(fitted_p_values(stats, null).min())))
    drifted = benjamini_hochberg(p_values, fdr)
    return DriftScore(rows=rows, min_rows=min_rows, fdr=fdr, features=tuple(
        FeatureScore(name, float(s[0]), float(s[1]), float(s[2]), p, bool(flag))
        for name, s, p, flag in zip(names, observed, p_values, drifted, strict=True)))
