"""Variant transforms: small strategies behind one interface (Flower's Strategy shape).

A transform turns model bytes into model bytes; a variant is a chain of them
(`matrix.VariantSpec`, e.g. prune 75 % then quantize to int8).  Adding one means
one subclass here and one rule in `matrix.py`; builds, caching, lineage and the
menu need no change.  Each uses the library made for its job: onnxruntime's
float16 converter and quantizers, Apache TVM (`variants/tvm.py`) for compilation;
magnitude pruning is plain numpy over the ONNX weight tensors, which is all it is.
"""

from __future__ import annotations

import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from numpy.typing import NDArray

from tinymlops.errors import SpecError


class Transform(ABC):
    """Model bytes in, model bytes out; `params` go into the lineage and the cache key."""

    variant_id: ClassVar[str]
    precision: ClassVar[str]
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    # "onnx" for graph rewrites; compilers produce a runtime-specific artifact.
    output_format: ClassVar[str] = "onnx"
    # How far a device's outputs may stray from the golden ones in the menu:
    # int8 kernels differ slightly between CPUs (rounding in VNNI vs NEON paths).
    health_atol: ClassVar[float] = 1e-4

    @property
    def params(self) -> dict[str, Any]:
        return {}

    @property
    def lineage(self) -> list[dict[str, Any]]:
        """The transforms recorded in the menu; identity records none."""
        return [{"name": self.name, "params": self.params}]

    def resolve(self, model: bytes) -> Transform:
        """This transform with every `auto` parameter decided for `model` (recorded in lineage)."""
        return self

    def check_supported(self, model: bytes, *, variant_id: str) -> None:  # noqa: B027 (optional hook)
        """Raise UnsupportedOperatorError naming what `model` uses that this transform's target lacks.

        onnxruntime runs every standard operator, so graph rewrites need no check."""

    @abstractmethod
    def apply(self, model: bytes, calibration: NDArray[np.float32] | None, input_name: str) -> bytes:
        """Return the variant's ONNX bytes; deterministic for the same inputs."""


def compact_names(model: bytes) -> bytes:
    """The same graph with short internal tensor names and no node names or doc strings.

    The quantizers name every tensor and node after its origin ("conv_3_w_DequantizeLinear_Output"):
    useful when debugging the conversion, pure weight on a device (about 8 % of an int8 ResNet-8).
    Graph inputs and outputs keep their names, which callers feed and read.  Graphs with subgraphs
    (If/Loop/Scan bodies see outer names) are left as they are.
    """
    proto = onnx.load_model_from_string(model)
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in proto.graph.node for attr in node.attribute):
        return model
    keep = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names):x}")

    for init in proto.graph.initializer:
        init.name, init.doc_string = short(init.name), ""
    for node in proto.graph.node:
        node.name, node.doc_string = "", ""
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    for value in proto.graph.value_info:
        value.name = short(value.name)
    proto.doc_string = proto.graph.doc_string = ""
    return bytes(proto.SerializeToString())


