"""Microcontroller variants: the static C driver, firmware built and run in qemu, fit on a device."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from tinymlops.devices import KNOWN_ARCHES, DeviceCapabilities, capabilities_from_labels
from tinymlops.errors import FirmwareError, IntegrityError, ToolchainMissingError, UnsupportedOperatorError
from tinymlops.menu import verify_blob
from tinymlops.protect import encrypt_variants
from tinymlops.selection.filters import rejection_reason
from tinymlops.variants.mcu import boards, codegen, qemu
from tinymlops.variants.tvm import TARGETS

TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")


def tiny_mlp(outputs: int = 1) -> bytes:
    """16 -> Gemm(8) -> Relu -> Gemm(4) -> Softmax; `outputs=2` also exposes the logits."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (16, 8)), ("b1", (8,)), ("w2", (8, 4)), ("b2", (4,)))]
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    outs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
                              outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_workspace_is_the_largest_kernel_sum_aligned() -> None:
    kernels = (
        "TVM_DLL int32_t __tvm_ffi_a(void* self_handle, void* args, int32_t num_args, void* result) {\n"
        "  x = TVMBackendAllocWorkspace(1, dev_id, (uint64_t)100ULL, 2, 32);\n"
        "  y = TVMBackendAllocWorkspace(1, dev_id, (uint64_t)20ULL, 2, 32);\n}\n"
        "TVM_DLL int32_t __tvm_ffi_b(void* self_handle, void* args, int32_t num_args, void* result) {\n"
        "  z = TVMBackendAllocWorkspace(1, dev_id, (uint64_t)130ULL, 2, 32);\n}\n"
    )
    assert codegen.workspace_bytes(kernels) == 144  # a: 112 + 32 at once; b: 144 alone
    assert codegen.workspace_bytes("no kernels here") == 0


def test_render_documents_the_api_and_sizes() -> None:
    inp = codegen.Tensor("t_input", (1, 16), "float32")
    out = codegen.Tensor("t1", (1, 4), "float32", storage="arena0")
    plan = codegen.ModelPlan(input=inp, output=out, storages={"arena0": 64}, tensors=[out],
                             constants={}, calls=[("k", ("t_input", "t1"))])
    model_c, model_h = codegen.render(plan, 48, model_name="m")
    assert "int model_run(const float *input, float *output);" in model_h
    assert "#define MODEL_INPUT_BYTES 64" in model_h and "#define MODEL_OUTPUT_BYTES 16" in model_h
    assert "#define MODEL_ARENA_BYTES 64" in model_h and "#define MODEL_WORKSPACE_BYTES 48" in model_h
    assert "status = __tvm_ffi_k(NULL, args, 2, NULL);" in model_c


def test_float_constants_are_exact() -> None:
    values = np.array([0.1, -3.5e-20, 1e30], np.float32)
    text = codegen._const_array("c", values, "float32")
    literals = text[text.index("{") + 1 : text.rindex("}")].replace("f", "").split(",")
    assert np.array_equal(np.array([float.fromhex(v.strip()) for v in literals], np.float32), values)


def test_harness_report_is_parsed() -> None:
    assert qemu.parse_report("noise\nrun 0 10 400\nrun 0 12 404\n") == ([0, 0], [10, 12], [400, 404])


def test_firmware_fit_names_both_numbers() -> None:
    mcu = capabilities_from_labels({"tinymlops.io/arch": "cortex-m4", "tinymlops.io/ram-mb": "0",
                                    "tinymlops.io/ram-kb": "256", "tinymlops.io/model-storage-kb": "1024",
                                    "tinymlops.io/runtimes": "c"}, name="m4")
    assert mcu.ram_bytes == 256 * 1024 and mcu.labels()["tinymlops.io/ram-kb"] == "256"
    variant = {"accepted": True, "format": "c-source", "size_bytes": 5_000_000,
               "requirements": {"arch": ["cortex-m4"], "min_ram_mb": 0, "flash_bytes": 90_000, "ram_bytes": 200_000}}
    assert rejection_reason(variant, mcu) is None  # the C source is big, the flash it needs is not
    too_big = {**variant, "requirements": {**variant["requirements"], "ram_bytes": 300_000}}
    reason = rejection_reason(too_big, mcu)
    assert reason is not None and "90000" in reason and "300000" in reason and str(256 * 1024) in reason
    small = DeviceCapabilities("tiny", "cortex-m4", "mcu", 0, 64, ("c",), ram_kb=256)
    assert "90000 bytes of flash" in str(rejection_reason(variant, small))


# ---- the real path: TVM -> C bundle -> arm-none-eabi-gcc -> qemu (one small model) ----

needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm")


