"""The factory's side of pre/post modules (`variants build --pre/--post`, EdgeModel `spec.pre`/`spec.post`).

The same wasm a device will run, run here first: the pre module turns every raw
DATA.npz sample into the model's input, so calibration and the accuracy of every
variant are measured with the real preprocessing; the post module runs over the
base model's outputs on every evaluation sample (it must return one fixed number
of values), and over each variant's golden outputs for its health check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import WasmCallError, WasmModuleError
from tinymlops.runners import Runner
from tinymlops.store import sha256_bytes
from tinymlops.variants.evaluate import HEALTH_SAMPLES
from tinymlops.variants.source import Dataset, SourceModel
from tinymlops.wasm.modules import link, module_entry
from tinymlops.wasm.pipeline import ModuleSet
from tinymlops.wasm.sandbox import Sandbox, compile_module


def _values(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


@dataclass(frozen=True)
class FactoryModules:
    blobs: dict[str, bytes]  # by role
    loaded: ModuleSet

    @classmethod
    def load(cls, pre: bytes | None, post: bytes | None) -> FactoryModules | None:
        """Compile and instantiate the given modules (None when there are none); WasmModuleError naming the one
        that breaks the ABI."""
        blobs = {role: blob for role, blob in (("pre", pre), ("post", post)) if blob is not None}
        if not blobs:
            return None
        loaded = ModuleSet()
        for role, blob in blobs.items():
            digest = sha256_bytes(blob)
            loaded.sandboxes[role] = Sandbox(compile_module(blob, digest, what=f"{role} module {digest[:12]}…"))
            loaded.digests[role] = digest
        return cls(blobs, loaded)

    def preprocess(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """The pre module over every raw sample of DATA.npz; a failing sample fails the build, named."""
        return self._each("pre", x, what="DATA.npz sample")

    def _each(self, role: str, x: NDArray[np.float32], *, what: str) -> NDArray[np.float32]:
        sandbox = self.loaded.sandboxes[role]
        outputs = []
        for index, sample in enumerate(np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)):
            try:
                outputs.append(sandbox.process(sample))
            except WasmCallError as exc:
                raise WasmModuleError(f"{exc} (on {what} {index})") from exc
        counts = sorted({len(out) for out in outputs})
        if len(counts) > 1:
            raise WasmModuleError(f"{sandbox.compiled.what}: returns {counts[0]}..{counts[-1]} values per sample; "
                                  "the ABI asks for one fixed count")
        return np.stack(outputs)

    def entries(self, base: SourceModel, dataset: Dataset) -> dict[str, dict[str, Any]]:
        """The menu entries (by role), with the value counts the modules took and returned on the build's data."""
        entries = {}
        if "pre" in self.blobs:
            assert dataset.raw_evaluation is not None, "load_dataset(preprocess=...) keeps the raw samples"
            entries["pre"] = module_entry("pre", self.blobs["pre"],
                                          inputs=_values(dataset.raw_evaluation.shape[1:]),
                                          outputs=_values(dataset.evaluation.shape[1:]))
        if "post" in self.blobs:
            scores = Runner.load(base.data).many(dataset.evaluation)
            posted = self._each("post", scores, what="the base model's output for evaluation sample")
            entries["post"] = module_entry("post", self.blobs["post"], inputs=_values(scores.shape[1:]),
                                           outputs=posted.shape[1])
        return entries

    def link(self, variant: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]],
             dataset: Dataset) -> dict[str, Any]:
        """`variant` using these modules, with golden samples for each: the raw inputs of its own golden samples
        through pre, and its golden outputs through post."""
        golden: dict[str, dict[str, Any]] = {}
        if "pre" in entries:
            assert dataset.raw_evaluation is not None
            raw = dataset.raw_evaluation[:HEALTH_SAMPLES]
            golden["pre"] = {"inputs": raw.reshape(len(raw), -1).tolist(),
                             "outputs": self._each("pre", raw, what="golden sample").tolist()}
        if "post" in entries:
            outputs = np.asarray(variant["health_check"]["outputs"], dtype=np.float32)
            golden["post"] = {"inputs": outputs.reshape(len(outputs), -1).tolist(),
                              "outputs": self._each("post", outputs, what="golden output").tolist()}
        return link(variant, entries, golden)
