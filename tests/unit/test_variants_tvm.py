"""TVM compilation of the digits model (and a small conv net) for every target in TARGETS."""

from __future__ import annotations

import io
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")

from tinymlops.errors import SpecError, UnsupportedOperatorError  # noqa: E402
from tinymlops.model import DigitsArtifacts, prepare_digits  # noqa: E402
from tinymlops.variants import tvm as tvm_variants  # noqa: E402
from tinymlops.variants.evaluate import Runner  # noqa: E402

E_MACHINE = {"x86_64": 62, "aarch64": 183, "armv7l": 40, "cortex-m4": 40, "cortex-m7": 40, "cortex-m33": 40}
ATOL = 1e-4


def e_machine(elf: bytes) -> int:
    assert elf[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(elf[18:20], "little")  # all our targets are little-endian


def members(artifact: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(artifact)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def linker_missing(target: str) -> bool:
    linker = tvm_variants.TARGETS[target].linker
    return linker is not None and shutil.which(linker) is None


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    return prepare_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def model(digits: DigitsArtifacts) -> bytes:
    return digits.model_path.read_bytes()


@pytest.fixture(scope="module")
def samples(digits: DigitsArtifacts) -> NDArray[np.float32]:
    x: NDArray[np.float32] = np.load(digits.data_path)["x"]
    return x


@pytest.fixture(scope="module")
def artifacts(model: bytes) -> dict[str, bytes]:
    """Each target compiled once (about half a second each)."""
    return {t: tvm_variants.compile_onnx(model, t) for t in tvm_variants.TARGETS if not linker_missing(t)}


def conv_net() -> bytes:
    """Reshape -> Conv/Relu/MaxPool -> Conv/BatchNorm/AveragePool -> GlobalAveragePool -> Gemm -> Softmax."""
    rng = np.random.default_rng(0)

    def const(name: str, array: NDArray[np.generic]) -> onnx.TensorProto:
        return numpy_helper.from_array(array, name)

    inits = [
        const("shape", np.array([-1, 1, 8, 8], np.int64)),
        const("w1", (rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32)),
        const("b1", np.zeros(8, np.float32)),
        const("w2", (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32)),
        const("scale", np.ones(16, np.float32)), const("bias", np.zeros(16, np.float32)),
        const("mean", np.full(16, 0.1, np.float32)), const("var", np.ones(16, np.float32)),
        const("wf", rng.standard_normal((16, 10)).astype(np.float32)), const("bf", np.zeros(10, np.float32)),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["img"]),
        helper.make_node("Conv", ["img", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "scale", "bias", "mean", "var"], ["bn"]),
        helper.make_node("AveragePool", ["bn"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])], inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def test_targets_use_menu_arch_names() -> None:
    for name, spec in tvm_variants.TARGETS.items():
        assert spec.name == name
        assert spec.arch in E_MACHINE
        assert spec.format in ("tvm-lib", "c-source")


@pytest.mark.parametrize("target", [t for t, s in tvm_variants.TARGETS.items() if s.linker])
def test_shared_library_is_elf_for_the_target(artifacts: dict[str, bytes], target: str) -> None:
    if target not in artifacts:
        pytest.skip(f"{tvm_variants.TARGETS[target].linker} not installed ({tvm_variants.TARGETS[target].apt_package})")
    assert e_machine(artifacts[target]) == E_MACHINE[tvm_variants.TARGETS[target].arch]
    assert artifacts[target][16] == 3  # ET_DYN: a shared object


def test_cortex_m4_objects_are_thumb_elf(artifacts: dict[str, bytes]) -> None:
    objects = members(artifacts["cortex-m4-llvm"])
    assert sorted(objects) == ["devc.o", "lib0.o"]
    for data in objects.values():
        assert e_machine(data) == 40
        assert data[16] == 1  # ET_REL: to be linked into firmware


def test_cortex_m4_c_source_defines_the_kernels(artifacts: dict[str, bytes]) -> None:
    sources = members(artifacts["cortex-m4"])
    assert sorted(sources) == ["bundle.json", "lib0.c", "model.c", "model.h"]
    kernels = sources["lib0.c"].decode()
    assert re.search(r"int32_t __tvm_ffi_fused_matmul\w*\([^;]*\)\s*\{", kernels), "no fused kernel in lib0.c"
    assert "int model_run(" in sources["model.h"].decode()  # the static driver replaces the VM's bytecode


def test_c_source_compiles_for_cortex_m4(artifacts: dict[str, bytes], tmp_path: Path) -> None:
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi)")
    import tvm
    import tvm_ffi.libinfo

    (tmp_path / "lib0.c").write_bytes(members(artifacts["cortex-m4"])["lib0.c"])
    includes = [tvm.libinfo.find_include_path(), tvm_ffi.libinfo.find_include_path()]
    subprocess.run(
        ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-O2",
         "-Werror", "-c", "lib0.c", "-o", "lib0.o", *[f"-I{path}" for path in includes]],
        cwd=tmp_path, check=True, capture_output=True,
    )
    assert e_machine((tmp_path / "lib0.o").read_bytes()) == 40


