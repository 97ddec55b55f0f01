"""Per-target compiled variants: ONNX -> Apache TVM (relax) -> a library for one architecture.

Why: a fleet mixes x86 gateways, 64- and 32-bit ARM boards and Cortex-M
microcontrollers (docs/variants.md, "TVM targets").  ONNX is the interchange;
TVM turns the same graph into native code for each, so a device needs only
the small TVM runtime (or, on a microcontroller, a C toolchain) instead of
onnxruntime.

How: `unsupported_operators` checks the graph against the relax ONNX
frontend's converter map *before* anything is built, so a spec asking for an
impossible variant fails with the operator's name.  `compile_onnx` imports
with `tvm.relax.frontend.onnx.from_onnx` (dynamic dimensions such as the batch
are fixed to 1 unless `input_shape` says otherwise), builds with the default
relax pipeline behind operator fusion (`fused_pipeline`; untuned: no
MetaSchedule search, so builds take seconds and are reproducible, but kernels are slower than onnxruntime's on x86 —
measure, don't assume) and exports:

- `tvm-lib` with a linker: a stripped shared library linked by the target's
  GNU cross driver (`aarch64-linux-gnu-gcc`, ...).  It holds kernels, VM
  bytecode and weights; a device loads it with `tvm.runtime.load_module` and
  runs `relax.VirtualMachine(lib, tvm.cpu())["main"]` (`TvmRunner` does this).
- `tvm-lib` without a linker (bare-metal ELF objects): a tar of `lib0.o`
  (kernels) and `devc.o` (bytecode + weights) to link into firmware.
- `c-source`: a self-contained C bundle for a microcontroller (`mcu/bundle.py`):
  `lib0.c` (kernels), `model.c`/`model.h` (a static driver with
  `model_run(input, output)` in place of the VM; no TVM runtime) and
  `bundle.json` (shapes, arena and workspace sizes).  The object form still
  needs a TVM-FFI runtime with the relax VM builtins on the device; TVM 0.27
  ships no microcontroller runtime (microTVM is gone).

Tars are written with fixed metadata, so the same model, target and TVM
version give the same bytes, as content-addressed blobs need.

QDQ (int8) graphs import: QuantizeLinear/DequantizeLinear become relax
quantize/dequantize and the int8 weights stay int8 in the artifact, but the
arithmetic runs in float32 (fake quantization), so there is no int8 speed-up
and outputs differ from onnxruntime's integer kernels by about one
quantization step.  QLinearConv/QLinearMatMul/ConvInteger (operator-oriented
int8) are not supported and are reported as such.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from tinymlops.errors import InvalidModelError, SpecError, ToolchainMissingError, UnsupportedOperatorError
from tinymlops.runners import LATENCY_RUNS, LATENCY_WARMUP
from tinymlops.store import sha256_bytes
from tinymlops.variants.tvm_tune import Tuning, TuningRecord, tuning_key

INSTALL_HINT = "apache-tvm is not installed: pip install 'tinymlops[tvm]'"
# The relax frontend dispatches on op_type alone; outside these domains a same-named op would be misread.
FRONTEND_DOMAINS = ("", "ai.onnx", "com.microsoft")
# This machine's architecture in our names (the menu's requirements.arch).
HOST_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())


@dataclass(frozen=True)
class TargetSpec:
    name: str
    arch: str  # our architecture names, as in the menu's requirements.arch
    format: str  # "tvm-lib" (shared library or ELF objects) or "c-source"
    tvm_target: dict[str, Any] | str
    description: str
    linker: str | None = None  # GNU driver that links the .so; None ships objects/sources in a tar
    apt_package: str | None = None  # where `linker` comes from on Debian/Ubuntu
    tar_members: tuple[str, ...] = field(default=())  # what the tar holds, for the README and tests


TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec(
            "x86_64", "x86_64", "tvm-lib", {"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
            "x86-64 Linux (baseline ISA, no -mcpu=native so one build fits every x86 device)",
            linker="x86_64-linux-gnu-gcc", apt_package="gcc",
        ),
        TargetSpec(
            "aarch64", "aarch64", "tvm-lib", {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
            "64-bit ARM Linux (ARMv8-A, NEON; Raspberry Pi 3/4/5, Jetson, i.MX8)",
            linker="aarch64-linux-gnu-gcc", apt_package="gcc-aarch64-linux-gnu",
        ),
        TargetSpec(
            "armv7l", "armv7l", "tvm-lib",
            {"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mattr": ["+neon"], "mfloat-abi": "hard"},
            "32-bit ARM Linux, hard-float ABI with NEON/VFPv3 (Cortex-A7/A9/A53 on an armhf OS)",
            linker="arm-linux-gnueabihf-gcc", apt_package="gcc-arm-linux-gnueabihf",
        ),
        TargetSpec(
            "cortex-m4", "cortex-m4", "c-source", {"kind": "c", "mcpu": "cortex-m4"},
            "Cortex-M4F firmware source: C kernels + a static model driver, no TVM runtime; build with "
            "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16",
            tar_members=("bundle.json", "lib0.c", "model.c", "model.h"),
        ),
        TargetSpec(
            "cortex-m7", "cortex-m7", "c-source", {"kind": "c", "mcpu": "cortex-m7"},
            "Cortex-M7 firmware source (as cortex-m4, measured on MPS2-AN500); build with "
            "-mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-d16",
            tar_members=("bundle.json", "lib0.c", "model.c", "model.h"),
        ),
        TargetSpec(
            "cortex-m33", "cortex-m33", "c-source", {"kind": "c", "mcpu": "cortex-m33"},
            "Cortex-M33 firmware source (as cortex-m4, measured on MPS2-AN505 in the secure state); build with "
            "-mcpu=cortex-m33 -mthumb -mfloat-abi=hard -mfpu=fpv5-sp-d16",
            tar_members=("bundle.json", "lib0.c", "model.c", "model.h"),
        ),
        TargetSpec(
            "cortex-m4-llvm", "cortex-m4", "tvm-lib",
            {"kind": "llvm", "mtriple": "thumbv7em-none-eabi", "mcpu": "cortex-m4", "mfloat-abi": "hard"},
            "Cortex-M4F relocatable ELF objects (Thumb-2, fpv4-sp-d16, hard-float) to link into firmware",
            tar_members=("devc.o", "lib0.o"),
        ),
    )
}


def target_spec(target: str) -> TargetSpec:
    spec = TARGETS.get(target)
    if spec is None:
        raise SpecError(f"spec.variants.targets: {target!r} is not a TVM target (available: {', '.join(TARGETS)})")
    return spec


def _import_tvm() -> Any:
    try:
        import tvm
        from tvm import relax  # noqa: F401  (registers tvm.relax)
        from tvm.relax.frontend import onnx as _frontend  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return tvm


def _load(model: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_model_from_string(model)
    except Exception as exc:  # protobuf's DecodeError says nothing about which model
        raise InvalidModelError(f"not an ONNX model ({exc})") from exc


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, including those inside If branches (the frontend converts those too)."""
    found = []
    for node in graph.node:
        found.append(node)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found.extend(_nodes(sub))
    return found


