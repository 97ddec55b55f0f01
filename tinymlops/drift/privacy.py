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

Post-processing.  Noisy counts may be negative; each is clamped at 0, so the
report carries non-negative integers.  Post-processing never weakens the
guarantee, but clamping biases small counts upwards: for a true count c and
noise scale b, E[max(0, c + Z)] - c is about (b / 2) e^(-c / b) (b / 2 at c = 0,
negligible once c is a few b).  A fleet-level aggregator summing many devices'
windows should expect that bias in empty bins; the variance of each noisy count is
that of the discrete Laplace, about 2 b^2 (exactly 2 e^(-1/b) / (1 - e^(-1/b))^2).
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

from tinymlops.drift.reference import Counts
from tinymlops.errors import IntegrityError, SpecError
from tinymlops.extras import missing_extra
from tinymlops.store import atomic_write

PRIVACY_MAP_SLACK = 1e-9  # float rounding in OpenDP's map of d_in / scale


def sensitivity(counts: Counts) -> int:
    """L1 sensitivity of a window's histograms to one inference: one per histogram (module docstring)."""
    return len(counts.features) + 2


def noise_scale(counts: Counts, epsilon: float) -> float:
    return sensitivity(counts) / epsilon


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
    released = np.maximum(np.asarray(measurement([int(c) for c in vector]), dtype=np.int64), 0)
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