@pytest.fixture(scope="module")
def bundle() -> bytes:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from tinymlops.variants import tvm

    return tvm.compile_onnx(tiny_mlp(), "cortex-m4")


@needs_tools
def test_firmware_runs_in_qemu_and_matches_onnxruntime(bundle: bytes, tmp_path: Path) -> None:
    from tinymlops.variants.mcu.firmware import build_firmware, find_toolchain

    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        info = json.load(tar.extractfile("bundle.json"))  # type: ignore[arg-type]
    assert info["input"] == {"shape": [1, 16], "dtype": "float32", "bytes": 64}
    firmware = build_firmware(bundle, tmp_path)
    assert not firmware.cached and build_firmware(bundle, tmp_path).cached
    x: NDArray[np.float32] = np.random.default_rng(0).standard_normal((3, 1, 16)).astype(np.float32)
    run = qemu.run_firmware(find_toolchain().qemu, firmware.harness, x, input_dtype="float32",
                            output_dtype="float32", output_size=4, image_sha256=firmware.image_sha256)
    session = ort.InferenceSession(tiny_mlp())
    expected = np.concatenate([session.run(None, {"input": sample})[0] for sample in x])
    assert np.abs(run.outputs - expected).max() <= 1e-5
    # Straight-line kernels: every sample costs the same instructions, a positive multiple of a timer tick.
    assert len(set(run.instructions)) == 1 and run.instructions[0] % firmware.board.instructions_per_tick == 0
    assert run.instructions[0] > 16 * 8  # at least one instruction per multiply of the first layer
    assert 0 < run.stack_bytes < 64 * 1024
    # The weights are in flash; static RAM holds at least the arenas the plan asked for.
    assert firmware.flash_bytes > 4 * (16 * 8 + 8 * 4) and firmware.static_ram_bytes >= info["arena_bytes"]


