"""The Jacobian-augmentation attack the detector is measured against (`tinymlops.protection.extraction`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from tinymlops.protection.extraction import jacobian_augmentation, seed_set
from tinymlops.protection.prada import Monitor


def linear_oracle(seed: int = 0) -> tuple[NDArray[np.float64], NDArray[np.float32], NDArray[np.int64]]:
    """Four classes over [0, 1]^8, as four prototypes: the label is the nearest one (a linear classifier)."""
    rng = np.random.default_rng(seed)
    prototypes = np.eye(4, 8)
    weights = np.hstack([prototypes, np.zeros((4, 0))]) - 0.5 * prototypes.sum(1, keepdims=True) / 8
    x = rng.random((400, 8)).astype(np.float32)
    y = (x @ weights.T).argmax(1)
    assert set(y.tolist()) == {0, 1, 2, 3}
    return weights, x, y


def test_each_round_doubles_the_set_and_every_point_is_asked() -> None:
    weights, x, y = linear_oracle()
    sizes: list[int] = []

    def ask(batch: NDArray[np.float32]) -> NDArray[np.int64]:
        sizes.append(len(batch))
        assert batch.min() >= 0 and batch.max() <= 1  # clipped to the input range
        return np.asarray((batch @ weights.T).argmax(1), dtype=np.int64)

    seeds = seed_set(x, y, 4, np.random.default_rng(0))
    result = jacobian_augmentation(ask, seeds, classes=4, max_queries=60)
    assert sizes == [4, 4, 8, 16, 32] and result.queries == 64 and not result.stopped


def test_the_attack_ends_when_the_oracle_stops_answering() -> None:
    weights, x, y = linear_oracle()
    answered = 0

    def ask(batch: NDArray[np.float32]) -> NDArray[np.int64] | None:
        nonlocal answered
        answered += 1
        return None if answered == 3 else np.asarray((batch @ weights.T).argmax(1), dtype=np.int64)

    result = jacobian_augmentation(ask, seed_set(x, y, 4, np.random.default_rng(1)), classes=4, max_queries=1000)
    assert result.stopped and result.queries == 4 + 4 + 8


def test_the_detector_flags_it_on_the_digits_model_shape() -> None:
    # 64 features, 10 classes, as the digits model: the monitor's alarm stops the thief well before 400 queries.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    weights = np.linalg.lstsq(x, np.eye(10)[y], rcond=None)[0].T  # a linear stand-in oracle for the classifier
    monitor = Monitor()
    asked = 0

    def ask(batch: NDArray[np.float32]) -> NDArray[np.int64] | None:
        nonlocal asked
        labels = np.asarray((batch @ weights.T).argmax(1), dtype=np.int64)
        for query, label in zip(batch, labels, strict=True):
            asked += 1
            if monitor.observe("thief", query, int(label), now=float(asked)) is not None:
                return None
        return labels

    result = jacobian_augmentation(ask, seed_set(x, y, 10, rng), classes=10, max_queries=400)
    assert result.stopped and monitor.alarmed("thief")
