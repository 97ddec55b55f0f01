"""The federated sample: a weak digits model from a small slice, and the rest dealt to device classes, non-IID.

What the demo and the benchmark start from.  The weak model is the sample model's graph (tinymlops.model.digits)
trained on `slice_size` images only; the other training images become the devices' shards (each device class
sees its own label mix, `tinymlops.federated.shards`), and the held-out split, tagged with a device class per
image drawn from the same mixes, is what promotion scores per class.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tinymlops.federated.shards import class_label_mix, deal
from tinymlops.model.digits import HIDDEN_LAYERS, classifier_to_onnx, digits_split

Shard = tuple[NDArray[np.float32], NDArray[np.int64]]


@dataclass(frozen=True)
class FederatedSample:
    weak_model: bytes
    shards: list[Shard]  # one per device, in the order of the device classes given
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    groups: NDArray[np.str_]  # the device class each held-out image stands for


def held_out_groups(y: NDArray[np.int64], classes: Sequence[str], *, alpha: float, seed: int) -> NDArray[np.str_]:
    """A device class for each held-out image, drawn with the probability that class sees the image's label."""
    mix = class_label_mix(int(y.max()) + 1, classes, alpha=alpha, seed=seed)
    names = list(mix)
    weights = np.stack([mix[name] for name in names])
    weights = weights / weights.sum(axis=0, keepdims=True)
    rng = np.random.default_rng(seed + 2)
    return np.asarray([names[rng.choice(len(names), p=weights[:, label])] for label in y.tolist()])


def federated_sample(device_classes: Sequence[str], *, slice_size: int = 60, alpha: float = 0.5,
                     seed: int = 0) -> FederatedSample:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = digits_split()
    order = np.random.default_rng(seed).permutation(len(y_train))
    weak, rest = order[:slice_size], order[slice_size:]
    classifier = MLPClassifier(hidden_layer_sizes=HIDDEN_LAYERS, random_state=seed, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # weak on purpose: few images, few iterations
        classifier.fit(x_train[weak], y_train[weak])
    model = classifier_to_onnx(classifier).SerializeToString()
    x_rest, y_rest = x_train[rest], y_train[rest]
    shards = [(x_rest[i], y_rest[i]) for i in deal(y_rest, device_classes, alpha=alpha, seed=seed)]
    groups = held_out_groups(y_test, device_classes, alpha=alpha, seed=seed)
    return FederatedSample(model, shards, x_test, y_test, groups)