@needs_tools
def test_a_relative_image_path_runs(bundle: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu runs in a scratch directory: an image named relative to ours (the CLI demo's ./.tinymlops/demo) must
    still be found (it was not, and both boards of the default demo failed their first boot)."""
    from tinymlops.variants.mcu.firmware import build_firmware, find_toolchain

    firmware = build_firmware(bundle, tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    relative = firmware.harness.relative_to(tmp_path)
    run = qemu.run_firmware(find_toolchain().qemu, relative, np.zeros((1, 1, 16), np.float32), input_dtype="float32",
                            output_dtype="float32", output_size=4, image_sha256=firmware.image_sha256)
    assert run.outputs.shape == (1, 4)


def test_boards_are_data_the_linker_and_qemu_read() -> None:
    m4, m33 = boards.BOARDS["cortex-m4"], boards.BOARDS["cortex-m33"]
    assert m4.instructions_per_tick == 40 and m33.instructions_per_tick == 50  # 25 MHz, 20 MHz timers
    assert "ORIGIN = 0x10000000" in m33.memory_ld() and "ORIGIN = 0x38000000" in m33.memory_ld()
    assert m33.qemu_args[:4] == ("-M", "mps2-an505", "-cpu", "cortex-m33")
    assert set(boards.BOARDS) == {t for t, spec in TARGETS.items() if spec.format == "c-source"}
    with pytest.raises(FirmwareError, match="no emulated board for target 'cortex-m0'"):
        boards.board_for("cortex-m0")
    # Every board's architecture is one a menu, a device label and an EdgeModel may name.
    schema = json.loads((Path(codegen.__file__).parents[2] / "schemas" / "menu.schema.json").read_text())
    arches = schema["$defs"]["variant"]["properties"]["requirements"]["properties"]["arch"]["items"]["enum"]
    assert set(boards.BOARDS) <= set(arches) and set(boards.BOARDS) <= set(KNOWN_ARCHES)


@needs_tools
@pytest.mark.parametrize("target", ["cortex-m7", "cortex-m33"])
def test_other_cortex_m_boards_run_the_same_model(target: str, tmp_path: Path) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from tinymlops.variants import tvm
    from tinymlops.variants.mcu import measure
    from tinymlops.variants.mcu.firmware import build_firmware, find_toolchain

    firmware = build_firmware(tvm.compile_onnx(tiny_mlp(), target), tmp_path)
    assert firmware.board.target == target and f"-mcpu={target}" in firmware.board.cflags
    runner = measure.FirmwareRunner(firmware, find_toolchain(firmware.board).qemu, "input", "probabilities")
    x: NDArray[np.float32] = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)
    expected = ort.InferenceSession(tiny_mlp()).run(None, {"input": x})[0]
    outputs = runner.many(x)
    assert np.abs(outputs - expected).max() <= 1e-5
    assert np.array_equal(runner.one(x[1]), outputs[1]) and len(runner.instructions) == 2  # a seen sample: no rerun
    figures = runner.figures()
    assert figures["instructions"] % firmware.board.instructions_per_tick == 0 and figures["instructions"] > 16 * 8
    assert firmware.board.machine in figures["board"] and figures["clock_mhz"] == firmware.board.clock_mhz


@needs_tools
def test_a_fault_is_a_named_error_not_a_hang(tmp_path: Path) -> None:
    from tinymlops.variants.mcu.firmware import find_toolchain

    garbage = tmp_path / "broken.elf"
    garbage.write_bytes(b"\x7fELF" + bytes(60))
    with pytest.raises(FirmwareError, match="broken.elf"):
        qemu.run_firmware(find_toolchain().qemu, garbage, np.zeros((1, 16), np.float32), input_dtype="float32",
                          output_dtype="float32", output_size=4, image_sha256="00" * 32)


@needs_tools
def test_a_corrupted_image_is_refused_by_the_firmware_before_it_runs(bundle: bytes, tmp_path: Path) -> None:
    from tinymlops.errors import IntegrityError
    from tinymlops.variants.mcu.firmware import build_firmware, find_toolchain

    firmware = build_firmware(bundle, tmp_path)
    x = np.zeros((1, 16), np.float32)
    flipped = format(int(firmware.image_sha256[0], 16) ^ 1, "x") + firmware.image_sha256[1:]
    with pytest.raises(IntegrityError, match="refused image: SHA-256 mismatch"):
        qemu.run_firmware(find_toolchain().qemu, firmware.harness, x, input_dtype="float32", output_dtype="float32",
                          output_size=4, image_sha256=flipped)


def test_two_outputs_are_refused_by_name() -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from tinymlops.variants import tvm

    with pytest.raises(UnsupportedOperatorError, match="2 graph outputs"):
        tvm.compile_onnx(tiny_mlp(outputs=2), "cortex-m4")


def test_missing_toolchain_is_a_named_not_built_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops.variants.mcu import firmware

    monkeypatch.setattr(firmware.shutil, "which", lambda tool: None if tool == "qemu-system-arm" else f"/x/{tool}")
    with pytest.raises(ToolchainMissingError, match="qemu-system-arm.*apt-get install"):
        firmware.find_toolchain()
    assert onnx  # the graph helpers above come from onnx


@needs_tools
def test_the_factory_measures_the_variant_and_refuses_wrong_outputs(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from tinymlops.variants import build_variant, load_dataset, load_source
    from tinymlops.variants.mcu import measure

    base = load_source(tiny_mlp())
    dataset = load_dataset(None, base)
    entry = build_variant(base, dataset, "tvm-cortex-m4", accuracy_budget=0.01, cache_dir=tmp_path).entry
    metrics, requirements = entry["metrics"], entry["requirements"]
    assert entry["accepted"] and requirements["arch"] == ["cortex-m4"] and requirements["runtime"] == "c"
    assert requirements["flash_bytes"] == metrics["flash_bytes"] and requirements["ram_bytes"] == metrics["ram_bytes"]
    assert metrics["ram_bytes"] == metrics["static_ram_bytes"] + metrics["stack_bytes"]
    assert metrics["latency_ms_estimate"] == round(metrics["instructions"] / (metrics["clock_mhz"] * 1e3), 3)
    assert "estimate" in metrics["latency_note"] and metrics["eval_samples"] <= measure.MAX_EVAL_SAMPLES
    assert metrics["max_abs_diff"] <= measure.MAX_ABS_DIFF
    # size_bytes is the flash a device needs; the downloaded C source is blob_bytes, which readers check.
    built = build_variant(base, dataset, "tvm-cortex-m4", accuracy_budget=0.01, cache_dir=tmp_path)
    assert entry["size_bytes"] == metrics["flash_bytes"] and entry["blob_bytes"] == len(built.blob)
    verify_blob(built.blob, entry)
    with pytest.raises(IntegrityError, match=f"{len(built.blob) - 1} bytes, the signed menu says {len(built.blob)}"):
        verify_blob(built.blob[:-1], entry)
    sealed_entries, sealed = encrypt_variants([entry], {entry["sha256"]: built.blob}, bytes(32))
    assert sealed_entries[0]["size_bytes"] == metrics["flash_bytes"]  # encryption does not change the flash
    verify_blob(sealed[sealed_entries[0]["sha256"]], sealed_entries[0])
    assert sealed_entries[0]["encryption"]["plaintext_size"] == len(built.blob)
    # The golden outputs a device checks come from the firmware itself.
    assert len(entry["health_check"]["outputs"]) == len(entry["health_check"]["inputs"])
    monkeypatch.setattr(measure, "MAX_ABS_DIFF", -1.0)  # no output can be that close: the refusal path
    refused = build_variant(base, dataset, "tvm-cortex-m4", accuracy_budget=0.01, cache_dir=tmp_path)
    assert refused.cached and not refused.entry["accepted"]
    assert "firmware outputs differ from onnxruntime's by" in refused.entry["reason"]


@needs_tools
def test_mcu_run_checks_the_menu_and_prints_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from click.testing import CliRunner

    from tinymlops.cli import main

    monkeypatch.setenv("TINYMLOPS_FIRMWARE_CACHE", str(tmp_path / "firmware"))
    (tmp_path / "m.onnx").write_bytes(tiny_mlp())
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    runner = CliRunner()
    built = runner.invoke(main, ["variants", "build", str(tmp_path / "m.onnx"), "--synthetic-data", "--out",
                                 str(tmp_path / "v"), "--key-dir", str(tmp_path / "keys"), "--precisions", "fp32",
                                 "--targets", "cortex-m4"])
    assert built.exit_code == 0, built.output
    ran = runner.invoke(main, ["mcu", "run", str(tmp_path / "v"), "--variant", "tvm-cortex-m4", "--input",
                               str(tmp_path / "x.npz"), "--output", "json"])
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.stdout)
    session = ort.InferenceSession(tiny_mlp())
    assert np.abs(np.asarray(report["outputs"]) - session.run(None, {"input": x})[0]).max() <= 1e-5
    assert report["figures"]["instructions"] > 0 and report["figures"]["flash_bytes"] > 0
    np.savez(tmp_path / "wrong.npz", x=np.zeros((1, 5), np.float32))
    wrong = runner.invoke(main, ["mcu", "run", str(tmp_path / "v"), "--variant", "tvm-cortex-m4", "--input",
                                 str(tmp_path / "wrong.npz")])
    assert wrong.exit_code == 1 and "(1, 5)" in wrong.output and "1x16" in wrong.output
    blob = next((tmp_path / "v" / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes().replace(b"model_run", b"model_ran", 1))  # a corrupted bundle
    refused = runner.invoke(main, ["mcu", "run", str(tmp_path / "v"), "--variant", "tvm-cortex-m4", "--input",
                                   str(tmp_path / "x.npz")])
    assert refused.exit_code == 1 and blob.name[:12] in refused.output


@needs_tools
def test_the_edge_node_flashes_what_fits_and_keeps_the_previous_image_on_corruption(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.faredge.node import EdgeNode
    from tinymlops.store import DirectoryStore
    from tinymlops.variants import build_variants

    monkeypatch.setenv("TINYMLOPS_FIRMWARE_CACHE", str(tmp_path / "fw"))
    key = Ed25519PrivateKey.generate()
    out = tmp_path / "store"
    build_variants(tiny_mlp(), None, DirectoryStore(out), "m", signing_key=key, model_ref=("default", "m"),
                   precisions=["fp32"], targets=["cortex-m4"], synthetic_calibration=True, cache_dir=tmp_path / "c")
    directory = out / "m"
    big = DeviceCapabilities("m4-big", "cortex-m4", "mcu", 0, 1024, ("c",), ram_kb=256)
    tiny = DeviceCapabilities("m4-tiny", "cortex-m4", "mcu", 0, 2, ("c",), ram_kb=1)
    node = EdgeNode("edge-1", key.public_key(), [big, tiny], tmp_path / "node")
    outcome = node.install(directory)
    assert outcome["m4-big"] == "flashed tvm-cortex-m4 (was nothing)"
    assert "refused" in outcome["m4-tiny"] and "bytes of flash" in outcome["m4-tiny"]  # both numbers named
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    expected = ort.InferenceSession(tiny_mlp()).run(None, {"input": x})[0]
    assert np.abs(node.infer("m4-big", x) - expected).max() <= 1e-5
    # A flash write that corrupts the image: the firmware's own SHA-256 check refuses it, the old image stays.
    again = node.install(directory, corrupt_on=frozenset({"m4-big"}))
    assert "refused image" in again["m4-big"] and "keeps tvm-cortex-m4" in again["m4-big"]
    assert np.abs(node.infer("m4-big", x) - expected).max() <= 1e-5
    # A blob altered at the edge node fails the menu's digest before anything is built or flashed.
    blob = next((directory / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    assert "refused" in node.install(directory)["m4-big"]
    report = {r["device"]: r for r in node.reports()}
    assert report["m4-big"]["variant"] == "tvm-cortex-m4" and report["m4-big"]["inferences"] == 6
    assert report["m4-big"]["instructions_per_inference"] > 0 and len(report["m4-big"]["refusals"]) == 2
    assert report["m4-tiny"]["variant"] is None
