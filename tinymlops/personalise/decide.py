"""Whether a device's own head replaces the base's last layer: fit, then judge on held-out local data (pure).

The device's labelled data is split (seeded) into a part the head is fitted on and a part neither the fit nor
the choice of `l2` ever sees; the base's accuracy there is the signed model's own output (not a refit), so
"before" is what the device serves today.  The head is used only when its accuracy on that part beats the base's
by at least the policy's `minImprovement`; otherwise the outcome says by how much it fell short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import InvalidDataError, NoLastLayerError
from tinymlops.personalise.head import Features, Head, accuracy, fit, split
from tinymlops.personalise.policy import PersonalisationPolicy

SPLIT_SEED = 0
# The layer read from the graph must give the base's class (within the health check's tolerance) on this share of
# the device's samples: float32 gives all of them; an int8 variant quantizes the layer's product and output.
REPRODUCE_AGREEMENT = 0.98


@dataclass(frozen=True)
class Outcome:
    used: bool
    reason: str
    base_accuracy: float  # on the held-out local samples, the signed model's own outputs
    personal_accuracy: float  # the fitted head's, on the same samples
    train_samples: int
    validation_samples: int
    head: Head  # the fitted head; a device keeps it only when `used`

    @property
    def improvement(self) -> float:
        return self.personal_accuracy - self.base_accuracy


def check_data(x: NDArray[Any], y: NDArray[Any] | None, input_shape: Sequence[object],
               classes: int, *, source: str) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The device's labelled samples, checked against the model's input and classes; InvalidDataError naming
    what does not fit."""
    if y is None:
        raise InvalidDataError(f"{source}: has no array `y`; personalisation fits on labelled samples")
    if x.dtype != np.float32:
        raise InvalidDataError(f"{source}: x is {x.dtype}; the model takes float32")
    expected = tuple(input_shape[1:])
    if x.ndim != len(input_shape) or any(isinstance(want, int) and got != want
                                         for got, want in zip(x.shape[1:], expected, strict=True)):
        raise InvalidDataError(f"{source}: x has shape {x.shape}; the model takes "
                               f"[batch, {', '.join(str(d) for d in expected)}]")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InvalidDataError(f"{source}: y is {y.dtype} {y.shape}, not one integer label per sample")
    if len(y) != len(x):
        raise InvalidDataError(f"{source}: {len(x)} samples in x but {len(y)} labels in y")
    out_of_range = np.flatnonzero((y < 0) | (y >= classes))
    if out_of_range.size:
        first = int(out_of_range[0])
        raise InvalidDataError(f"{source}: y[{first}] = {int(y[first])} is not a class of this model "
                               f"(0..{classes - 1}); {out_of_range.size} label(s) out of range")
    return x, y.astype(np.int64)


def check_reproduces(base: Head, features: Features, base_scores: NDArray[np.float32], *, atol: float = 0.0) -> None:
    """The layer read from the graph must give the base model's classes (NoLastLayerError otherwise).

    A sample agrees when the class the layer picks scores within `atol` (the variant's health-check tolerance) of
    the model's top score: an int8 variant's quantized outputs tie near-equal classes, which the float layer
    tells apart."""
    picked = np.take_along_axis(base_scores, np.argmax(base.scores(features), -1)[:, None], -1)[:, 0]
    agreement = float(np.mean(picked >= base_scores.max(-1) - atol))
    if agreement < REPRODUCE_AGREEMENT:
        raise NoLastLayerError(f"the last layer read from the graph gives the model's class on only "
                               f"{agreement:.1%} of these samples (at least {REPRODUCE_AGREEMENT:.0%} needed)")


def personalise(features: Features, base_scores: NDArray[np.float32], labels: NDArray[np.int64], base: Head,
                policy: PersonalisationPolicy) -> Outcome:
    """Fit a head on part of the device's samples and decide on the rest whether it replaces the base's."""
    if len(labels) < policy.min_samples:
        raise InvalidDataError(f"{len(labels)} labelled samples; personalisation needs at least "
                               f"{policy.min_samples} (policy.personalisation.minSamples)")
    train, held = split(len(labels), policy.validation_fraction, SPLIT_SEED)
    head = fit(features[train], labels[train], base, l2=policy.l2, steps=policy.steps)
    before = accuracy(base_scores[held], labels[held])
    after = accuracy(head.scores(features[held]), labels[held])
    gain = after - before
    if gain > 0 and gain >= policy.min_improvement - 1e-12:
        used, reason = True, (f"local validation accuracy {before:.1%} -> {after:.1%} (+{gain * 100:.1f} points, "
                              f"at least {policy.min_improvement * 100:.1f} required)")
    else:
        used, reason = False, (f"not used: local validation accuracy {before:.1%} -> {after:.1%} "
                               f"({gain * 100:+.1f} points; at least +{policy.min_improvement * 100:.1f} and more "
                               "than 0 required), the base keeps serving")
    return Outcome(used, reason, before, after, len(train), len(held), head)
