"""Find a model's last layer in its ONNX graph, and expose the tensor that layer reads (pure: bytes in, bytes out).

The last layer is what turns the penultimate features into the scores output: a `Gemm`, or a `MatMul` and an
`Add` whose weights are constants, optionally followed by `Softmax`.  `Identity` nodes and QuantizeLinear /
DequantizeLinear pairs between them are passed through, so an int8 QDQ variant is read as well: its weights are
dequantized (per tensor or per channel) and its features are the float tensor the layer's MatMul reads, after its
DequantizeLinear, which is exactly what the quantized layer sees.  Anything else (a convolution head, weights
computed at run time, external data) is refused with NoLastLayerError naming where the search stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import NoLastLayerError
from tinymlops.personalise.onnxproto import parse_model

# TensorProto.DataType values this reader decodes, as numpy types (float16 only from raw_data).
DTYPES: Mapping[int, Any] = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16,
                             11: np.float64}
PASS_THROUGH = ("Identity", "QuantizeLinear", "DequantizeLinear")
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL: the bytes are in another file, which a device never has


@dataclass(frozen=True)
class LastLayer:
    """The layer producing the scores: scores = softmax?(features @ weight + bias)."""

    features: str  # the tensor the layer reads (exposed as an extra output to run the base up to it)
    output: str  # the graph output the layer produces
    weight: NDArray[np.float32]  # [features, classes], dequantized for an int8 variant
    bias: NDArray[np.float32]  # [classes]
    softmax: bool  # the output is the softmax of the layer's logits


def find_last_layer(model: bytes, output: str) -> LastLayer:
    """The last layer ending at graph output `output`; NoLastLayerError naming why there is none."""
    try:
        graph = parse_model(model).graph
    except Exception as exc:  # protobuf's DecodeError, or a message it cannot read
        raise NoLastLayerError(f"the model is not an ONNX protobuf this agent can read ({exc})") from exc
    return _Walk(graph).last_layer(output)


def expose(model: bytes, tensors: list[str]) -> bytes:
    """The same model with `tensors` added to its graph outputs (nothing else changes: same nodes, same weights)."""
    parsed = parse_model(model)
    present = {value.name for value in parsed.graph.output}
    for name in tensors:
        if name not in present:
            parsed.graph.output.add(name=name)
    data: bytes = parsed.SerializeToString()
    return data


class _Walk:
    def __init__(self, graph: Any) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}

    def last_layer(self, output: str) -> LastLayer:
        name, softmax = self._through(output, allow_softmax=True)
        node = self._node(name, output)
        if node.op_type == "Gemm":
            features, weight, bias = self._gemm(node)
        elif node.op_type == "Add":
            features, weight, bias = self._matmul_add(node)
        else:
            raise NoLastLayerError(f"output {output!r}: its last layer is a {node.op_type} ({node.name or name!r}), "
                                   "not a Gemm or a MatMul followed by Add")
        if weight.ndim != 2:
            raise NoLastLayerError(f"output {output!r}: the last layer's weight has shape {weight.shape}, not 2-D")
        classes = weight.shape[1]
        if bias.size not in (1, classes):
            raise NoLastLayerError(f"output {output!r}: the last layer's bias has {bias.size} values for "
                                   f"{classes} classes")
        full_bias = np.broadcast_to(bias.reshape(-1), (classes,)).astype(np.float32)
        return LastLayer(features, output, weight.astype(np.float32), full_bias, softmax)

    def _through(self, name: str, *, allow_softmax: bool) -> tuple[str, bool]:
        """Walk back from `name` through pass-through nodes (and one Softmax when allowed)."""
        softmax = False
        while (node := self.producer.get(name)) is not None and node.domain in ("", "ai.onnx"):
            if node.op_type in PASS_THROUGH:
                name = node.input[0]
            elif node.op_type == "Softmax" and allow_softmax and not softmax:
                axis = _attribute(node, "axis", -1)
                if axis not in (-1, 1):
                    raise NoLastLayerError(f"Softmax {node.name or name!r}: over axis {axis}, not the classes")
                softmax, name = True, node.input[0]
            else:
                break
        return name, softmax

    def _node(self, name: str, output: str) -> Any:
        node = self.producer.get(name)
        if node is None:
            raise NoLastLayerError(f"output {output!r}: {name!r} is not computed by a node of the graph")
        return node

    def _gemm(self, node: Any) -> tuple[str, NDArray[np.float32], NDArray[np.float32]]:
        if _attribute(node, "transA", 0):
            raise NoLastLayerError(f"Gemm {node.name!r}: transA=1 (transposed features) is not read")
        weight = self._constant(node.input[1], f"Gemm {node.name!r} weight")
        if _attribute(node, "transB", 0):
            weight = weight.T
        bias = (self._constant(node.input[2], f"Gemm {node.name!r} bias") if len(node.input) > 2 and node.input[2]
                else np.zeros(weight.shape[1], np.float32))
        alpha, beta = float(_attribute(node, "alpha", 1.0)), float(_attribute(node, "beta", 1.0))
        return node.input[0], alpha * weight, beta * bias

    def _matmul_add(self, add: Any) -> tuple[str, NDArray[np.float32], NDArray[np.float32]]:
        constant = [self._maybe_constant(name) for name in add.input[:2]]
        if len(add.input) != 2 or sum(c is not None for c in constant) != 1:
            raise NoLastLayerError(f"Add {add.name!r}: not a bias (one constant input) added to a MatMul")
        bias = constant[0] if constant[0] is not None else constant[1]
        assert bias is not None
        product, _ = self._through(add.input[1 if constant[0] is not None else 0], allow_softmax=False)
        matmul = self.producer.get(product)
        if matmul is None or matmul.op_type != "MatMul":
            raise NoLastLayerError(f"Add {add.name!r}: its other input {product!r} is not a MatMul's product")
        weight = self._constant(matmul.input[1], f"MatMul {matmul.name!r} weight")
        return matmul.input[0], weight, bias

    def _constant(self, name: str, what: str) -> NDArray[np.float32]:
        value = self._maybe_constant(name)
        if value is None:
            raise NoLastLayerError(f"{what}: {name!r} is not a constant (an initializer, or one dequantized)")
        return value

    def _maybe_constant(self, name: str) -> NDArray[np.float32] | None:
        """An initializer as float32, or the DequantizeLinear of one (scale, zero point, per tensor or axis)."""
        if name in self.initializers:
            return _array(self.initializers[name]).astype(np.float32)
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in self.initializers:
            return None
        quantized = _array(self.initializers[node.input[0]]).astype(np.float32)
        scale = self._maybe_constant(node.input[1])
        zero = self._maybe_constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.float32(0)
        if scale is None or zero is None:
            return None
        if scale.size > 1:  # per channel along `axis`
            shape = [1] * quantized.ndim
            shape[int(_attribute(node, "axis", 1))] = -1
            scale, zero = scale.reshape(shape), np.asarray(zero).reshape(shape if np.size(zero) > 1 else ())
        return ((quantized - zero) * scale).astype(np.float32)


def _array(tensor: Any) -> NDArray[Any]:
    """A TensorProto's values, shaped."""
    if tensor.data_location == EXTERNAL:
        raise NoLastLayerError(f"initializer {tensor.name!r}: its data is stored outside the model file")
    dtype = DTYPES.get(tensor.data_type)
    if dtype is None:
        raise NoLastLayerError(f"initializer {tensor.name!r}: data type {tensor.data_type} is not read")
    shape = tuple(tensor.dims)
    if tensor.raw_data:
        values = np.frombuffer(tensor.raw_data, dtype=np.dtype(dtype).newbyteorder("<"))
    elif tensor.data_type == 1:
        values = np.asarray(tensor.float_data, np.float32)
    elif tensor.data_type == 11:
        values = np.asarray(tensor.double_data, np.float64)
    elif tensor.data_type == 7:
        values = np.asarray(tensor.int64_data, np.int64)
    elif tensor.data_type == 10:  # float16 travels as its bits in int32_data
        values = np.asarray(tensor.int32_data, np.uint16).view(np.float16)
    else:  # int8, uint8 and int32 travel in int32_data
        values = np.asarray(tensor.int32_data, np.int64).astype(dtype)
    return values.reshape(shape)


def _attribute(node: Any, name: str, default: float) -> float:
    for attribute in node.attribute:
        if attribute.name == name:
            return float(attribute.f if attribute.HasField("f") else attribute.i)
    return default
