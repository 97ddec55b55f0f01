"""A variant's pre/post modules on the device: verified against the signed menu, instantiated, replayed on their
golden samples, all before the variant may serve; then run around every inference.

A variant names its modules by digest (`tinymlops.wasm.modules`); the agent
fetches their blobs with the variant's and hands them to `DeviceAgent.install`,
which loads them here inside the same try as the model: a module whose digest
does not match, that imports anything, breaks the ABI or fails a golden sample
fails the install, and the previous model keeps serving with its own modules.
A call that traps, loops or returns a wrong count fails that one inference
(counted in the telemetry under its reason); the module is instantiated afresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import IntegrityError

if TYPE_CHECKING:  # wasmtime (the `wasm` extra) is imported only when a variant has modules
    from tinymlops.wasm.pipeline import ModuleSet


@dataclass(frozen=True)
class ModuleBlobs:
    """What the caller fetched for a variant's modules: the signed menu's entries and the bytes, by role."""

    entries: Mapping[str, Mapping[str, Any]]
    blobs: Mapping[str, bytes]


@dataclass(frozen=True)
class DeviceModules:
    """The loaded modules of the active variant, and the model's input shape for one sample."""

    loaded: ModuleSet
    sample_shape: tuple[int, ...]

    @property
    def digests(self) -> dict[str, str]:
        return dict(self.loaded.digests)

    def pre(self, sample: NDArray[np.float32]) -> NDArray[np.float32]:
        """Raw input → the model's input (WasmCallError when the call fails)."""
        if "pre" not in self.loaded.sandboxes:
            return sample
        return self.loaded.run("pre", sample).reshape(self.sample_shape)

    def post(self, output: NDArray[np.float32]) -> NDArray[np.float32]:
        """The model's output (as the output policy lets the client see it) → what the application gets."""
        return self.loaded.run("post", np.asarray(output, dtype=np.float32).reshape(-1))


def load_modules(variant: Mapping[str, Any], given: ModuleBlobs | None) -> DeviceModules | None:
    """The variant's modules, verified, instantiated and checked on their golden samples; None when it has none.

    IntegrityError when a module the variant names was not given or does not match its signed digest,
    WasmModuleError when one breaks the ABI or a golden sample, MissingExtraError without wasmtime."""
    named = dict(variant.get("modules") or {})
    if not named:
        return None
    if given is None or set(given.entries) != set(named) or any(
            str(given.entries[role]["sha256"]) != digest for role, digest in named.items()):
        raise IntegrityError(f"variant {variant['id']}: its {', '.join(sorted(named))} module(s) were not fetched")
    from tinymlops.wasm.pipeline import ModuleSet

    loaded = ModuleSet.load(given.entries, given.blobs)
    check = variant["health_check"]
    loaded.check(check.get("modules") or {})
    sample_shape = np.asarray(check["inputs"][0], dtype=np.float32).shape
    return DeviceModules(loaded, tuple(int(dim) for dim in sample_shape))


def same_modules(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two menu entries run with the same modules (the same model bytes with other modules is a change)."""
    return dict(a.get("modules") or {}) == dict(b.get("modules") or {})
