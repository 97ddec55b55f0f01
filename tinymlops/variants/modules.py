"""The factory's side of pre/post modules (`variants build --pre/--post`, EdgeModel `spec.pre`/`spec.post`).

In process (`build_variants`) the raw data goes through the pre module as it is
loaded.  The pipeline's tasks share files instead: check_source writes the data
artifact already preprocessed (`preprocessed_data`: `x` the model's inputs, `x_raw`
the raw samples they came from), build_variant reads it as any DATA.npz, and
publish_menu takes the golden raw samples back from `x_raw` (`with_raw_samples`).

The same wasm a device will run, run here first: the pre module turns every raw
DATA.npz sample into the model's input, so calibration and the accuracy of every
variant are measured with the real preprocessing; the post module runs over the
base model's outputs on every evaluation sample (it must return one fixed number
of values), and over each variant's golden outputs for its health check.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import WasmCallError, WasmModuleError
from tinymlops.runners import Runner
from tinymlops.store import check_digest, sha256_bytes
from tinymlops.variants.evaluate import HEALTH_SAMPLES
from tinymlops.variants.source import Dataset, SourceModel, resolve_uri, split
from tinymlops.wasm.modules import link, module_entry

if TYPE_CHECKING:  # wasmtime (the `wasm` extra) is imported only for a build with modules
    from tinymlops.wasm.pipeline import ModuleSet


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
        from tinymlops.wasm.pipeline import ModuleSet
        from tinymlops.wasm.sandbox import Sandbox, compile_module

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


# The raw samples in a preprocessed data artifact (the pipeline's check_source writes it).
RAW_ARRAY = "x_raw"


def preprocessed_data(modules: FactoryModules, dataset: Dataset, data: bytes) -> bytes:
    """DATA.npz bytes with `x` replaced by what the pre module makes of it (the model's inputs), `x_raw` holding
    the raw samples; `dataset` is the checked result of `load_dataset(data, ..., preprocess=modules.preprocess)`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    raw = arrays["x"]
    arrays[RAW_ARRAY] = raw
    arrays["x"] = modules.preprocess(raw).reshape(len(raw), *dataset.evaluation.shape[1:])
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def with_raw_samples(dataset: Dataset, data: bytes) -> Dataset:
    """`dataset` (loaded from a preprocessed data artifact) with its raw evaluation samples back."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        raw = npz[RAW_ARRAY] if RAW_ARRAY in npz.files else None
    return dataset if raw is None else replace(dataset, raw_evaluation=split(raw, None).evaluation)


def attach(modules: FactoryModules | None, base: SourceModel, dataset: Dataset,
           variants: Sequence[Mapping[str, Any]], blobs: Mapping[str, bytes],
           ) -> tuple[list[dict[str, Any]], dict[str, bytes], list[dict[str, Any]]]:
    """The built variants linked to the modules, the blobs with the modules' bytes, and the modules' menu entries:
    what `publish` takes (unchanged without modules)."""
    if modules is None:
        return [dict(v) for v in variants], dict(blobs), []
    entries = modules.entries(base, dataset)
    linked = [modules.link(variant, entries, dataset) for variant in variants]
    all_blobs = {**blobs, **{str(entries[role]["sha256"]): blob for role, blob in modules.blobs.items()}}
    return linked, all_blobs, list(entries.values())


def fetch_modules(uris: Mapping[str, str], store_root: Path | None,
                  expected: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """The bytes of the modules at `uris` (by role; empty URIs skipped), read with the source's schemes.

    `expected` (digests by role, from an earlier task) must still hold: the URI may point at new bytes."""
    blobs = {}
    for role, uri in uris.items():
        if not uri:
            continue
        try:
            blob = resolve_uri(uri, store_root)
        except OSError as exc:
            raise WasmModuleError(f"{role} module {uri}: cannot be read ({exc.strerror or exc})") from exc
        if expected is not None:
            check_digest(blob, str(expected.get(role)), what=f"{role} module {uri} (changed during the build)",
                         named_by="check_source's record")
        blobs[role] = blob
    return blobs
