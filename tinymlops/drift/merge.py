"""Merging devices' drift histograms, each checked against the menu's reference first (pure).

A report's `drift` field (docs/interfaces.md) holds one window of one device: counts in the
fixed bins its menu's `monitoring` object defines, for each input feature, the output
confidence and the predicted class.  Histograms over the same bins add up, so a fleet's view of
one revision on one device class is their sum (`Merged`), and the sum of noisy histograms is
as easy to reason about: independent noises add their variances, which `Merged` carries for the
thresholds (`tinymlops.drift.score`).

Devices are not trusted.  `check` refuses, by a reason it names (REASONS, the label the gateway
counts refusals by), a payload whose menu is not the reference's (`unknown-menu`), whose
revision is not the one the device runs (`wrong-revision`), whose histograms do not have the
reference's bins (`wrong-bins`), whose counts are negative, non-finite or not numbers
(`bad-counts`), or that holds more rows than a window can (`too-many-rows`: more than
`max_rows`, or in plain `histograms` mode a histogram whose counts do not add up to `rows`;
with noise, one that exceeds `rows` by more than the noise could explain).  A refused payload
changes nothing.

Noise.  In `histograms+dp` mode each device adds Laplace (or geometric) noise of scale
sensitivity/epsilon to every count of its release.  One row adds one count to each of the
release's histograms (every feature, the confidence, the class), so the release's L1
sensitivity is its number of histograms and epsilon covers the whole release
(`count_variance`).  A device that spends its budget per histogram instead adds less noise
than this assumes, which only makes the thresholds cautious.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from tinymlops.drift.score import FDR, MIN_ROWS, SIMULATIONS, Array, DriftScore, score
from tinymlops.errors import DriftRefusedError

CONFIDENCE, CLASSES = "@confidence", "@class"  # the names the output histograms are scored under
MODES = ("histograms", "histograms+dp")
MAX_WINDOW_ROWS = 1_000_000  # rows one device may count in one window
NOISE_SIGMAS = 8.0  # a noisy histogram's total may exceed `rows` by this many standard deviations of its noise

MALFORMED, UNKNOWN_MENU, WRONG_REVISION = "malformed", "unknown-menu", "wrong-revision"
WRONG_BINS, BAD_COUNTS, TOO_MANY_ROWS, OLD_WINDOW = "wrong-bins", "bad-counts", "too-many-rows", "old-window"
REASONS = (MALFORMED, UNKNOWN_MENU, WRONG_REVISION, WRONG_BINS, BAD_COUNTS, TOO_MANY_ROWS, OLD_WINDOW)


@dataclass(frozen=True)
class Baseline:
    """One menu's reference histograms, in scoring order: the input features, then CONFIDENCE and CLASSES."""

    menu_sha256: str
    names: tuple[str, ...]
    counts: tuple[Array, ...]
    rows: int

    @property
    def features(self) -> int:
        """The input features (the histograms before the two output ones)."""
        return len(self.names) - 2

    @classmethod
    def from_monitoring(cls, monitoring: Any, *, menu_sha256: str) -> Baseline:
        """The menu's `monitoring` object as arrays; ValueError names what is malformed (the menu is signed: a
        malformed one is a factory bug, not a device's lie)."""
        if not isinstance(monitoring, Mapping):
            raise ValueError("monitoring: is not an object")
        features, reference = monitoring.get("features"), monitoring.get("reference")
        if not isinstance(features, list) or not isinstance(reference, Mapping):
            raise ValueError("monitoring: needs a 'features' list and a 'reference' object")
        names = [str(feature.get("name", f"feature[{i}]")) if isinstance(feature, Mapping) else f"feature[{i}]"
                 for i, feature in enumerate(features)]
        counts = [*(reference.get("features") or []), reference.get("confidence"), reference.get("classes")]
        if len(counts) != len(names) + 2:
            raise ValueError(f"monitoring.reference.features: {len(counts) - 2} histograms for {len(names)} features")
        arrays = tuple(_reference_counts(c, f"monitoring.reference[{i}]") for i, c in enumerate(counts))
        for i, feature in enumerate(features):
            edges = feature.get("edges") if isinstance(feature, Mapping) else None
            if not isinstance(edges, list) or len(edges) + 1 != arrays[i].size:
                raise ValueError(f"monitoring.features[{i}].edges: need one edge fewer than the reference's bins")
        rows = int(monitoring.get("rows") or round(float(arrays[0].sum())))
        return cls(menu_sha256, (*names, CONFIDENCE, CLASSES), arrays, rows)


def _reference_counts(raw: Any, where: str) -> Array:
    array = np.asarray(raw if isinstance(raw, list) else [], dtype=np.float64)
    if array.ndim != 1 or array.size < 2 or not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{where}: needs two or more finite counts >= 0")
    return array


def count_variance(epsilon: float, histograms: int) -> float:
    """Variance of the Laplace noise on each count of one release: scale b = histograms / epsilon, variance 2 b^2."""
    scale = histograms / epsilon
    return 2.0 * scale * scale


@dataclass(frozen=True)
class Release:
    """One device's window, checked: its histograms in the baseline's order, and the variance of each count's
    noise (0 without noise)."""

    revision: int
    window: int
    rows: int
    histograms: tuple[Array, ...]
    noise_variance: float


