"""Small drift fixtures in the pinned formats (a menu's `monitoring` object, a report's `drift` field).

Built here from seeded standard normal data, without the factory or the agent, so the fleet side is
tested on its own; the numbers are whatever these seeds draw, and no test expects a particular one."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from tinymlops.drift import privacy
from tinymlops.drift.merge import Baseline

FEATURES = 4
BINS = 8
CLASSES = 3
CONFIDENCE_EDGES = [0.5, 0.7, 0.9]
MENU_SHA = hashlib.sha256(b"a menu").hexdigest()
VARIANT_BLOB = b"a variant"
VARIANT_SHA = hashlib.sha256(VARIANT_BLOB).hexdigest()


def edges(rng: np.random.Generator, rows: int = 20_000) -> np.ndarray:
    """(BINS - 1, FEATURES) bin edges at quantiles of reference data."""
    return np.quantile(rng.standard_normal((rows, FEATURES)), np.linspace(0, 1, BINS + 1)[1:-1], axis=0)


def histograms(x: np.ndarray, feature_edges: np.ndarray) -> list[list[int]]:
    """Counts of each column of `x` in bins (-inf, e1], (e1, e2], ..., (e_k-1, inf)."""
    return [np.bincount(np.searchsorted(feature_edges[:, f], x[:, f], side="left"), minlength=BINS).tolist()
            for f in range(x.shape[1])]


def outputs(rng: np.random.Generator, rows: int) -> tuple[list[int], list[int]]:
    confidence = np.bincount(np.searchsorted(CONFIDENCE_EDGES, rng.uniform(0.3, 1.0, rows)), minlength=4)
    classes = np.bincount(rng.integers(0, CLASSES, rows), minlength=CLASSES)
    return confidence.tolist(), classes.tolist()


def monitoring(seed: int = 0, rows: int = 20_000) -> tuple[dict[str, Any], np.ndarray]:
    """A menu's monitoring object over seeded N(0, 1) features, and its edges."""
    rng = np.random.default_rng(seed)
    feature_edges = edges(rng, rows)
    x = rng.standard_normal((rows, FEATURES))
    confidence, classes = outputs(rng, rows)
    return {
        "schema": 1, "rows": rows,
        "features": [{"name": f"x[{f}]", "edges": feature_edges[:, f].tolist()} for f in range(FEATURES)],
        "reference": {"features": histograms(x, feature_edges), "confidence": confidence, "classes": classes},
        "confidence_edges": CONFIDENCE_EDGES, "classes": CLASSES, "scores": "probabilities", "outputs": {},
    }, feature_edges


def drift_payload(rng: np.random.Generator, feature_edges: np.ndarray, *, rows: int = 500, shift: float = 0.0,
                  feature: int = 0, revision: int = 1, window: int = 0, epsilon: float | None = None,
                  menu_sha256: str = MENU_SHA, variant_sha256: str = VARIANT_SHA) -> dict[str, Any]:
    """One device window; `shift` moves `feature`'s mean, `epsilon` noises it as a device does (`privacy.release`:
    OpenDP's discrete Laplace noise in numpy, clamped at zero)."""
    x = rng.standard_normal((rows, FEATURES))
    x[:, feature] += shift
    feature_counts = histograms(x, feature_edges)
    confidence, classes = outputs(rng, rows)
    payload: dict[str, Any] = {"menu_sha256": menu_sha256, "revision": revision, "variant_sha256": variant_sha256,
                               "window": window, "rows": rows,
                               "mode": "histograms", "epsilon": None, "features": feature_counts,
                               "confidence": confidence, "classes": classes}
    if epsilon is not None:
        scale = privacy.scale_for(FEATURES + 2, epsilon)

        def noisy(counts: list[int]) -> list[int]:
            return [int(c) for c in privacy.release(rng, counts, scale)]

        payload.update(mode="histograms+dp", epsilon=epsilon, features=[noisy(c) for c in feature_counts],
                       confidence=noisy(confidence), classes=noisy(classes))
    return payload


def menu_bytes(monitoring_object: dict[str, Any]) -> bytes:
    return json.dumps({"version": 1, "variants": [{"id": "fp32", "sha256": VARIANT_SHA}],
                       "monitoring": monitoring_object}).encode()


def baseline(monitoring_object: dict[str, Any]) -> Baseline:
    """The fleet's reference for a menu listing one variant, VARIANT_SHA (the one drift_payload names)."""
    return Baseline.from_monitoring(monitoring_object, menu_sha256=MENU_SHA, variants=[VARIANT_SHA])