class Identity(Transform):
    """The base model as it is: the reference every other variant is scored against."""

    variant_id = "fp32"
    precision = "fp32"
    name = "identity"

    @property
    def lineage(self) -> list[dict[str, Any]]:
        return []

    def apply(self, model: bytes, calibration: NDArray[np.float32] | None, input_name: str) -> bytes:
        return model


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over in-memory samples."""

    def __init__(self, input_name: str, batches: list[NDArray[np.float32]]) -> None:
        self._feeds: Iterator[dict[str, NDArray[np.float32]]] = iter({input_name: b} for b in batches)

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._feeds, None)


class Int8Static(Transform):
    """Static int8 quantization (QDQ) with onnxruntime.quantization, calibrated on DATA.npz.

    Activations uint8 and weights int8 (U8S8, onnxruntime's recommended CPU
    pairing), MinMax calibration.  Per-channel weight scales on `auto` are
    used when the graph has convolutions, whose filters differ widely in
    range; for MatMul-only models (the digits MLP) per-tensor measured as
    accurate and 2 KB smaller.
    """

    variant_id = "int8-static"
    precision = "int8"
    name = "quantize_static"
    needs_calibration = True
    health_atol = 2e-2

    def __init__(self, per_channel: bool | str = "auto", calibrate_method: str = "MinMax",
                 quant_format: str = "QDQ") -> None:
        """`quant_format` QOperator writes QLinearConv/QGemm/... nodes instead of QDQ pairs: what an
        integer code generator for a microcontroller takes (`variants/mcu/emx.py`)."""
        self.per_channel = per_channel
        self.calibrate_method = calibrate_method
        self.quant_format = quant_format

    def resolved_per_channel(self, model: onnx.ModelProto) -> bool:
        if self.per_channel == "auto":
            return any(node.op_type in ("Conv", "ConvTranspose") for node in model.graph.node)
        return bool(self.per_channel)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "format": self.quant_format,
            "activation_type": "QUInt8",
            "weight_type": "QInt8",
            "per_channel": self.per_channel,
            "calibrate_method": self.calibrate_method,
        }

    def apply(self, model: bytes, calibration: NDArray[np.float32] | None, input_name: str) -> bytes:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 static quantization needs calibration samples")
        proto = onnx.load_model_from_string(model)
        batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[:1]
        fixed_batch = bool(batch_dim) and batch_dim[0].HasField("dim_value")
        # Batching does not change MinMax ranges; one batch is just faster when the graph allows it.
        batches = [calibration[i : i + 1] for i in range(len(calibration))] if fixed_batch else [calibration]
        _quiet_preprocessing_hint()
        with tempfile.TemporaryDirectory(prefix="tinymlops-quant-") as tmp:
            src, dst = Path(tmp) / "base.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(model)
            quantize_static(
                src,
                dst,
                _Reader(input_name, batches),  # duck-typed CalibrationDataReader
                quant_format=getattr(QuantFormat, self.quant_format),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=self.resolved_per_channel(proto),
                calibrate_method=getattr(CalibrationMethod, self.calibrate_method),
            )
            return compact_names(dst.read_bytes())

    def resolve(self, model: bytes) -> Transform:
        if self.per_channel != "auto":
            return self
        return Int8Static(self.resolved_per_channel(onnx.load_model_from_string(model)), self.calibrate_method,
                          self.quant_format)


class Fp16(Transform):
    """float16 weights and activations (onnxruntime's converter), with float32 inputs and outputs kept
    so callers feed and read the same tensors as with the base model."""

    variant_id = "fp16"
    precision = "fp16"
    name = "convert_float16"
    health_atol = 5e-3

    @property
    def params(self) -> dict[str, Any]:
        return {"keep_io_types": True}

    def apply(self, model: bytes, calibration: NDArray[np.float32] | None, input_name: str) -> bytes:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        converted = OnnxModel(convert_float_to_float16(onnx.load_model_from_string(model), keep_io_types=True))
        # The converter appends its input Casts at the end of the node list; ONNX requires topological order.
        converted.topological_sort()
        return compact_names(bytes(converted.model.SerializeToString()))


class Int8Dynamic(Transform):
    """Dynamic int8 quantization (onnxruntime.quantization): int8 weights, activations quantized at run time.

    Needs no calibration data; per-channel weight scales on `auto` as for static quantization.
    """

    variant_id = "int8-dynamic"
    precision = "int8"
    name = "quantize_dynamic"
    health_atol = 2e-2

    def __init__(self, per_channel: bool | str = "auto") -> None:
        self.per_channel = per_channel

    @property
    def params(self) -> dict[str, Any]:
        return {"weight_type": "QInt8", "per_channel": self.per_channel}

    def resolve(self, model: bytes) -> Transform:
        if self.per_channel != "auto":
            return self
        proto = onnx.load_model_from_string(model)
        return Int8Dynamic(any(node.op_type in ("Conv", "ConvTranspose") for node in proto.graph.node))

    def apply(self, model: bytes, calibration: NDArray[np.float32] | None, input_name: str) -> bytes:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _quiet_preprocessing_hint()
        with tempfile.TemporaryDirectory(prefix="tinymlops-quant-") as tmp:
            src, dst = Path(tmp) / "base.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(model)
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=self.per_channel is True)
            return compact_names(dst.read_bytes())


# Weight inputs worth pruning: the matrices of MatMul/Gemm and the filters of Conv (biases are not).
PRUNABLE_INPUTS = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (1,), "ConvTranspose": (1,)}


def prunable_weights(proto: onnx.ModelProto) -> list[str]:
    """Names of the float initializers that are weight matrices or filters (2-D or more)."""
    initializers = {init.name: init for init in proto.graph.initializer}
    names: list[str] = []
    for node in proto.graph.node:
        for index in PRUNABLE_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] in initializers:
                init = initializers[node.input[index]]
                if len(init.dims) >= 2 and init.data_type == onnx.TensorProto.FLOAT and init.name not in names:
                    names.append(init.name)
    return names


class Prune(Transform):
    """Unstructured magnitude pruning: in each weight tensor, the `sparsity` share of smallest |w| become 0.

    Layer-wise rather than global, so no layer is pruned away entirely.  Zeros do not
    shrink a dense ONNX file, but they compress (the menu reports both sizes) and
    survive int8 quantization (symmetric int8 weights keep 0 exact).
    """

    precision = "fp32"
    name = "magnitude_prune"
    health_atol = 1e-4

    def __init__(self, sparsity: float) -> None:
        if not 0.0 < sparsity < 1.0:
            raise SpecError(f"spec.variants.sparsities: {sparsity} is not a fraction strictly between 0 and 1")
        self.sparsity = sparsity

    @property
    def params(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "scope": "per-tensor", "criterion": "magnitude"}

    def apply(self, model: bytes, calibration: NDArray[np.float32] | None, input_name: str) -> bytes:
        from onnx import numpy_helper

        proto = onnx.load_model_from_string(model)
        targets = set(prunable_weights(proto))
        if not targets:
            raise ValueError("no MatMul/Gemm/Conv weight tensor to prune")
        for init in proto.graph.initializer:
            if init.name not in targets:
                continue
            weights = numpy_helper.to_array(init).copy()
            flat = weights.reshape(-1)
            cut = int(self.sparsity * flat.size)
            # argsort, not a threshold: ties at the threshold would overshoot the asked sparsity.
            flat[np.argsort(np.abs(flat), kind="stable")[:cut]] = 0.0
            init.CopyFrom(numpy_helper.from_array(weights, init.name))
        return bytes(proto.SerializeToString())


def _drop_preprocessing_hint(record: logging.LogRecord) -> bool:
    return "pre-processing" not in record.getMessage()


def _quiet_preprocessing_hint() -> None:
    """The quantizer logs a hint to pre-process on the root logger for every call.

    quant_pre_process fuses MatMul+Add into Gemm, which onnxruntime 1.31's
    per-channel QDQ quantizer then fails on; we skip it and drop the hint
    (only that message) instead of repeating it in every build log.
    """
    root = logging.getLogger()
    if _drop_preprocessing_hint not in root.filters:
        root.addFilter(_drop_preprocessing_hint)


# precision (as in EdgeModel spec.variants.precisions) -> transform factory
TRANSFORMS: dict[str, Callable[[], Transform]] = {
    "fp32": Identity,
    "fp16": Fp16,
    "int8": Int8Static,
    "int8-dynamic": Int8Dynamic,
}


def transform_for(precision: str) -> Transform:
    factory = TRANSFORMS.get(precision)
    if factory is None:
        raise SpecError(
            f"spec.variants.precisions: {precision!r} has no transform yet (available: {', '.join(TRANSFORMS)})"
        )
    return factory()
