"""Non-IID shards: how the simulator deals a data set out to its devices, by device class.

Each device class draws its own label mix from a Dirichlet distribution (small `alpha`: a few labels dominate
one class's devices, as the digits one camera model sees differ from another's); the class's samples are then
split evenly among its devices.  Pure numpy with a seed, so a run is repeatable on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import SpecError


def class_label_mix(labels: int, classes: Sequence[str], *, alpha: float, seed: int) -> dict[str, NDArray[np.float64]]:
    """Per device class, the share of each label its devices see (each row sums to 1)."""
    if alpha <= 0:
        raise SpecError(f"alpha: must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    return {name: rng.dirichlet(np.full(labels, alpha)) for name in dict.fromkeys(classes)}


def deal(y: NDArray[np.int64], device_classes: Sequence[str], *, alpha: float, seed: int) -> list[NDArray[np.int64]]:
    """Indices into `y` for each device (`device_classes[i]` is device i's class), every sample dealt once.

    Each label's samples go to the device classes in proportion to how much of that label each class sees;
    within a class they are dealt round-robin, so its devices get shards of equal size (within one sample)."""
    if not len(device_classes):
        raise SpecError("devices: no device to deal shards to")
    labels = int(y.max()) + 1
    mix = class_label_mix(labels, device_classes, alpha=alpha, seed=seed)
    names = list(mix)
    members = {name: [i for i, c in enumerate(device_classes) if c == name] for name in names}
    weights = np.stack([mix[name] for name in names])  # [classes, labels]
    weights = weights / weights.sum(axis=0, keepdims=True)
    rng = np.random.default_rng(seed + 1)
    per_class: dict[str, list[int]] = {name: [] for name in names}
    for label in range(labels):
        indices = rng.permutation(np.flatnonzero(y == label))
        cuts = np.round(np.cumsum(weights[:, label]) * len(indices)).astype(int)
        for name, part in zip(names, np.split(indices, cuts[:-1]), strict=True):
            per_class[name] += part.tolist()
    shards: list[list[int]] = [[] for _ in device_classes]
    for name in names:
        mine = rng.permutation(per_class[name])
        for n, index in enumerate(mine):
            shards[members[name][n % len(members[name])]].append(int(index))
    return [np.asarray(sorted(shard), dtype=np.int64) for shard in shards]