def unsupported_operators(model: bytes, target: str) -> list[str]:
    """Sorted operators of `model` that compiling for `target` would fail on (empty: go ahead).

    Names are domain-qualified outside the default domain, as in the menu's
    `requirements.operators`.  No TVM target adds limits of its own for the
    operators the frontend converts (every kernel is generated code), so the
    target is checked for existence only.
    """
    target_spec(target)
    tvm = _import_tvm()
    convert_map = tvm.relax.frontend.onnx.onnx_frontend._get_convert_map()
    handled = {"If", "Constant"}  # converted by the frontend itself, not through the map
    missing = set()
    for node in _nodes(_load(model).graph):
        name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        known = node.op_type in convert_map or node.op_type in handled
        if node.domain not in FRONTEND_DOMAINS or not known:
            missing.add(name)
    return sorted(missing)


def input_shapes(proto: onnx.ModelProto, input_shape: tuple[int, ...] | None) -> dict[str, list[int]]:
    """Static shapes for the graph inputs: `input_shape` for the first, dynamic dimensions fixed to 1."""
    initializers = {init.name for init in proto.graph.initializer}
    shapes = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    if input_shape is not None and shapes:
        first = next(iter(shapes))
        if len(input_shape) != len(shapes[first]) or any(d < 1 for d in input_shape):
            raise SpecError(f"input_shape {input_shape} does not fit input {first!r} of rank {len(shapes[first])}")
        shapes[first] = list(input_shape)
    return shapes


