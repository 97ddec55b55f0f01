"""Merging devices' drift histograms, each checked against the menu's reference first (pure).

A report's `drift` field (docs/interfaces.md) holds one window of one device: counts in the
fixed bins its menu's `monitoring` object defines, for each input feature, the output
confidence and the predicted class.  Histograms over the same bins add up, so a fleet's view of
one revision on one device class is their sum (`Merged`), and the sum of noisy histograms is
as easy to reason about: independent noises add their variances, which `Merged` carries for the
thresholds (`tinymlops.drift.score`).

Devices are not trusted.  `check` refuses, by a reason it names (REASONS, the label the gateway
counts refusals by), a payload whose menu is not the reference's (`unknown-menu`), whose
revision is not the one the device runs (`wrong-revision`), that names a variant the menu does
not list (`unknown-variant`), whose histograms do not have the
reference's bins (`wrong-bins`), whose counts are negative, non-finite or not numbers
(`bad-counts`), or that holds more rows than a window can (`too-many-rows`: more than
`max_rows`, or in plain `histograms` mode a histogram whose counts do not add up to `rows`;
with noise, one that exceeds `rows` by more than the noise could explain).  A refused payload
changes nothing.

The reference.  `Baseline` is a menu's `Monitoring` (`reference.py` parses and checks the
`monitoring` object, for the device and the fleet alike) named by the menu's digest, with its
histograms in scoring order and the digests of the variants the menu lists.  Input features do
not depend on the variant a device runs, so their reference is the menu's `reference`.  Outputs
do: each window names the variant that counted it, `Merged` keeps the rows each variant counted,
and the output histograms' reference is the mixture sum_v (rows_v / rows) * p_v of those
variants' own reference proportions p_v (`monitoring.outputs`; the base's `reference` for a
variant the factory could not run on its host: a C source, a TVM library for another
architecture), scaled to the reference's rows (every variant ran on the same reference data).
A class running int8 is compared with int8's outputs, a mixed class with the same mix.

Noise.  In `histograms+dp` mode each device adds discrete Laplace noise of scale
sensitivity/epsilon to every count of its release and clamps at zero (`privacy.py`, which
owns the mechanism).  One row adds one count to each of the release's histograms (every
feature, the confidence, the class), so the release's L1 sensitivity is its number of
histograms and epsilon covers the whole release.  `Merged` keeps, per noise scale, how many
releases and rows it summed (`score.Noise`), which the no-drift simulation needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeGuard

import numpy as np

from tinymlops.drift.privacy import noise_variance, scale_for
from tinymlops.drift.reference import Monitoring, variant_sha256
from tinymlops.drift.score import FDR, MIN_ROWS, SIMULATIONS, Array, DriftScore, Noise, score
from tinymlops.errors import DriftRefusedError, IntegrityError

CONFIDENCE, CLASSES = "@confidence", "@class"  # the names the output histograms are scored under
MODES = ("histograms", "histograms+dp")
MAX_WINDOW_ROWS = 1_000_000  # rows one device may count in one window
NOISE_SIGMAS = 8.0  # a noisy histogram's total may exceed `rows` by this many standard deviations of its noise

MALFORMED, UNKNOWN_MENU, WRONG_REVISION = "malformed", "unknown-menu", "wrong-revision"
WRONG_BINS, BAD_COUNTS, TOO_MANY_ROWS, OLD_WINDOW = "wrong-bins", "bad-counts", "too-many-rows", "old-window"
UNKNOWN_VARIANT = "unknown-variant"
REASONS = (MALFORMED, UNKNOWN_MENU, WRONG_REVISION, UNKNOWN_VARIANT, WRONG_BINS, BAD_COUNTS, TOO_MANY_ROWS,
           OLD_WINDOW)


@dataclass(frozen=True)
class Baseline:
    """One menu's reference, named by the menu's digest; its histograms in scoring order: the input features,
    then CONFIDENCE and CLASSES; and the variants the menu lists (by `variant_sha256`)."""

    menu_sha256: str
    monitoring: Monitoring
    variants: frozenset[str]

    @cached_property
    def names(self) -> tuple[str, ...]:
        return (*(f.name for f in self.monitoring.features), CONFIDENCE, CLASSES)

    @cached_property
    def counts(self) -> tuple[Array, ...]:
        reference = self.monitoring.reference
        return tuple(np.asarray(c, dtype=np.float64) for c in (*reference.features, reference.confidence,
                                                               reference.classes))

    @property
    def rows(self) -> int:
        return self.monitoring.rows

    @cached_property
    def _outputs(self) -> tuple[tuple[str, ...], Array, Array]:
        """The listed variants in order, and their confidence and class reference counts as matrices (one row per
        variant; the base's counts for a variant without its own)."""
        order = tuple(sorted(self.variants))
        reference = self.monitoring.reference
        own = self.monitoring.outputs
        confidence = np.array([own[v].confidence if v in own else reference.confidence for v in order],
                              dtype=np.float64).reshape(len(order), -1)
        classes = np.array([own[v].classes if v in own else reference.classes for v in order],
                           dtype=np.float64).reshape(len(order), -1)
        return order, confidence, classes

    def reference_for(self, variant_rows: Mapping[str, int]) -> tuple[Array, ...]:
        """The reference histograms for live histograms counted by `variant_rows` (variant -> rows): the input
        features' as they are, the outputs' the variants' references mixed by their share of the rows (the
        base's alone when no rows were counted)."""
        total = sum(variant_rows.values())
        if total <= 0:
            return self.counts
        order, confidence, classes = self._outputs
        weights = np.array([variant_rows.get(v, 0) for v in order], dtype=np.float64) / total
        return (*self.counts[:self.features], weights @ confidence, weights @ classes)

    @property
    def features(self) -> int:
        """The input features (the histograms before the two output ones)."""
        return len(self.monitoring.features)

    @classmethod
    def from_monitoring(cls, monitoring: Any, *, menu_sha256: str, variants: Iterable[str]) -> Baseline:
        """The menu's `monitoring` object (`Monitoring.from_json`: IntegrityError names what is malformed; the
        menu is signed, so a malformed one is a factory bug, not a device's lie) and its variants' digests."""
        return cls(menu_sha256, Monitoring.from_json(monitoring), frozenset(variants))

    @classmethod
    def from_menu(cls, menu: Mapping[str, Any], *, menu_sha256: str) -> Baseline:
        """A verified menu's reference: its `monitoring` and the variants it lists."""
        try:
            variants = [variant_sha256(entry) for entry in menu.get("variants") or ()]
        except (KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"menu {menu_sha256[:12]}…: a variant entry has no sha256 ({exc})") from exc
        return cls.from_monitoring(menu.get("monitoring"), menu_sha256=menu_sha256, variants=variants)


def count_variance(epsilon: float, histograms: int) -> float:
    """Variance of the noise on each count of one release of `histograms` histograms at `epsilon`."""
    return noise_variance(scale_for(histograms, epsilon))


@dataclass(frozen=True)
class Release:
    """One device's window, checked: its histograms in the baseline's order, and the variance of each count's
    noise."""

    revision: int
    variant_sha256: str  # the variant that counted the window (one the menu lists)
    window: int
    rows: int
    histograms: tuple[Array, ...]
    noise_scale: float  # of each count's discrete Laplace noise; 0 without noise

    @property
    def noise_variance(self) -> float:
        return noise_variance(self.noise_scale) if self.noise_scale else 0.0


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
    variant = payload.get("variant_sha256")
    if variant not in baseline.variants:
        raise DriftRefusedError(UNKNOWN_VARIANT, f"{where}.variant_sha256: {str(variant)[:80]!r} is not a variant "
                                f"of the menu of revision {revision} ({baseline.menu_sha256[:12]}…)")
    mode, window, rows = payload.get("mode"), payload.get("window"), payload.get("rows")
    if mode not in MODES:
        raise DriftRefusedError(MALFORMED, f"{where}.mode: {str(mode)[:40]!r} is not one of {', '.join(MODES)}")
    if not _is_int(window) or window < 0:
        raise DriftRefusedError(MALFORMED, f"{where}.window: {str(window)[:40]!r} is not an integer >= 0")
    if not _is_int(rows) or rows < 0:
        raise DriftRefusedError(BAD_COUNTS, f"{where}.rows: {str(rows)[:40]!r} is not an integer >= 0")
    if rows > max_rows:
        raise DriftRefusedError(TOO_MANY_ROWS, f"{where}.rows: {rows} is more than a window holds ({max_rows})")
    scale = variance = 0.0
    if mode == "histograms+dp":
        epsilon = payload.get("epsilon")
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon < math.inf:
            raise DriftRefusedError(MALFORMED, f"{where}.epsilon: {str(epsilon)[:40]!r} is not a number > 0")
        scale = scale_for(len(baseline.names), float(epsilon))
        variance = noise_variance(scale)
    features = payload.get("features")
    if not isinstance(features, list) or len(features) != baseline.features:
        found = len(features) if isinstance(features, list) else "no"
        raise DriftRefusedError(WRONG_BINS, f"{where}.features: {found} histograms, the menu has "
                                f"{baseline.features} features")
    raw = [*features, payload.get("confidence"), payload.get("classes")]
    paths = [*(f"{where}.features[{i}]" for i in range(len(features))), f"{where}.confidence", f"{where}.classes"]
    exact = mode == "histograms"
    histograms = _all_histograms(raw, baseline, rows=rows, variance=variance, exact=exact)
    if histograms is None:  # something is wrong: find the first histogram at fault, by name
        histograms = tuple(_histogram(r, ref.size, path, rows=rows, variance=variance, exact=exact)
                           for r, ref, path in zip(raw, baseline.counts, paths, strict=True))
    return Release(revision, str(variant), window, rows, histograms, scale)


def _all_histograms(raw: list[Any], baseline: Baseline, *, rows: int, variance: float,
                    exact: bool) -> tuple[Array, ...] | None:
    """Every histogram at once when all pass `_histogram`'s checks (one numpy pass: the gateway's hot path), else
    None.  Exactly `_histogram`'s rules, which name the fault."""
    sizes = [ref.size for ref in baseline.counts]
    if not all(isinstance(r, list) and len(r) == size for r, size in zip(raw, sizes, strict=True)):
        return None
    flat = [c for histogram in raw for c in histogram]
    if not all(type(c) is int or type(c) is float for c in flat):  # exact types: no bool; others take the slow path
        return None
    counts = np.asarray(flat, dtype=np.float64)
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        return None
    starts = np.cumsum([0, *sizes[:-1]])
    totals = np.add.reduceat(counts, starts)
    if exact:
        if not np.all(counts == np.floor(counts)) or np.any(totals != rows):
            return None
    elif np.any(totals > rows + NOISE_SIGMAS * np.sqrt(np.asarray(sizes) * variance) + np.asarray(sizes)):
        return None
    return tuple(np.split(counts, starts[1:]))


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
    windows: int = 0  # releases summed, noisy or not
    noise: dict[float, tuple[int, int]] = field(default_factory=dict)  # noise scale -> (noisy releases, their rows)
    variant_rows: dict[str, int] = field(default_factory=dict)  # variant_sha256 -> the rows its windows counted

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [np.zeros(reference.size) for reference in self.baseline.counts]

    @property
    def releases(self) -> int:
        """Noisy releases summed."""
        return sum(releases for releases, _ in self.noise.values())

    @property
    def noise_variance(self) -> float:
        """Of each merged count's noise: the releases' variances add up."""
        return sum(n.variance for n in self.noises())

    def noises(self) -> tuple[Noise, ...]:
        return tuple(Noise(releases, rows, scale) for scale, (releases, rows) in sorted(self.noise.items()))

    def add(self, release: Release) -> None:
        for total, counts in zip(self.counts, release.histograms, strict=True):
            total += counts
        self.rows += release.rows
        self.windows += 1
        self.variant_rows[release.variant_sha256] = self.variant_rows.get(release.variant_sha256, 0) + release.rows
        if release.noise_scale > 0:
            self._add_noise(release.noise_scale, 1, release.rows)

    def add_merged(self, other: Merged) -> None:
        if other.baseline.menu_sha256 != self.baseline.menu_sha256:
            raise ValueError("only histograms over the same menu's bins add up")
        for total, counts in zip(self.counts, other.counts, strict=True):
            total += counts
        self.rows += other.rows
        self.windows += other.windows
        for scale, (releases, rows) in other.noise.items():
            self._add_noise(scale, releases, rows)
        for variant, rows in other.variant_rows.items():
            self.variant_rows[variant] = self.variant_rows.get(variant, 0) + rows

    def _add_noise(self, scale: float, releases: int, rows: int) -> None:
        before = self.noise.get(scale, (0, 0))
        self.noise[scale] = (before[0] + releases, before[1] + rows)

    def score(self, *, fdr: float = FDR, min_rows: int = MIN_ROWS, simulations: int = SIMULATIONS,
              seed: int = 0) -> DriftScore:
        """The verdict against the reference of the variants that counted these histograms
        (`Baseline.reference_for`)."""
        return score(self.baseline.names, self.baseline.reference_for(self.variant_rows), self.counts,
                     rows=self.rows, noise=self.noises(),
                     fdr=fdr, min_rows=min_rows, simulations=simulations, seed=seed)


def merge(baseline: Baseline, releases: Sequence[Release]) -> Merged:
    merged = Merged(baseline)
    for release in releases:
        merged.add(release)
    return merged
