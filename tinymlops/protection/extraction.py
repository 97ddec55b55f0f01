"""The extraction attack the detector is measured against: Jacobian-based dataset augmentation (Papernot et al.
2017), as a thief with query access to a device runs it.  Pure numpy; the oracle is a callable.

Ten seed images (one per class) are labelled by the oracle; a substitute (softmax regression, plain gradient
descent on the oracle's labels) is fitted after each round, and every point of the set moves by
λ·sign(∇ₓ F_sub[O(x)]) (clipped to the input range) to make the next round's queries, all of which are asked.
For a softmax regression ∇ₓ of the label's logit is that label's weight row, so no autograd is needed.

`benchmarks/prada.py` measures the detector with it and `tinymlops demo --scenario protect` runs it against a
device; both ask through `ask`, which answers labels, or None once the thief is stopped (flagged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# Answers a batch of queries with the oracle's labels, or None: the oracle stopped answering (the attack ends).
Oracle = Callable[[NDArray[np.float32]], NDArray[np.int64] | None]
SUBSTITUTE_STEPS = 200
SUBSTITUTE_RATE = 0.5


@dataclass(frozen=True)
class AttackResult:
    queries: int  # points handed to the oracle, seeds included (one that stopped mid-batch answered fewer)
    stopped: bool  # the oracle stopped answering (None) before `max_queries`


def seed_set(x: NDArray[np.float32], y: NDArray[np.int64], classes: int,
             rng: np.random.Generator) -> NDArray[np.float32]:
    """One image per class, drawn from the thief's few labelled samples."""
    return np.stack([x[rng.choice(np.flatnonzero(y == k))] for k in range(classes)]).astype(np.float32)


def jacobian_augmentation(ask: Oracle, seeds: NDArray[np.float32], *, classes: int, lam: float = 0.1,
                          max_queries: int = 400) -> AttackResult:
    """Run the attack from `seeds` until `max_queries` are asked or `ask` answers None."""
    known = seeds.astype(np.float32)
    labels = ask(known)
    asked = len(known)
    weights, bias = np.zeros((classes, known.shape[1])), np.zeros(classes)
    while labels is not None and asked < max_queries:
        weights, bias = _fit(known, labels, weights, bias)
        new = np.clip(known + lam * np.sign(weights[labels]), 0, 1).astype(np.float32)
        new_labels = ask(new)
        asked += len(new)
        if new_labels is None:
            labels = None
            break
        known, labels = np.concatenate([known, new]), np.concatenate([labels, new_labels])
    return AttackResult(queries=asked, stopped=labels is None)


def _fit(x: NDArray[np.float32], labels: NDArray[np.int64], weights: NDArray[np.float64], bias: NDArray[np.float64],
         ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The substitute: softmax regression on the oracle's labels, gradient descent from where it was."""
    weights, bias = weights.copy(), bias.copy()
    for _ in range(SUBSTITUTE_STEPS):
        z = x @ weights.T + bias
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(x)), labels] -= 1
        weights -= SUBSTITUTE_RATE * (p.T @ x) / len(x)
        bias -= SUBSTITUTE_RATE * p.mean(0)
    return weights, bias