def deterministic_tar(files: list[Path]) -> bytes:
    """An uncompressed tar with sorted names and zeroed times/owners: same files, same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(files, key=lambda p: p.name):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def import_onnx(model: bytes, input_shape: tuple[int, ...] | None = None) -> Any:
    """The relax module of `model` with static input shapes (see `input_shapes`)."""
    tvm = _import_tvm()
    proto = _load(model)
    shapes = input_shapes(proto, input_shape)
    elem = {v.name: v.type.tensor_type.elem_type for v in proto.graph.input if v.name in shapes}
    dtypes = {name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)).name for name, t in elem.items()}
    return tvm.relax.frontend.onnx.from_onnx(proto, shape_dict=shapes, dtype_dict=dtypes)


def fusion() -> Any:
    """Operator fusion: legalize every operator into a kernel, then fuse elementwise tails into the kernel before.

    The default pipeline for a CPU target legalizes every operator into its own
    kernel; fusing elementwise tails (bias, ReLU, padding) into the convolution
    or matmul before them halves the kernel calls of a small CNN and the passes
    over its activations.  The fused kernels are also what MetaSchedule tunes.
    """
    tvm = _import_tvm()
    relax = tvm.relax
    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(),
    ])


def fused_pipeline() -> Any:
    """TVM's default relax build pipeline with operator fusion in front of it."""
    tvm = _import_tvm()
    return tvm.transform.Sequential([fusion(), tvm.relax.pipeline.default_build_pipeline()])


def tunable(target: str) -> bool:
    """Whether MetaSchedule can tune `target` here: it times candidates on this machine, so only its own arch."""
    spec = target_spec(target)
    return spec.arch == HOST_ARCH and spec.format == "tvm-lib" and spec.linker is not None


def host_cpu() -> str:
    """This machine's CPU as LLVM names it (e.g. znver5, skylake-avx512): what `-mcpu=native` would pick."""
    tvm = _import_tvm()
    return str(tvm.get_global_func("target.llvm_get_system_cpu")())


def tuning_target(target: str) -> dict[str, Any]:
    """The TVM target a tuned build uses: the target's own for this machine's CPU, sized for one core.

    Why this CPU: MetaSchedule picks schedules by timing them here, so a tuned build is this machine's anyway,
    and without `mcpu` LLVM emits the baseline ISA (SSE2 on x86-64: 4 floats a vector where AVX-512 holds 16)
    while onnxruntime dispatches to AVX2/AVX-512 kernels at run time.  One core: devices and the benchmark run
    one thread, so a schedule tuned for more would be measured at a parallelism nobody uses.
    """
    spec = target_spec(target)
    assert isinstance(spec.tvm_target, dict)
    return {**spec.tvm_target, "mcpu": host_cpu(), "num-cores": 1}


def tuned_cpu_features(target: str) -> list[str]:
    """The vector extensions a tuned build of `target` may use (those of this machine's CPU model, which a
    device must have to load it)."""
    return cpu_features_of(tuning_target(target))


def cpu_features_of(tvm_target: dict[str, Any]) -> list[str]:
    """The vector extensions (NFD names, `tinymlops.cpufeatures`) LLVM enables for an llvm `tvm_target`."""
    from tinymlops.cpufeatures import required_features

    tvm = _import_tvm()
    llvm_features = tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(tvm_target))
    return required_features(str(name) for name in llvm_features)


def tune_onnx(model: bytes, target: str, tuning: Tuning, cache_root: Path) -> tuple[TuningRecord, Path]:
    """Tune `model`'s kernels for `target` within `tuning` (see `tvm_tune.py`); the record and the database
    directory, `<cache_root>/<key>`, to give `compile_onnx`."""
    from tinymlops.variants import tvm_search

    if not tunable(target):
        raise SpecError(f"spec.variants.tuning: {target} cannot be tuned on this {HOST_ARCH} machine "
                        "(MetaSchedule measures candidates where it runs)")
    tvm = _import_tvm()
    single_thread()
    tvm_target = tuning_target(target)
    key = tuning_key(sha256_bytes(model), tvm_target, tvm.__version__)
    fused = fusion()(import_onnx(model))
    record = tvm_search.tune(fused, tvm.target.Target(tvm_target), tuning, cache_root / key, key)
    return record, cache_root / key


def _build(mod: Any, spec: TargetSpec, database: Path | None) -> Any:
    tvm = _import_tvm()
    if database is None:
        return tvm.relax.build(mod, target=tvm.target.Target(spec.tvm_target), relax_pipeline=fused_pipeline())
    from tinymlops.variants import tvm_search

    target = tvm.target.Target(tuning_target(spec.name))
    tuned = tvm_search.apply_database(fusion()(mod), target, database)
    return tvm.relax.build(tuned, target=target, relax_pipeline=tvm.relax.pipeline.default_build_pipeline())


