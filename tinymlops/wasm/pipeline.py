"""A variant's pre and post modules, loaded: checked against the signed menu, replayed on golden samples, then run
around the model, in the factory's evaluation and on the device alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import WasmCallError, WasmModuleError
from tinymlops.runners import VariantRunner
from tinymlops.wasm.modules import MODULE_ATOL, describe, verify_module
from tinymlops.wasm.sandbox import Sandbox, compile_module


@dataclass
class ModuleSet:
    """The loaded modules by role ("pre", "post"); a role without one passes values through unchanged."""

    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, entries: Mapping[str, Mapping[str, Any]], blobs: Mapping[str, bytes]) -> ModuleSet:
        """Verify each module's bytes against its signed entry, then compile and instantiate it.

        IntegrityError (digest or size) before anything is compiled; WasmModuleError when the module breaks
        the ABI (imports, exports, memory)."""
        loaded = cls()
        for role, entry in entries.items():
            blob = blobs[role]
            verify_module(blob, entry)
            compiled = compile_module(blob, str(entry["sha256"]), what=describe(entry))
            loaded.sandboxes[role] = Sandbox(compiled, outputs=int(entry["outputs"]))
            loaded.digests[role] = str(entry["sha256"])
        return loaded

    def __bool__(self) -> bool:
        return bool(self.sandboxes)

    def run(self, role: str, values: NDArray[np.float32]) -> NDArray[np.float32]:
        """One sample through the `role` module (unchanged when there is none); WasmCallError when it fails."""
        sandbox = self.sandboxes.get(role)
        return values if sandbox is None else sandbox.process(np.ascontiguousarray(values, dtype=np.float32))

    def run_many(self, role: str, x: NDArray[np.float32]) -> NDArray[np.float32]:
        sandbox = self.sandboxes.get(role)
        return x if sandbox is None else sandbox.process_many(x)

    def check(self, golden: Mapping[str, Mapping[str, Any]]) -> None:
        """Replay each module's golden samples (the variant's `health_check.modules`); WasmModuleError naming the
        module and sample that fails or differs."""
        for role, sandbox in self.sandboxes.items():
            samples = golden.get(role)
            if samples is None:
                raise WasmModuleError(f"{sandbox.compiled.what}: the signed menu has no golden samples for it")
            pairs = zip(samples["inputs"], samples["outputs"], strict=True)
            for index, (given, expected) in enumerate(pairs):
                try:
                    got = sandbox.process(np.asarray(given, dtype=np.float32))
                except WasmCallError as exc:
                    raise WasmModuleError(f"golden sample {index}: {exc}") from exc
                want = np.asarray(expected, dtype=np.float32).reshape(-1)
                diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
                if not diff <= MODULE_ATOL:
                    raise WasmModuleError(f"{sandbox.compiled.what}: golden sample {index} differs by {diff:.3g} "
                                          f"(tolerance {MODULE_ATOL:g})")

    def failures(self) -> Counter[str]:
        """Failed calls since loading, by reason (`WasmCallError.reason`), over all roles."""
        total: Counter[str] = Counter()
        for sandbox in self.sandboxes.values():
            total.update(sandbox.failures)
        return total


@dataclass(frozen=True)
class WithModules:
    """pre → model → post as one runner (the `VariantRunner` interface): what the factory scores and the device
    serves.  `sample_shape`: the model's input shape for one sample (the pre module returns flat values)."""

    runner: VariantRunner
    modules: ModuleSet
    sample_shape: tuple[int, ...]

    @property
    def input_name(self) -> str:
        return self.runner.input_name

    @property
    def output_name(self) -> str:
        return self.runner.output_name

    def one(self, sample: NDArray[np.float32]) -> NDArray[np.float32]:
        model_input = self.modules.run("pre", sample).reshape(self.sample_shape)
        return self.modules.run("post", self.runner.one(model_input))

    def many(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        model_inputs = self.modules.run_many("pre", x).reshape(len(x), *self.sample_shape)
        return self.modules.run_many("post", self.runner.many(model_inputs))

    def latency_ms(self, x: NDArray[np.float32]) -> tuple[float, float]:
        return self.runner.latency_ms(self.modules.run_many("pre", x).reshape(len(x), *self.sample_shape))
