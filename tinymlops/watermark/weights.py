"""The weight layers of an ONNX model, read the same way from a base, a watermarked copy and any suspect.

A weight layer is the constant weight input of a MatMul, Gemm, Conv or MatMulInteger node, as a matrix
[fan_in, units] (one column per output unit, the units a permutation can shuffle).  Constants are folded
through the nodes variants and thieves put in front of weights: DequantizeLinear (int8 QDQ, per tensor or per
channel), Cast (float16) and Identity/Transpose; a dynamically quantized MatMulInteger's weight is read as its
integers minus the zero point, its scale being a per-unit factor that realignment undoes anyway.  Pruned
weights are simply zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

from tinymlops.errors import ArchitectureMismatchError, NotOnnxError

WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "MatMulInteger": 1}


@dataclass(frozen=True)
class WeightLayer:
    op: str
    tensor: str  # the name of the weight input (an initializer in a float model)
    matrix: NDArray[np.float32]  # [fan_in, units]
    trans_b: bool = False  # a Gemm's weight stored [units, fan_in]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))


def load_onnx(data: bytes, *, what: str) -> onnx.ModelProto:
    """Parse ONNX bytes; NotOnnxError naming `what` when they are not a model with a graph."""
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-like errors depending on its backend
        raise NotOnnxError(f"{what}: not an ONNX model ({type(exc).__name__})") from exc
    if not proto.graph.node:
        raise NotOnnxError(f"{what}: not an ONNX model (no graph nodes)")
    return proto


def unit_matrix(op: str, weight: Any, *, trans_b: bool = False) -> Any:
    """`weight` (a numpy array or a torch tensor, in the node's own layout) as [fan_in, units]."""
    if op == "Conv":
        return weight.reshape(weight.shape[0], -1).T
    if op == "Gemm" and trans_b:
        return weight.T
    return weight


def _dequantize(values: NDArray[Any], scale: NDArray[Any], zero: NDArray[Any] | None, axis: int) -> NDArray[Any]:
    shifted = values.astype(np.float32) - (0.0 if zero is None else zero.astype(np.float32))
    if scale.ndim == 1 and values.ndim > 1:  # per-channel: the scale runs along `axis`
        shape = [1] * values.ndim
        shape[axis] = scale.shape[0]
        scale = scale.reshape(shape)
        if zero is not None and zero.ndim == 1:
            shifted = values.astype(np.float32) - zero.astype(np.float32).reshape(shape)
    return (shifted * scale.astype(np.float32)).astype(np.float32)


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _constants(graph: onnx.GraphProto) -> dict[str, NDArray[Any]]:
    """Initializers and Constant nodes, folded through the nodes that only re-encode a weight."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(_attribute(node, "value", None))
        elif not inputs or not all(name in values for name in inputs):
            continue
        elif node.op_type == "DequantizeLinear":
            zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            values[node.output[0]] = _dequantize(values[inputs[0]], values[node.input[1]], zero,
                                                 int(_attribute(node, "axis", 1)))
        elif node.op_type == "Cast":
            values[node.output[0]] = values[inputs[0]].astype(np.float32)
        elif node.op_type == "Identity":
            values[node.output[0]] = values[inputs[0]]
        elif node.op_type == "Transpose":
            perm = _attribute(node, "perm", None)
            values[node.output[0]] = np.transpose(values[inputs[0]], perm)
    return values


def weight_layers(proto: onnx.ModelProto) -> list[WeightLayer]:
    """The model's weight layers in graph order (ONNX nodes are topologically sorted)."""
    constants = _constants(proto.graph)
    layers = []
    for node in proto.graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in constants:
            continue
        weight = constants[node.input[index]]
        if weight.ndim < 2:
            continue
        if node.op_type == "MatMulInteger":
            zero = constants.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            weight = _dequantize(weight, np.ones((), np.float32), zero, 1)
        trans_b = bool(_attribute(node, "transB", 0))
        matrix = unit_matrix(node.op_type, weight.astype(np.float32), trans_b=trans_b)
        layers.append(WeightLayer(node.op_type, node.input[index], np.ascontiguousarray(matrix, dtype=np.float32),
                                  trans_b))
    return layers


def architecture_difference(base: list[WeightLayer], suspect: list[WeightLayer]) -> str | None:
    """What makes `suspect`'s layers unreadable against `base`'s, or None when they line up."""
    if len(base) != len(suspect):
        return (f"it has {len(suspect)} weight layers (MatMul/Gemm/Conv), the base model has {len(base)} "
                f"({' > '.join(f'{b.shape[0]}x{b.shape[1]}' for b in base)})")
    for number, (ours, theirs) in enumerate(zip(base, suspect, strict=True), start=1):
        if ours.shape != theirs.shape:
            return (f"weight layer {number} ({theirs.op} {theirs.tensor!r}) is {theirs.shape[0]}x{theirs.shape[1]} "
                    f"(inputs x units), the base model's ({ours.op} {ours.tensor!r}) is "
                    f"{ours.shape[0]}x{ours.shape[1]}")
    return None


def require_same_architecture(base: list[WeightLayer], suspect: list[WeightLayer], *, what: str) -> None:
    difference = architecture_difference(base, suspect)
    if difference is not None:
        raise ArchitectureMismatchError(f"{what}: another architecture than the base model: {difference}")
