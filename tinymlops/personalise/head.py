"""A last layer as numbers: apply it, fit it on a device's own data, judge it on held-out data (pure numpy).

The fit is multinomial logistic regression started from the base layer and pulled back toward it by an L2
penalty, `mean cross-entropy + l2/2 * (|W - W0|^2 + |b - b0|^2)`: with little data the head stays the base's, with
data that disagrees with the base (a device that only sees some classes, or a label mapping of its own) it moves
as far as the data supports.  The problem is convex, so Nesterov's accelerated gradient with the step 1/L (L
bounds the curvature: half the largest squared singular value of the features over n, plus l2) reaches the
optimum from any start; it runs a fixed number of steps, deterministic for given data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Features = NDArray[np.float32]


@dataclass(frozen=True)
class Head:
    """scores = softmax?(features @ weight + bias)."""

    weight: NDArray[np.float32]  # [features, classes]
    bias: NDArray[np.float32]  # [classes]
    softmax: bool  # the model's output is probabilities (the head keeps its output's meaning)

    @property
    def classes(self) -> int:
        return int(self.weight.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.weight.nbytes + self.bias.nbytes)

    def logits(self, features: Features) -> NDArray[np.float64]:
        return np.asarray(features, np.float64) @ self.weight.astype(np.float64) + self.bias

    def scores(self, features: Features) -> NDArray[np.float32]:
        """What the model would output with this head: probabilities when the base had a Softmax, else logits."""
        logits = self.logits(features)
        return (softmax(logits) if self.softmax else logits).astype(np.float32)


def softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    result: NDArray[np.float64] = shifted / shifted.sum(axis=-1, keepdims=True)
    return result


def fit(features: Features, labels: NDArray[np.int64], base: Head, *, l2: float, steps: int) -> Head:
    """The head minimising mean cross-entropy on (features, labels) plus l2/2 times its squared distance to `base`."""
    x = np.hstack([np.asarray(features, np.float64), np.ones((len(features), 1))])  # the bias as a last weight row
    start = np.vstack([base.weight, base.bias[None]]).astype(np.float64)
    onehot = np.eye(base.classes)[labels]
    n = len(x)
    # The largest eigenvalue of the small (features+1)^2 Gram matrix: the squared spectral norm of x, cheaply.
    lipschitz = 0.5 * float(np.linalg.eigvalsh(x.T @ x)[-1]) / n + l2
    step = 1.0 / lipschitz

    def gradient(w: NDArray[np.float64]) -> NDArray[np.float64]:
        result: NDArray[np.float64] = x.T @ (softmax(x @ w) - onehot) / n + l2 * (w - start)
        return result

    w = previous = start
    momentum = 1.0
    for _ in range(steps):
        following = 0.5 * (1 + np.sqrt(1 + 4 * momentum**2))
        look = w + ((momentum - 1) / following) * (w - previous)
        previous, w = w, look - step * gradient(look)
        momentum = following
    return Head(w[:-1].astype(np.float32), w[-1].astype(np.float32), base.softmax)


def accuracy(scores: NDArray[np.float32], labels: NDArray[np.int64]) -> float:
    return float(np.mean(np.argmax(scores, axis=-1) == labels)) if len(labels) else 0.0


def split(n: int, validation_fraction: float, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(train, validation) indices: a seeded shuffle, at least one sample on each side."""
    order = np.random.default_rng(seed).permutation(n)
    held = min(n - 1, max(1, round(n * validation_fraction)))
    return np.sort(order[held:]), np.sort(order[:held])
