"""int8 on the microcontroller: a QOperator graph as integer C (emx-onnx-cgen), measured on the board."""

from __future__ import annotations

import importlib.util
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.unit.test_mcu import TOOLS, tiny_mlp
from tinymlops.errors import SpecError, ToolchainMissingError
from tinymlops.variants.matrix import spec_for, variant_matrix
from tinymlops.variants.mcu import emx


def dequantized_output(scale: float) -> bytes:
    """QuantizeLinear -> DequantizeLinear -> Identity, as the quantizer ends a graph."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]), helper.make_node("Identity", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_the_output_step_is_the_last_dequantize_scale() -> None:
    assert emx.output_step(dequantized_output(0.25)) == 0.25
    assert emx.output_step(tiny_mlp()) == 0.0  # a float graph: no step, the fp32 tolerance applies


def test_the_matrix_adds_int8_c_for_microcontroller_targets_only() -> None:
    ids = variant_matrix(["fp32", "int8"], targets=["x86_64", "cortex-m4", "cortex-m33"])
    assert ids[-2:] == ["emx-int8-cortex-m4", "emx-int8-cortex-m33"] and "emx-int8-x86-64" not in ids
    assert not any(i.startswith("emx-") for i in variant_matrix(["fp32"], targets=["cortex-m4"]))
    spec = spec_for("emx-int8-cortex-m7")
    assert (spec.precision, spec.format, spec.target, spec.needs_calibration) == ("int8", "c-source", "cortex-m7", True)
    assert spec.lineage[0]["params"]["format"] == "QOperator" and spec.lineage[1]["name"] == "emx_generate_c"
    with pytest.raises(SpecError, match="emx-int8-x86-64"):
        spec_for("emx-int8-x86-64")


def test_static_graph_records_every_intermediate_shape() -> None:
    graph = onnx.load_model_from_string(emx.static_graph(tiny_mlp(), (1, 16)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.graph.value_info}
    assert shapes == {"h": [1, 8], "r": [1, 8], "logits": [1, 4]}
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 16]


def test_without_emx_the_variant_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == emx.MODULE else real(name))
    with pytest.raises(ToolchainMissingError, match=r"tinymlops\[mcu\]"):
        spec_for("emx-int8-cortex-m4").steps[1].check_supported(tiny_mlp(), variant_id="emx-int8-cortex-m4")


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS) or importlib.util.find_spec(emx.MODULE) is None,
                    reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm and tinymlops[mcu]")
def test_int8_firmware_computes_what_the_int8_graph_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from tinymlops.variants import build_variant, load_dataset, load_source
    from tinymlops.variants.mcu import measure

    base = load_source(tiny_mlp())
    dataset = load_dataset(None, base)
    built = build_variant(base, dataset, "emx-int8-cortex-m4", accuracy_budget=1.0, cache_dir=tmp_path,
                          synthetic_calibration=True)
    entry, metrics = built.entry, built.entry["metrics"]
    assert entry["accepted"] and entry["precision"] == "int8" and entry["size_bytes"] == metrics["flash_bytes"]
    with tarfile.open(fileobj=io.BytesIO(built.blob)) as tar:
        assert {"lib0.c", "model.c", "model.h", "bundle.json", "model.onnx"} <= set(tar.getnames())
    graph = onnx.load_model_from_string(emx.bundled_graph(built.blob) or b"")
    ops = {node.op_type for node in graph.graph.node}
    assert "QGemm" in ops and not ops & {"Gemm", "MatMul"}  # the layers are integer operators
    step = emx.output_step(graph.SerializeToString())
    assert step > 0 and metrics["max_abs_diff_vs_int8_graph"] <= measure.MAX_INT8_STEPS * step
    monkeypatch.setattr(measure, "MAX_INT8_STEPS", -1)  # no output can be that close: the refusal path
    refused = build_variant(base, dataset, "emx-int8-cortex-m4", accuracy_budget=1.0, cache_dir=tmp_path,
                            synthetic_calibration=True)
    assert refused.cached and not refused.entry["accepted"]
    assert "onnxruntime's on the same int8 graph" in refused.entry["reason"]