def check(payload: Any, baseline: Baseline, *, revision: int, max_rows: int = MAX_WINDOW_ROWS,
          where: str = "drift") -> Release:
    """`payload` (a report's `drift` object) as a Release, or DriftRefusedError naming the reason and field.

    `revision` is the revision the reporting device runs."""
    if not isinstance(payload, Mapping):
        raise DriftRefusedError(MALFORMED, f"{where}: is not an object")
    if payload.get("menu_sha256") != baseline.menu_sha256:
        raise DriftRefusedError(UNKNOWN_MENU, f"{where}.menu_sha256: {str(payload.get('menu_sha256'))[:80]!r} is "
                                f"not the menu of revision {revision} ({baseline.menu_sha256[:12]}…)")
    if payload.get("revision") != revision:
        raise DriftRefusedError(WRONG_REVISION, f"{where}.revision: {str(payload.get('revision'))[:20]!r} is not "
                                f"the revision the device runs ({revision})")
    mode, window, rows = payload.get("mode"), payload.get("window"), payload.get("rows")
    if mode not in MODES:
        raise DriftRefusedError(MALFORMED, f"{where}.mode: {str(mode)[:40]!r} is not one of {', '.join(MODES)}")
    if not _is_int(window) or window < 0:
        raise DriftRefusedError(MALFORMED, f"{where}.window: {str(window)[:40]!r} is not an integer >= 0")
    if not _is_int(rows) or rows < 0:
        raise DriftRefusedError(BAD_COUNTS, f"{where}.rows: {str(rows)[:40]!r} is not an integer >= 0")
    if rows > max_rows:
        raise DriftRefusedError(TOO_MANY_ROWS, f"{where}.rows: {rows} is more than a window holds ({max_rows})")
    variance = 0.0
    if mode == "histograms+dp":
        epsilon = payload.get("epsilon")
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon < math.inf:
            raise DriftRefusedError(MALFORMED, f"{where}.epsilon: {str(epsilon)[:40]!r} is not a number > 0")
        variance = count_variance(float(epsilon), len(baseline.names))
    features = payload.get("features")
    if not isinstance(features, list) or len(features) != baseline.features:
        found = len(features) if isinstance(features, list) else "no"
        raise DriftRefusedError(WRONG_BINS, f"{where}.features: {found} histograms, the menu has "
                                f"{baseline.features} features")
    raw = [*features, payload.get("confidence"), payload.get("classes")]
    paths = [*(f"{where}.features[{i}]" for i in range(len(features))), f"{where}.confidence", f"{where}.classes"]
    histograms = tuple(_histogram(r, ref.size, path, rows=rows, variance=variance, exact=mode == "histograms")
                       for r, ref, path in zip(raw, baseline.counts, paths, strict=True))
    return Release(revision, window, rows, histograms, variance)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _histogram(raw: Any, bins: int, where: str, *, rows: int, variance: float, exact: bool) -> Array:
    if not isinstance(raw, list) or len(raw) != bins:
        found = len(raw) if isinstance(raw, list) else "no"
        raise DriftRefusedError(WRONG_BINS, f"{where}: {found} bins, the reference has {bins}")
    if not all(isinstance(c, int | float) and not isinstance(c, bool) for c in raw):
        raise DriftRefusedError(BAD_COUNTS, f"{where}: counts must be numbers")
    counts = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise DriftRefusedError(BAD_COUNTS, f"{where}: counts must be finite and >= 0")
    total = float(counts.sum())
    if exact:
        if not np.all(counts == np.floor(counts)):
            raise DriftRefusedError(BAD_COUNTS, f"{where}: counts without noise are integers")
        if total != rows:
            reason = TOO_MANY_ROWS if total > rows else BAD_COUNTS
            raise DriftRefusedError(reason, f"{where}: counts add up to {total:g}, not the window's {rows} rows")
    elif total > rows + NOISE_SIGMAS * math.sqrt(bins * variance) + bins:  # + bins: the device's rounding
        raise DriftRefusedError(TOO_MANY_ROWS, f"{where}: counts add up to {total:g}, more than the window's "
                                f"{rows} rows and its noise allow")
    return counts


@dataclass
class Merged:
    """The sum of checked releases over one baseline, and what the thresholds need to know about it."""

    baseline: Baseline
    counts: list[Array] = field(default_factory=list)
    rows: int = 0
    noise_variance: float = 0.0  # of each merged count
    releases: int = 0  # noisy releases summed
    windows: int = 0  # releases summed, noisy or not

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [np.zeros(reference.size) for reference in self.baseline.counts]

    def add(self, release: Release) -> None:
        for total, counts in zip(self.counts, release.histograms, strict=True):
            total += counts
        self.rows += release.rows
        self.windows += 1
        if release.noise_variance > 0:
            self.noise_variance += release.noise_variance
            self.releases += 1

    def add_merged(self, other: Merged) -> None:
        if other.baseline.menu_sha256 != self.baseline.menu_sha256:
            raise ValueError("only histograms over the same menu's bins add up")
        for total, counts in zip(self.counts, other.counts, strict=True):
            total += counts
        self.rows += other.rows
        self.windows += other.windows
        self.noise_variance += other.noise_variance
        self.releases += other.releases

    def score(self, *, fdr: float = FDR, min_rows: int = MIN_ROWS, simulations: int = SIMULATIONS,
              seed: int = 0) -> DriftScore:
        return score(self.baseline.names, self.baseline.counts, self.counts, rows=self.rows,
                     noise_variance=self.noise_variance, releases=self.releases, fdr=fdr, min_rows=min_rows,
                     simulations=simulations, seed=seed)


def merge(baseline: Baseline, releases: Sequence[Release]) -> Merged:
    merged = Merged(baseline)
    for release in releases:
        merged.add(release)
    return merged
