"""The MLPerf Tiny reference architectures as ONNX graphs, with seeded random weights.

ResNet-8 (image classification, 32×32×3), DS-CNN (keyword spotting, 49×10
MFCC) and the fully connected autoencoder (anomaly detection, 640 inputs),
layer for layer as in MLPerf Tiny's reference models, batch norms folded into
the preceding layer's bias as an inference export would.  No trained weights
or data sets can be fetched here, so the weights are He-initialised from a
seed: right for size, latency and quantization-error measurements, and
nothing else (there is no accuracy to report, only agreement with fp32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass
class _Graph:
    """Accumulates nodes and initializers; each layer method returns its output tensor's name."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    weights: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def _init(self, name: str, values: NDArray[np.floating[Any]]) -> str:
        self.weights.append(numpy_helper.from_array(values.astype(np.float32), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, kernel: tuple[int, int], stride: int = 1,
             group: int = 1, relu: bool = True) -> str:
        name = self._name("conv")
        fan_in = c_in // group * kernel[0] * kernel[1]
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (c_out, c_in // group, *kernel))
        b = self.rng.normal(0.0, 0.01, (c_out,))
        out = f"{name}_out"
        self.nodes.append(helper.make_node(
            "Conv", [x, self._init(f"{name}_w", w), self._init(f"{name}_b", b)], [out], name=name,
            kernel_shape=list(kernel), strides=[stride, stride], group=group, auto_pad="SAME_UPPER",
        ))
        return self.relu(out) if relu else out

    def dense(self, x: str, n_in: int, n_out: int, relu: bool = True) -> str:
        name = self._name("dense")
        w = self.rng.normal(0.0, np.sqrt(2.0 / n_in), (n_in, n_out))
        b = self.rng.normal(0.0, 0.01, (n_out,))
        out = f"{name}_out"
        self.nodes.append(helper.make_node(
            "Gemm", [x, self._init(f"{name}_w", w), self._init(f"{name}_b", b)], [out], name=name,
        ))
        return self.relu(out) if relu else out

    def relu(self, x: str) -> str:
        out = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    def add(self, a: str, b: str) -> str:
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return out

    def pool_flatten(self, x: str) -> str:
        pooled, flat = self._name("pool"), self._name("flatten")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=pooled))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
        return flat

    def softmax(self, x: str, out: str) -> str:
        self.nodes.append(helper.make_node("Softmax", [x], [out], name="softmax", axis=1))
        return out

    def model(self, name: str, input_shape: list[int | str], output: str, output_shape: list[int | str]) -> bytes:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
            self.weights,
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="tinymlops.model.mlperf_tiny")
        proto.ir_version = 8  # readable by onnxruntime releases a device may still run
        onnx.checker.check_model(proto, full_check=True)
        return bytes(proto.SerializeToString())


def resnet8(seed: int = 0) -> bytes:
    """MLPerf Tiny image classification: ResNet-8 on CIFAR-10-sized input, 10 classes (~78 k parameters)."""
    g = _Graph(np.random.default_rng(seed))
    x = g.conv("input", 3, 16, (3, 3))
    for c_in, c_out, stride in ((16, 16, 1), (16, 32, 2), (32, 64, 2)):
        y = g.conv(x, c_in, c_out, (3, 3), stride)
        y = g.conv(y, c_out, c_out, (3, 3), relu=False)
        shortcut = x if stride == 1 else g.conv(x, c_in, c_out, (1, 1), stride, relu=False)
        x = g.relu(g.add(y, shortcut))
    logits = g.dense(g.pool_flatten(x), 64, 10, relu=False)
    return g.model("resnet8", ["N", 3, 32, 32], g.softmax(logits, "probabilities"), ["N", 10])


def ds_cnn(seed: int = 0) -> bytes:
    """MLPerf Tiny keyword spotting: DS-CNN (small) on 49×10 MFCC features, 12 classes (~23 k parameters)."""
    g = _Graph(np.random.default_rng(seed))
    x = g.conv("input", 1, 64, (10, 4), stride=2)
    for _ in range(4):
        x = g.conv(x, 64, 64, (3, 3), group=64)  # depthwise
        x = g.conv(x, 64, 64, (1, 1))  # pointwise
    logits = g.dense(g.pool_flatten(x), 64, 12, relu=False)
    return g.model("ds_cnn", ["N", 1, 49, 10], g.softmax(logits, "probabilities"), ["N", 12])


def autoencoder(seed: int = 0) -> bytes:
    """MLPerf Tiny anomaly detection: the fully connected autoencoder on 640 inputs (~270 k parameters)."""
    g = _Graph(np.random.default_rng(seed))
    x = "input"
    sizes = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
    for n_in, n_out in zip(sizes, sizes[1:], strict=False):
        x = g.dense(x, n_in, n_out)
    out = g.dense(x, 128, 640, relu=False)
    g.nodes[-1].output[0] = "reconstruction"
    del out
    return g.model("fc_autoencoder", ["N", 640], "reconstruction", ["N", 640])


MODELS: dict[str, tuple[Callable[[int], bytes], tuple[int, ...]]] = {
    "resnet8": (resnet8, (3, 32, 32)),
    "ds-cnn": (ds_cnn, (1, 49, 10)),
    "fc-autoencoder": (autoencoder, (640,)),
}


def synthetic_inputs(shape: tuple[int, ...], count: int = 200, seed: int = 0) -> NDArray[np.float32]:
    """Standard-normal inputs (no data set can be had here): for calibration and agreement only."""
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