def compile_onnx(model: bytes, target: str, *, input_shape: tuple[int, ...] | None = None,
                 database: Path | None = None) -> bytes:
    """The artifact of `model` for `target`: a shared library, or a tar of objects or C sources.

    `database`: a MetaSchedule database from `tune_onnx` whose best schedules replace the default kernels.
    """
    spec = target_spec(target)
    missing = unsupported_operators(model, target)
    if missing:
        raise UnsupportedOperatorError(
            f"model: TVM {target} cannot compile operator(s) {', '.join(missing)} (relax ONNX frontend)"
        )
    mod = import_onnx(model, input_shape)
    if spec.format == "c-source":
        from tinymlops.variants.mcu.bundle import c_bundle

        return c_bundle(mod, spec)
    executable = _build(mod, spec, database)
    with tempfile.TemporaryDirectory(prefix="tinymlops-tvm-") as tmp:
        work = Path(tmp)
        if spec.linker is None:
            exported: list[Path] = []
            # export_library writes one file per module into `work`; we only collect them.
            executable.export_library(
                str(work / "model.tar"),
                fcompile=lambda _out, files, **_: exported.extend(Path(f) for f in files),
                workspace_dir=str(work),
            )
            return deterministic_tar(exported)
        linker = shutil.which(spec.linker)
        if linker is None:
            raise ToolchainMissingError(
                f"{target} needs the cross linker {spec.linker} on the build machine "
                f"(apt-get install {spec.apt_package})"
            )
        from tvm.support import cc

        out = work / "model.so"
        # -s: no debug info (smaller, and no build-machine paths); the exported symbols stay in .dynsym.
        executable.export_library(str(out), fcompile=cc.cross_compiler(linker, options=["-s"]))
        return out.read_bytes()


def single_thread() -> None:
    """Make TVM's runtime thread pool single-threaded, to compare with onnxruntime's 1-thread latency.

    TVM_NUM_THREADS is read when the pool starts (at the first parallel
    kernel); untuned builds emit no parallel loops at all, so kernels run on
    the calling thread either way.
    """
    os.environ["TVM_NUM_THREADS"] = "1"


class TvmRunner:
    """A host-compiled `tvm-lib` variant behind evaluate.Runner's interface.

    The graph was compiled for a fixed batch (1 unless `input_shape` said
    otherwise): `many` pads the last chunk and drops the padding.
    """

    fixed_batch = True

    def __init__(self, main: Any, tensor: Any, *, input_name: str, output_name: str, batch: int,
                 output_index: int) -> None:
        self._main, self._tensor = main, tensor
        self.input_name, self.output_name = input_name, output_name
        self.batch, self.output_index = batch, output_index

    @classmethod
    def load(cls, artifact: bytes, *, input_name: str, output_name: str, batch: int = 1,
             output_index: int = 0) -> TvmRunner:
        """`output_index`: which graph output `output_name` is (relax drops names; order is kept)."""
        single_thread()
        tvm = _import_tvm()
        with tempfile.TemporaryDirectory(prefix="tinymlops-tvm-") as tmp:
            path = Path(tmp) / "model.so"
            path.write_bytes(artifact)
            library = tvm.runtime.load_module(str(path))  # dlopen'ed: the file may go once loaded
        vm = tvm.relax.VirtualMachine(library, tvm.cpu())
        return cls(vm["main"], tvm.runtime.tensor, input_name=input_name, output_name=output_name,
                   batch=batch, output_index=output_index)

    def _run(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        result = self._main(self._tensor(np.ascontiguousarray(x)))
        if not hasattr(result, "numpy"):  # several graph outputs come back as a tuple
            result = result[self.output_index]
        out: NDArray[np.float32] = result.numpy()
        return out

    def one(self, sample: NDArray[np.float32]) -> NDArray[np.float32]:
        first: NDArray[np.float32] = self.many(sample[None])[0]
        return first

    def many(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        outs = []
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(self._run(chunk)[: self.batch - pad])
        return np.concatenate(outs)

    def latency_ms(self, x: NDArray[np.float32]) -> tuple[float, float]:
        """p50/p95 of one batch, input conversion included (as onnxruntime's run includes its own)."""
        batches = [x[np.arange(i, i + self.batch) % len(x)] for i in range(LATENCY_RUNS + LATENCY_WARMUP)]
        timings = []
        for i, batch in enumerate(batches):
            start = time.perf_counter_ns()
            self._run(batch)
            if i >= LATENCY_WARMUP:
                timings.append((time.perf_counter_ns() - start) / 1e6)
        p50, p95 = np.percentile(timings, [50, 95])
        return round(float(p50), 4), round(float(p95), 4)
