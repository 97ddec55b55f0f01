"""Input shifts: what a device class sees when its world changes (pure, seeded).

The simulator serves held-out samples to its devices as their application's
workload; a shift transforms that workload for one device class, as moving the
cameras to a brighter room, a noisier sensor or a rotated mount would.  The
device does not know: it runs the same model and counts the same drift bins,
and only the fleet's drift scores can tell.  Every shift keeps values in the
samples' own range ([0, 1] for the digits' scaled pixels) and is deterministic
for a seed, so a run shows the same inputs every time.

- `brighter`: every value raised by BRIGHTER_BY (clipped at the top of the range);
- `noisier`: Gaussian noise of NOISE_SD added to every value (clipped);
- `rotated`: each image turned by 90 degrees (flat square samples are read as
  square images, as `tinymlops.drift.features` reads them);
- `none`: the samples unchanged (a control).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

SHIFTS = ("brighter", "noisier", "rotated", "none")
BRIGHTER_BY = 0.15
NOISE_SD = 0.1


def shift_inputs(kind: str, samples: NDArray[np.float32], *, seed: int = 0) -> NDArray[np.float32]:
    """`samples` (batch first) as a device class sees them after the shift `kind`."""
    x = np.asarray(samples, dtype=np.float32)
    low, high = float(x.min(initial=0.0)), float(x.max(initial=1.0))
    if kind == "none":
        unchanged: NDArray[np.float32] = x.copy()
        return unchanged
    if kind == "brighter":
        return _clipped(x + BRIGHTER_BY * (high - low), low, high)
    if kind == "noisier":
        noise = np.random.default_rng(seed).normal(0.0, NOISE_SD * (high - low), x.shape)
        return _clipped(x + noise, low, high)
    if kind == "rotated":
        return _rotated(x)
    raise ValueError(f"input shift {kind!r} is not one of {', '.join(SHIFTS)}")


def _clipped(x: NDArray[np.floating], low: float, high: float) -> NDArray[np.float32]:
    return np.asarray(np.clip(x, low, high), dtype=np.float32)


def _rotated(x: NDArray[np.float32]) -> NDArray[np.float32]:
    if x.ndim >= 3:
        return np.ascontiguousarray(np.rot90(x, 1, axes=(-2, -1)))
    side = math.isqrt(x.shape[1]) if x.ndim == 2 else 0
    if x.ndim != 2 or side * side != x.shape[1]:
        raise ValueError(f"rotated: needs images or flat square samples, got shape {x.shape}")
    turned = np.rot90(x.reshape(len(x), side, side), 1, axes=(1, 2))
    return np.ascontiguousarray(turned.reshape(len(x), -1))
