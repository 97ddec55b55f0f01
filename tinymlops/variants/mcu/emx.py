"""int8 arithmetic on the microcontroller: a statically quantized graph as integer C, by emx-onnx-cgen.

Why a second generator: TVM 0.27 imports an int8 graph as quantize/dequantize
around float kernels, and has no importer for QLinearConv/QLinearMatMul, so an
int8 model through TVM is float arithmetic (docs/mcu.md).  emx-onnx-cgen
(PyPI, Apache-2.0) lowers onnxruntime's operator-oriented int8 graph
(QuantFormat.QOperator: QLinearConv, QGemm, QLinearMatMul, QLinearAdd, ...)
to loops over uint8 activations and int8 weights that accumulate in int32; only
the per-output requantization (and the graph's own QuantizeLinear and
DequantizeLinear at the edges) is float.

The bundle has the TVM bundle's layout and API (`model_run(const float *input,
float *output)`, `bundle.json` with the target, so the same firmware builder and
harness measure it) plus `model.onnx`, the int8 graph it was generated from: the
firmware's outputs are held against onnxruntime's on that graph.  emx keeps its
temporaries on the stack (the harness measures the high-water mark).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from tinymlops.errors import ToolchainMissingError, UnsupportedOperatorError
from tinymlops.variants.tvm import deterministic_tar

PACKAGE = "emx-onnx-cgen"
MODULE = "emx_onnx_cgen"
INSTALL_HINT = f"{PACKAGE} is not installed: pip install 'tinymlops[mcu]'"
ENTRY = "emx_model"
_SAME_VALUES = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")  # move values, change no number
GRAPH_MEMBER = "model.onnx"
# The entry point emx writes for a one-input, one-output float graph.
_SIGNATURE = re.compile(rf"^void {ENTRY}\(const float (\w+)((?:\[[^\]]*\])+), float (\w+)((?:\[[^\]]*\])+)\)",
                        re.MULTILINE)


def check_available() -> None:
    """ToolchainMissingError naming the extra when emx-onnx-cgen is not installed."""
    if importlib.util.find_spec(MODULE) is None:
        raise ToolchainMissingError(INSTALL_HINT)


def version() -> str:
    return importlib.metadata.version(PACKAGE)


def static_graph(model: bytes, input_shape: tuple[int, ...]) -> bytes:
    """`model` with a batch of one and the dtype and shape of every intermediate tensor written down.

    emx-onnx-cgen needs them, and ONNX's shape inference does not know onnxruntime's contrib operators
    (QGemm, QLinearGlobalAveragePool, ...), so they come from one onnxruntime run on zeros (shapes are
    static: the values do not matter).
    """
    import onnxruntime as ort

    proto = onnx.load_model_from_string(model)
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim[:1]:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    declared = {v.name for v in [*proto.graph.input, *proto.graph.output]} | {i.name for i in proto.graph.initializer}
    names = [out for node in proto.graph.node for out in node.output if out and out not in declared]
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {proto.graph.input[0].name: np.zeros(input_shape, np.float32)}) if names else []
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
        for name, value in zip(names, values, strict=True))
    return bytes(proto.SerializeToString())


def output_step(graph: bytes) -> float:
    """The quantization step of the graph's output: the scale of the DequantizeLinear that produces it
    (how far two correct integer kernels may round apart); 0.0 when the output is not dequantized."""
    proto = onnx.load_model_from_string(graph)
    scales = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    node = producers.get(proto.graph.output[0].name)
    while node is not None and node.op_type in _SAME_VALUES:  # the quantizer ends with Identity to the output
        node = producers.get(node.input[0])
    if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in scales:
        return float(np.max(scales[node.input[1]]))
    return 0.0


def generate_c(graph: bytes, work: Path) -> str:
    """emx-onnx-cgen's C for `graph` (weights as constants, temporaries on the stack);
    UnsupportedOperatorError with emx's own reason when it cannot lower the graph."""
    check_available()
    (work / GRAPH_MEMBER).write_bytes(graph)
    done = subprocess.run([sys.executable, "-m", MODULE, "compile", GRAPH_MEMBER, "lib0.c", "--model-name", ENTRY,
                           "--large-weight-threshold", "0", "--large-temp-threshold", "0", "--color", "never"],
                          cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        said = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Result:")]
        reason = said[-1].removeprefix("Result:").strip() if said else (done.stderr or done.stdout).strip()[-300:]
        raise UnsupportedOperatorError(f"{PACKAGE} cannot generate C for the int8 graph: {reason}")
    return (work / "lib0.c").read_text()


def bundle(graph: bytes, target: str, *, precision: str = "int8") -> bytes:
    """The deterministic tar of `graph` (static shapes, `static_graph`) as a C bundle for `target`."""
    with tempfile.TemporaryDirectory(prefix="tinymlops-emx-") as tmp:
        work = Path(tmp)
        source = generate_c(graph, work)
        match = _SIGNATURE.search(source)
        if match is None:
            raise UnsupportedOperatorError(f"{PACKAGE}: no `void {ENTRY}(const float in[...], float out[...])` "
                                           "entry point (the MCU driver takes one float input and output)")
        shapes = [[int(d) for d in re.findall(r"\[(?:restrict )?(\d+)\]", match.group(i))] for i in (2, 4)]
        sizes = [4 * int(np.prod(shape)) for shape in shapes]
        info = {
            "format": 1, "target": target, "generator": f"{PACKAGE} {version()}", "precision": precision,
            "input": {"shape": shapes[0], "dtype": "float32", "bytes": sizes[0]},
            "output": {"shape": shapes[1], "dtype": "float32", "bytes": sizes[1]},
            "arena_bytes": 0, "workspace_bytes": 0, "kernel_calls": 1, "kernels": [ENTRY],
            "graph": GRAPH_MEMBER, "output_step": output_step(graph),
        }
        (work / "model.h").write_text(
            f"/* tinymlops {target} {precision} model, generated by {PACKAGE} (see bundle.json).\n"
            " * int model_run(const float *input, float *output): quantizes the input, runs the integer\n"
            " * kernels, dequantizes the output; always returns 0.  Temporaries live on the stack. */\n"
            "#ifndef TINYMLOPS_MODEL_H\n#define TINYMLOPS_MODEL_H\n#include <stdint.h>\n"
            f"#define MODEL_INPUT_BYTES {sizes[0]}\n#define MODEL_OUTPUT_BYTES {sizes[1]}\n"
            "int model_run(const float *input, float *output);\n#endif\n")
        (work / "model.c").write_text(
            f'#include "model.h"\nvoid {ENTRY}();\n'
            f"int model_run(const float *input, float *output) {{ {ENTRY}(input, output); return 0; }}\n")
        (work / "bundle.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        names = ("lib0.c", "model.c", "model.h", "bundle.json", GRAPH_MEMBER)
        return deterministic_tar([work / name for name in names])


def bundled_graph(blob: bytes) -> bytes | None:
    """The int8 graph an emx bundle was generated from (None for a TVM bundle, which has none)."""
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = tar.getnames()
        member = tar.extractfile(GRAPH_MEMBER) if GRAPH_MEMBER in names else None
        return member.read() if member is not None else None
