"""Differential privacy for a window's histograms: OpenDP's discrete Laplace noise and a daily budget.

Sensitivity.  The unit of privacy is one inference (one input the device saw).  A
window releases H = F + 2 histograms over the same inferences: one per input
feature (F of them), the output confidence and the predicted class.  Adding or
removing one inference changes exactly one bin of each histogram by exactly 1
(bins partition the real line, so every value lands in one bin; a class is one
bin), so the concatenated count vector moves by 1 in H coordinates: its L1
sensitivity is H.  Noise of scale H / ε on every count (OpenDP's
`make_laplace` on a vector of integers, the discrete Laplace mechanism, whose
privacy map we check gives at most ε at d_in = H) makes the window's release
ε-differentially private (pure DP) with respect to any one inference.  The number
of rows of a window closed on count is exactly `windowInferences`, a public
constant of the fleet's policy, so it says nothing about the inputs.  A window
closed on time (`windowSeconds`) holds however many inferences the device made
in that span: its exact count would be a release of its own, so the report's
`rows` is instead estimated from the noisy counts (`estimated_rows`,
post-processing: no further ε).  What no window hides is when the device was
active: a window is sent only once it counted an inference.

Composition.  Windows are disjoint sets of inferences, so one inference is in one
window and, by parallel composition, costs ε once.  The daily budget
(`BudgetLedger`) bounds instead what the device's user discloses over a day
under the stronger unit of "anything in the day" (e.g. one person's repeated
inputs): by sequential composition the day's releases cost the sum of their ε,
and once `dailyEpsilon` is spent the device withholds further windows until the
next UTC day and says so in its report (`drift_withheld`).  The ledger charges a
window before it is noised, so a crash never releases uncharged noise.

Post-processing.  Noisy counts may be negative; each is clamped at 0 (`clamp`), so
the report carries non-negative integers.  Post-processing never weakens the
guarantee, but clamping biases small counts upwards: with t = e^(-1/b), a true
count c gains E[max(0, c + Z)] - c = t^(c+1) / (1 - t^2) on average (about b / 2
at c = 0, negligible once c is a few b).  The variance of each noisy count is that
of the discrete Laplace, 2 t / (1 - t)^2 (about 2 b^2).

One owner of the mechanism.  The fleet's no-drift simulation (`score.py`) must model
exactly what devices release, clamp included, so this module also holds the
mechanism's distribution in numpy form: `discrete_laplace` draws the noise OpenDP
adds (a difference of two geometric variables; a unit test checks the two agree in
distribution), `release` is the device's release without OpenDP (noise, then `clamp`),
vectorised for simulations, and `clamp_bias` / `noise_variance` are its moments.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tinymlops.drift.reference import Counts
from tinymlops.errors import IntegrityError, SpecError
from tinymlops.extras import missing_extra
from tinymlops.store import atomic_write

PRIVACY_MAP_SLACK = 1e-9  # float rounding in OpenDP's map of d_in / scale


def sensitivity(counts: Counts) -> int:
    """L1 sensitivity of a window's histograms to one inference: one per histogram (module docstring)."""
    return len(counts.features) + 2


def scale_for(histograms: int, epsilon: float) -> float:
    """The noise scale b of each count of a release of `histograms` histograms at `epsilon`: sensitivity / ε."""
    return histograms / epsilon


def noise_scale(counts: Counts, epsilon: float) -> float:
    return scale_for(sensitivity(counts), epsilon)


def clamp(noisy_counts: ArrayLike) -> NDArray[np.int64]:
    """The device's post-processing of noisy counts: negative ones become 0."""
    return np.maximum(np.asarray(noisy_counts, dtype=np.int64), 0)


def discrete_laplace(rng: np.random.Generator, scale: float, size: int | tuple[int, ...]) -> NDArray[np.int64]:
    """Draws of the noise OpenDP's `make_laplace` adds to an integer count: P(z) ∝ e^(-|z| / scale).

    A difference of two independent geometric variables on {0, 1, ...} with P(k) ∝ t^k, t = e^(-1/scale)."""
    success = -math.expm1(-1.0 / scale)  # 1 - t, accurate for large scales
    return np.asarray(rng.geometric(success, size) - rng.geometric(success, size), dtype=np.int64)


def discrete_laplace_sums(rng: np.random.Generator, releases: int, scale: float,
                          size: int | tuple[int, ...]) -> NDArray[np.int64]:
    """Draws of the sum of `releases` independent `discrete_laplace` noises: a sum of n geometric variables is
    negative binomial, so the sum is a difference of two of those (exact, and one draw whatever n is)."""
    if releases <= 0:
        return np.zeros(size, dtype=np.int64)
    success = -math.expm1(-1.0 / scale)
    return np.asarray(rng.negative_binomial(releases, success, size) - rng.negative_binomial(releases, success, size),
                      dtype=np.int64)


