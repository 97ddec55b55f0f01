"""TVM compilation as a variant transform, and the scoring of compiled variants.

The compiler itself lives in `tvm.py`; this module fits it into the factory:
a `TvmCompile` step (fp32 ONNX in, a target's artifact out) and
`evaluate_compiled`, which scores an artifact with the TVM runtime.  A host
artifact is loaded and timed as it is; one built for another architecture
cannot run here, so its numerics are checked through the same module built
for this host, and its latency is left unknown rather than guessed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from tinymlops.errors import UnsupportedOperatorError
from tinymlops.variants import tvm
from tinymlops.variants.evaluate import Evaluation, Runner, evaluate
from tinymlops.variants.source import Dataset, SourceModel
from tinymlops.variants.transforms import Transform
from tinymlops.variants.tvm_tune import Tuning, TuningRecord

FORMAT_RUNTIMES = {"tvm-lib": "tvm", "c-source": "c"}
HOST_ARCH = tvm.HOST_ARCH


class TvmCompile(Transform):
    """The fp32 graph compiled by Apache TVM (relax ONNX frontend) for one target architecture."""

    precision = "fp32"
    name = "tvm_compile"
    health_atol = 1e-4

    def __init__(self, target: str, tuning: Tuning | None = None, tuning_dir: Path | None = None) -> None:
        """`tuning`: a MetaSchedule budget, used where the target can be tuned here (`tvm.tunable`); its
        database is cached under `tuning_dir` (a temporary directory per build without one)."""
        self.target = target
        self.spec = tvm.target_spec(target)
        self.tuning = tuning if tuning is not None and tvm.tunable(target) else None
        self.asked_tuning = tuning
        self.tuning_dir = tuning_dir
        self.record: TuningRecord | None = None

    @property
    def format(self) -> str:
        return self.spec.format

    @property
    def params(self) -> dict[str, Any]:
        params = {"target": self.target, "tvm_target": self.spec.tvm_target, "format": self.spec.format}
        if self.tuning is not None:  # a tuned build is another artifact: part of the variant cache key
            params["tuning"] = self.tuning.params
        return params

    @property
    def cpu_features(self) -> list[str] | None:
        """What a tuned build needs of the device's CPU (built for this machine's; see `tvm.tuning_target`)."""
        return tvm.tuned_cpu_features(self.target) if self.tuning is not None else None

    @property
    def tuning_note(self) -> dict[str, Any] | str | None:
        """What the menu says about tuning: the run's record, or why a budget that was given went unused."""
        if self.record is not None:
            return dataclasses.asdict(self.record)
        if self.tuning is not None:  # the tuned artifact came from the variant cache: nothing was tuned now
            return {**self.tuning.params, "from_variant_cache": True}
        if self.asked_tuning is not None:
            return f"untuned: MetaSchedule measures on the build machine, which cannot run {self.target}"
        return None

    def check_supported(self, model: bytes, *, variant_id: str) -> None:
        missing = tvm.unsupported_operators(model, self.target)
        if missing:
            raise UnsupportedOperatorError(
                f"variant {variant_id}: TVM cannot compile operator(s) {', '.join(missing)} for {self.target}"
            )
        if self.spec.format == "c-source":  # measured on the emulated board: no toolchain, no variant
            from tinymlops.variants.mcu.boards import board_for
            from tinymlops.variants.mcu.firmware import find_toolchain

            find_toolchain(board_for(self.target))
        if self.tuning is not None:
            from tinymlops.variants.tvm_search import check_available

            check_available()

    def apply(self, model: bytes, calibration: Any, input_name: str) -> bytes:
        if self.tuning is None:
            return tvm.compile_onnx(model, self.target)
        with contextlib.ExitStack() as stack:
            root = self.tuning_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinymlops-tune-")))
            self.record, database = tvm.tune_onnx(model, self.target, self.tuning, root)
            return tvm.compile_onnx(model, self.target, database=database)


def evaluate_compiled(spec: Any, base: SourceModel, dataset: Dataset, blob: bytes, *,
                      firmware_cache: Path | None = None) -> Evaluation:
    """Score a TVM artifact: on this host directly, in the emulated board for a microcontroller bundle,
    otherwise through the same module compiled for the host."""
    target = str(spec.target)
    output_name = Runner.load(base.data).output_name  # the scores tensor, as onnxruntime names it
    if spec.format == "c-source":
        return evaluate_firmware(spec, base, dataset, blob, output_name, firmware_cache)
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


def evaluate_firmware(spec: Any, base: SourceModel, dataset: Dataset, blob: bytes, output_name: str,
                      firmware_cache: Path | None) -> Evaluation:
    """Score a C bundle by its firmware in qemu: outputs, flash, RAM, instructions (`mcu/measure.py`).

    Quality is against the fp32 base, as for every variant.  The firmware must compute what its source
    graph computes: an fp32 bundle's outputs within `measure.MAX_ABS_DIFF` of onnxruntime's on the base,
    an int8 bundle's (which carries its int8 graph) within `measure.MAX_INT8_STEPS` quantization steps
    of onnxruntime's on that graph."""
    from tinymlops.variants.mcu import emx, measure

    int8_graph = emx.bundled_graph(blob)
    runner = measure.load_runner(blob, input_name=base.input_name, output_name=output_name,
                                 cache_dir=firmware_cache)
    subset = measure.evaluation_subset(dataset)
    result = evaluate(base.data, blob, subset, health_atol=spec.health_atol, runner=runner,
                      graph=int8_graph or base.data, measure_latency=False, runtime=FORMAT_RUNTIMES[spec.format])
    figures = runner.figures()
    result.metrics.update(figures, runtime="c", evaluated_on=figures["board"],
                          firmware_seconds=round(runner.seconds, 2))
    result.metrics["memory_bytes"] = figures["ram_bytes"]
    result.requirements.update(arch=[tvm.target_spec(str(spec.target)).arch], min_ram_mb=0,
                               flash_bytes=figures["flash_bytes"], ram_bytes=figures["ram_bytes"])
    if int8_graph is None:
        diff, limit, allowed = float(result.metrics["max_abs_diff"]), measure.MAX_ABS_DIFF, "an fp32 build may"
    else:
        diff = runner.max_abs_diff(Runner.load(int8_graph))
        step = float(runner.firmware.info.get("output_step", 0.0))
        limit = measure.MAX_INT8_STEPS * step if step > 0 else measure.MAX_ABS_DIFF
        allowed = f"{measure.MAX_INT8_STEPS} steps of the int8 output's {step:.3g}"
        result.metrics.update(max_abs_diff_vs_int8_graph=diff, reference="onnxruntime on the bundle's int8 graph")
    refusal = None
    if not diff <= limit:
        against = "onnxruntime's" if int8_graph is None else "onnxruntime's on the same int8 graph"
        refusal = f"firmware outputs differ from {against} by {diff:.3g} (more than the {limit:g}: {allowed})"
    return dataclasses.replace(result, refusal=refusal)
