"""ONNX to a trainable torch module (onnx2torch) and the trained values back into the very same ONNX graph.

Used where weights are trained but the model must keep its interface: embedding a watermark
(`tinymlops.watermark.embed`) and federated clients (`tinymlops.federated.torchmodel`).
The watermark may change weight values only: the graph, its operators, shapes and every other byte stay as
they are.  So nothing is exported from torch; each torch tensor the converter made from an ONNX initializer is
bound to it (same values, possibly transposed: a Gemm becomes an nn.Linear), trained, and its values written
back into that initializer's raw data.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

from tinymlops.errors import WatermarkError
from tinymlops.extras import require_extra


def _refuse_detection_operator(*_: Any, **__: Any) -> Any:
    raise WatermarkError("detection operators (NonMaxSuppression, RoiAlign) are not supported for watermarking")


def import_onnx2torch() -> types.ModuleType:
    """onnx2torch, importable beside a CPU-only torch.

    onnx2torch imports torchvision for its NonMaxSuppression and RoiAlign converters, and torchvision wheels
    built for another torch (PyPI's CUDA one beside torch+cpu) fail to load ("operator torchvision::nms does
    not exist").  Watermarked models are classifiers, so when torchvision cannot load, its half-imported
    modules are dropped and a stand-in whose detection operators refuse by name takes its place.
    """
    require_extra("watermark", "watermarking", "torch", "onnx2torch")
    try:
        import torchvision  # noqa: F401 (only whether it loads matters)
    except Exception:  # RuntimeError from a mismatched build, ImportError when absent
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        stand_in, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.nms = ops.roi_align = ops.box_convert = _refuse_detection_operator  # type: ignore[attr-defined]
        stand_in.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, ops
    import onnx2torch

    module: types.ModuleType = onnx2torch
    return module


@dataclass
class Binding:
    """A trainable torch tensor and the ONNX initializer it came from."""

    initializer: str
    tensor: Any  # torch.Tensor, requires_grad
    transposed: bool


@dataclass
class Trainable:
    module: Any  # torch.fx.GraphModule
    bindings: list[Binding]

    def tensor_for(self, initializer: str) -> Any:
        for binding in self.bindings:
            if binding.initializer == initializer:
                return binding.tensor if not binding.transposed else binding.tensor.T
        raise WatermarkError(f"initializer {initializer!r} did not become a trainable tensor in the converted model")


def _float_initializers(proto: onnx.ModelProto) -> dict[str, NDArray[np.float32]]:
    return {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer
            if init.data_type == onnx.TensorProto.FLOAT}


def trainable(proto: onnx.ModelProto) -> Trainable:
    """The model as a torch module whose initializer-backed float tensors are trainable and bound to their names.

    A tensor whose values match two initializers (say two zero biases of one shape) stays frozen: writing its
    trained values back could swap them."""
    import torch

    converter = import_onnx2torch()
    try:
        module = converter.convert(proto)
    except WatermarkError:
        raise
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... for what it cannot convert
        raise WatermarkError(f"onnx2torch cannot turn this model into a trainable one: {type(exc).__name__}: "
                             f"{str(exc)[:300]}") from exc
    initializers = _float_initializers(proto)
    bindings = []
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for _, tensor in tensors:
        if tensor.dtype != torch.float32:
            continue
        values = tensor.detach().numpy()
        matches = [(name, False) for name, array in initializers.items()
                   if array.shape == values.shape and np.array_equal(array, values)]
        matches += [(name, True) for name, array in initializers.items()
                    if array.ndim == 2 and array.T.shape == values.shape and np.array_equal(array.T, values)]
        if len(matches) == 1:
            tensor.requires_grad_(True)
            bindings.append(Binding(matches[0][0], tensor, matches[0][1]))
        else:
            tensor.requires_grad_(False)
    return Trainable(module, bindings)


def write_back(proto: onnx.ModelProto, bindings: list[Binding]) -> bytes:
    """The model's bytes with each bound initializer's values replaced by its trained tensor's."""
    trained = onnx.ModelProto()
    trained.CopyFrom(proto)
    values = {b.initializer: (b.tensor.detach().numpy().T if b.transposed else b.tensor.detach().numpy())
              for b in bindings}
    for init in trained.graph.initializer:
        if init.name in values:
            array = np.ascontiguousarray(values[init.name], dtype=np.float32).reshape(tuple(init.dims))
            init.ClearField("float_data")
            init.raw_data = array.astype("<f4").tobytes()  # ONNX raw data is little-endian on every host
    return bytes(trained.SerializeToString())