def release(rng: np.random.Generator, true_counts: ArrayLike, scale: float) -> NDArray[np.int64]:
    """What a device releases for `true_counts` (any shape), in numpy: discrete Laplace noise, then `clamp`.

    The same distribution as `noisy` (which draws the noise with OpenDP), for simulations only: a device's
    release must come from OpenDP, whose sampler resists floating-point attacks."""
    counts = np.asarray(true_counts, dtype=np.int64)
    return clamp(counts + discrete_laplace(rng, scale, counts.shape))


def noise_variance(scale: float) -> float:
    """The variance of one `discrete_laplace` draw: 2 t / (1 - t)^2 with t = e^(-1/scale) (about 2 scale^2)."""
    t = math.exp(-1.0 / scale)
    return 2.0 * t / (-math.expm1(-1.0 / scale)) ** 2


def clamp_bias(proportions: ArrayLike, rows: int, scale: float) -> NDArray[np.float64]:
    """E[release] - E[true counts] per bin, for a window of `rows` rows drawn from `proportions`.

    A bin's true count is Binomial(rows, p); for a count c, clamping adds E[max(0, -(c + Z))] = t^(c+1) / (1 - t^2)
    (t = e^(-1/scale)), and E[t^c] = (1 - p (1 - t))^rows over the binomial."""
    p = np.asarray(proportions, dtype=np.float64)
    t = math.exp(-1.0 / scale)
    return np.asarray(t * (1.0 - p * (1.0 - t)) ** rows / (1.0 - t * t))


def noisy(counts: Counts, epsilon: float) -> Counts:
    """`counts` with discrete Laplace noise for ε-DP (OpenDP), clamped at 0."""
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise SpecError(f"epsilon: {epsilon!r} is not a number > 0")
    try:
        import opendp.prelude as dp
    except ImportError as exc:
        raise missing_extra("privacy", "opendp", "drift telemetry in histograms+dp mode") from exc
    dp.enable_features("contrib")
    vector = np.concatenate([*counts.features, counts.confidence, counts.classes])
    d_in = sensitivity(counts)
    measurement = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int),
                                    scale=noise_scale(counts, epsilon))
    loss = float(measurement.map(d_in))  # type: ignore[no-untyped-call]
    if loss > epsilon + PRIVACY_MAP_SLACK:
        raise SpecError(f"epsilon: OpenDP's privacy map gives {loss} > {epsilon}")
    released = clamp(measurement([int(c) for c in vector]))
    sizes = np.cumsum([len(h) for h in (*counts.features, counts.confidence)])
    parts = np.split(released, sizes)
    return Counts(tuple(parts[:len(counts.features)]), parts[-2], parts[-1])


def estimated_rows(counts: Counts, most: int) -> int:
    """The rows of a window closed on time, from its noisy counts (post-processing: no further ε).

    Every histogram of a window adds up to its rows before noise, so the mean of the
    H noisy totals estimates them, within 1 to `most` (the policy's windowInferences),
    bounds every such window obeys.  Clamping biases the totals upwards (module
    docstring), so a window of very few rows is estimated high."""
    totals = [float(h.sum()) for h in (*counts.features, counts.confidence, counts.classes)]
    return int(min(max(round(sum(totals) / len(totals)), 1), most))


@dataclass
class BudgetLedger:
    """ε spent per UTC day by one device; refuses a release that would exceed `daily_epsilon`.

    In memory (the simulator) or persisted at `path` (a standalone device: its state directory),
    written atomically before the release it pays for."""

    daily_epsilon: float
    path: Path | None = None
    day: str = ""
    spent: float = 0.0
    _loaded: bool = field(default=False, repr=False)

    def spend(self, epsilon: float, now: float | None = None) -> bool:
        """Charge `epsilon` to today's budget and return True, or return False when it would overspend."""
        self._load()
        today = utc_day(time.time() if now is None else now)
        if today != self.day:
            self.day, self.spent = today, 0.0
        if self.spent + epsilon > self.daily_epsilon + PRIVACY_MAP_SLACK:
            return False
        self.spent += epsilon
        self._save()
        return True

    def _load(self) -> None:
        if self._loaded or self.path is None:
            return
        self._loaded = True
        try:
            raw = json.loads(self.path.read_bytes())
            self.day, self.spent = str(raw["day"]), float(raw["spent"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{self.path}: not a privacy budget ledger ({exc})") from exc

    def _save(self) -> None:
        if self.path is not None:
            atomic_write(self.path, json.dumps(self.to_json()).encode())

    def to_json(self) -> dict[str, Any]:
        return {"day": self.day, "spent": self.spent, "daily_epsilon": self.daily_epsilon}


def utc_day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).date().isoformat()
