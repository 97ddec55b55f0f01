"""TVM compilation as a variant transform, and the scoring of compiled variants.

The compiler itself lives in `tvm.py`; this module fits it into the factory:
a `TvmCompile` step (fp32 ONNX in, a target's artifact out) and
`evaluate_compiled`, which scores an artifact with the TVM runtime.  A host
artifact is loaded and timed as it is; one built for another architecture
cannot run here, so its numerics are checked through the same module built
for this host, and its latency is left unknown rather than guessed.
"""

from __future__ import annotations

import platform
from typing import Any

from tinymlops.errors import UnsupportedOperatorError
from tinymlops.variants import tvm
from tinymlops.variants.evaluate import Evaluation, Runner, evaluate
from tinymlops.variants.source import Dataset, SourceModel
from tinymlops.variants.transforms import Transform

FORMAT_RUNTIMES = {"tvm-lib": "tvm", "c-source": "c"}
HOST_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())


class TvmCompile(Transform):
    """The fp32 graph compiled by Apache TVM (relax ONNX frontend) for one target architecture."""

    precision = "fp32"
    name = "tvm_compile"
    health_atol = 1e-4

    def __init__(self, target: str) -> None:
        self.target = target
        self.spec = tvm.target_spec(target)

    @property
    def format(self) -> str:
        return self.spec.format

    @property
    def params(self) -> dict[str, Any]:
        return {"target": self.target, "tvm_target": self.spec.tvm_target, "format": self.spec.format}

    def check_supported(self, model: bytes, *, variant_id: str) -> None:
        missing = tvm.unsupported_operators(model, self.target)
        if missing:
            raise UnsupportedOperatorError(
                f"variant {variant_id}: TVM cannot compile operator(s) {', '.join(missing)} for {self.target}"
            )

    def apply(self, model: bytes, calibration: Any, input_name: str) -> bytes:
        return tvm.compile_onnx(model, self.target)


def evaluate_compiled(spec: Any, base: SourceModel, dataset: Dataset, blob: bytes) -> Evaluation:
    """Score a TVM artifact: on this host directly, otherwise through the same module compiled for the host."""
    target = str(spec.target)
    output_name = Runner.load(base.data).output_name  # the scores tensor, as onnxruntime names it
    on_host = tvm.target_spec(target).arch == HOST_ARCH and spec.format == "tvm-lib"
    artifact = blob if on_host else tvm.compile_onnx(base.data, HOST_ARCH)
    runner = tvm.TvmRunner.load(artifact, input_name=base.input_name, output_name=output_name)
    result = evaluate(base.data, blob, dataset, health_atol=spec.health_atol, runner=runner, graph=base.data,
                      measure_latency=on_host, runtime=FORMAT_RUNTIMES[spec.format])
    result.requirements["arch"] = [tvm.target_spec(target).arch]
    if not on_host:
        result.metrics["evaluated_on"] = f"the same module compiled for {HOST_ARCH} (TVM runtime, 1 thread)"
    result.metrics["runtime"] = "tvm"
    return result
