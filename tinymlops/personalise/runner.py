"""A personalised model: the verified base, run up to its last layer's input, then the device's own head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tinymlops.personalise.graph import LastLayer, expose
from tinymlops.personalise.head import Head
from tinymlops.runners import Runner, open_session


@dataclass(frozen=True)
class Personalised:
    """The device's head bound to the base it was fitted on: the variant's digest and the rollout revision.

    `base` runs the base model's own graph with one more output (the last layer's input), so its scores output
    is the signed model's, which the health check compares with the menu's golden samples."""

    variant_sha256: str
    revision: int
    layer: LastLayer
    head: Head
    base: Runner

    @classmethod
    def load(cls, model: bytes, layer: LastLayer, head: Head, *, variant_sha256: str, revision: int) -> Personalised:
        session = open_session(expose(model, [layer.features]))
        first = session.get_inputs()[0]
        runner = Runner(session, str(first.name), layer.output, isinstance(first.shape[0], int))
        return cls(variant_sha256, revision, layer, head, runner)

    def applies_to(self, variant_sha256: str, revision: int) -> bool:
        """Whether this head was fitted on these bytes in this revision (a new variant or revision: not)."""
        return self.variant_sha256 == variant_sha256 and self.revision == revision

    def run(self, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(the base's scores, the last layer's input) for a batch."""
        names = [self.base.output_name, self.layer.features]
        if self.base.fixed_batch:
            rows = [self.base.session.run(names, {self.base.input_name: sample[None]}) for sample in x]
            return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        scores, features = self.base.session.run(names, {self.base.input_name: x})
        return scores, features

    def one(self, sample: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(the base's output, the personalised output) for one sample."""
        scores, features = self.run(sample[None])
        return scores[0], self.head.scores(features)[0]