def test_artifacts_are_deterministic(model: bytes, artifacts: dict[str, bytes]) -> None:
    for target in ("x86_64", "cortex-m4"):
        assert tvm_variants.compile_onnx(model, target) == artifacts[target]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64", reason="the host library is x86-64 Linux"
)
def test_host_library_matches_onnxruntime(
    model: bytes, artifacts: dict[str, bytes], samples: NDArray[np.float32]
) -> None:
    if linker_missing("x86_64"):
        pytest.skip("x86_64-linux-gnu-gcc not installed")
    runner = tvm_variants.TvmRunner.load(artifacts["x86_64"], input_name="input", output_name="probabilities")
    reference = Runner.load(model).many(samples)
    np.testing.assert_allclose(runner.many(samples), reference, atol=ATOL)
    np.testing.assert_allclose(runner.one(samples[0]), reference[0], atol=ATOL)
    p50, p95 = runner.latency_ms(samples)
    assert 0 < p50 <= p95


def test_fixed_batch_pads_the_last_chunk(model: bytes, samples: NDArray[np.float32]) -> None:
    artifact = tvm_variants.compile_onnx(model, "x86_64", input_shape=(8, 64))
    runner = tvm_variants.TvmRunner.load(artifact, input_name="input", output_name="probabilities", batch=8)
    few = samples[:13]  # one full batch and one padded
    np.testing.assert_allclose(runner.many(few), Runner.load(model).many(few), atol=ATOL)


def test_conv_net_compiles_and_matches(samples: NDArray[np.float32]) -> None:
    conv = conv_net()
    assert tvm_variants.unsupported_operators(conv, "cortex-m4") == []
    runner = tvm_variants.TvmRunner.load(
        tvm_variants.compile_onnx(conv, "x86_64"), input_name="input", output_name="probabilities"
    )
    np.testing.assert_allclose(runner.many(samples[:50]), Runner.load(conv).many(samples[:50]), atol=ATOL)


def test_unsupported_operators_are_named_before_building() -> None:
    nodes = [
        helper.make_node("ConvInteger", ["x", "w"], ["y"]),  # operator-oriented int8: no relax converter
        helper.make_node("Relu", ["y"], ["z"], domain="org.example"),  # same name, foreign domain
    ]
    graph = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 4, 4]),
         helper.make_tensor_value_info("w", TensorProto.UINT8, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("z", TensorProto.INT32, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("org.example", 1)]
    ).SerializeToString()
    assert tvm_variants.unsupported_operators(model, "aarch64") == ["ConvInteger", "org.example.Relu"]
    with pytest.raises(UnsupportedOperatorError, match="ConvInteger"):
        tvm_variants.compile_onnx(model, "aarch64")


def test_unknown_target_names_the_choices(model: bytes) -> None:
    with pytest.raises(SpecError, match="x86_64"):
        tvm_variants.compile_onnx(model, "riscv64")


def test_missing_tvm_says_how_to_install(model: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tvm", None)  # makes `import tvm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'tinymlops\[tvm\]'"):
        tvm_variants.unsupported_operators(model, "x86_64")


def test_a_host_library_gets_its_own_output_reference_and_other_targets_none(
    digits: DigitsArtifacts, artifacts: dict[str, bytes]
) -> None:
    """reference_monitoring runs a TVM library built for this host on the build data; one built for another
    architecture (or a C source) cannot run here, and the fleet compares it with the base's outputs."""
    from tinymlops.store import sha256_bytes
    from tinymlops.variants import load_dataset, load_source
    from tinymlops.variants.monitoring import reference_monitoring
    from tinymlops.variants.tvm_transform import HOST_ARCH

    if HOST_ARCH not in artifacts:
        pytest.skip(f"no TVM library for this host ({HOST_ARCH}) could be linked")
    others = [t for t, spec in tvm_variants.TARGETS.items() if t in artifacts and spec.arch != HOST_ARCH]
    entries = [({"format": tvm_variants.TARGETS[t].format, "target": t, "sha256": sha256_bytes(artifacts[t])},
                artifacts[t]) for t in [HOST_ARCH, *others]]
    base = load_source(digits.model_path)
    monitoring = reference_monitoring(base, load_dataset(digits.data_path, base), entries)
    assert monitoring is not None
    assert set(monitoring["outputs"]) == {sha256_bytes(artifacts[HOST_ARCH])}
    # The host library is the fp32 base compiled: its outputs land in the base's bins (up to float rounding).
    own, reference = monitoring["outputs"][sha256_bytes(artifacts[HOST_ARCH])], monitoring["reference"]
    for histogram in ("confidence", "classes"):  # a few rows on a bin edge or a near tie may move
        assert sum(abs(a - b) for a, b in zip(own[histogram], reference[histogram], strict=True)) <= 4
