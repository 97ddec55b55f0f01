"""The federated model: an ONNX graph trained as a torch module, its weights exchanged as named arrays.

The ONNX to torch conversion and the write-back are the watermark's (`tinymlops.onnxtorch`, onnx2torch):
each trainable torch tensor is bound to the ONNX initializer it came from, so the aggregate is written back into
the very same graph (same operators, inputs, outputs and shapes) and the variant pipeline builds it like any
other source model.  Arrays travel in the initializers' own layout, sorted by name: every client and the server
agree on them without sharing a torch module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from tinymlops.errors import UntrainableModelError
from tinymlops.onnxtorch import Binding, import_onnx2torch, trainable, write_back

Arrays = list[NDArray[np.float32]]
PROBABILITY_FLOOR = 1e-7  # a softmax output's log: probabilities this small are clamped, not -inf
# Local SGD keeps momentum across a client's steps (fresh each round).  A device holds a few images and fits them
# in a handful of steps, after which its gradient, and so its share of the average, fades: plain SGD at lr 0.1
# left FedAvg 4 points under central training on the benchmark (benchmarks/results/federated.md); momentum
# carries each client further along the directions its steps agree on and closes half of that gap.
LOCAL_MOMENTUM = 0.9


def unconvertible_operators(proto: onnx.ModelProto) -> list[str]:
    """The graph's operators onnx2torch has no converter for, as `domain:Op@version`, in graph order."""
    registry = import_onnx2torch().node_converters.registry
    versions = {opset.domain or "": opset.version for opset in proto.opset_import}
    missing = []
    for node in proto.graph.node:
        domain = node.domain or ""
        try:
            registry.get_converter(node.op_type, versions.get(domain, 1), domain or "")
        except NotImplementedError:
            missing.append(f"{domain + ':' if domain else ''}{node.op_type}@{versions.get(domain, 1)}")
    return list(dict.fromkeys(missing))


def _outputs_probabilities(proto: onnx.ModelProto) -> bool:
    """Whether the graph ends in a Softmax, through Identity nodes (its output is probabilities, trained through
    their log; a logits output is trained with cross-entropy directly)."""
    producers = {output: node for node in proto.graph.node for output in node.output}
    node = producers.get(proto.graph.output[0].name)
    while node is not None and node.op_type == "Identity":
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "Softmax"


@dataclass
class FederatedModel:
    """A trainable torch copy of an ONNX model and the names of the initializers it trains."""

    proto: onnx.ModelProto
    module: Any  # torch.fx.GraphModule
    bindings: list[Binding]
    probabilities: bool

    @property
    def names(self) -> list[str]:
        return [binding.initializer for binding in self.bindings]

    def get_arrays(self) -> Arrays:
        return [np.ascontiguousarray((b.tensor.detach().T if b.transposed else b.tensor.detach()).numpy(),
                                     dtype=np.float32) for b in self.bindings]

    def set_arrays(self, arrays: Arrays) -> None:
        import torch

        with torch.no_grad():
            for binding, array in zip(self.bindings, arrays, strict=True):
                value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
                binding.tensor.copy_(value.T if binding.transposed else value)

    def export(self, arrays: Arrays) -> bytes:
        """The original graph's bytes with `arrays` as its trained initializers."""
        self.set_arrays(arrays)
        return write_back(self.proto, self.bindings)

    def _loss(self, output: Any, y: Any) -> Any:
        import torch.nn.functional as F

        if self.probabilities:
            return F.nll_loss(output.clamp_min(PROBABILITY_FLOOR).log(), y)
        return F.cross_entropy(output, y)

    def train(self, x: NDArray[np.float32], y: NDArray[np.int64], *, epochs: int, learning_rate: float,
              batch_size: int, proximal_mu: float = 0.0, momentum: float = LOCAL_MOMENTUM, seed: int = 0) -> float:
        """Train on (x, y) in place with SGD (with `momentum`); FedProx's proximal term when `proximal_mu` > 0.
        Mean last-epoch loss."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        params = [b.tensor for b in self.bindings]
        anchor = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=learning_rate, momentum=momentum)
        xs, ys = torch.from_numpy(x), torch.from_numpy(y)
        self.module.train()
        last = 0.0
        for _ in range(epochs):
            order, total = torch.randperm(len(xs), generator=generator), 0.0
            for start in range(0, len(xs), batch_size):
                batch = order[start:start + batch_size]
                optimizer.zero_grad()
                loss = self._loss(self.module(xs[batch]), ys[batch])
                if proximal_mu > 0:
                    loss = loss + proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor,
                                                                                          strict=True))
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            last = total / max(len(xs), 1)
        return last

    def evaluate(self, x: NDArray[np.float32], y: NDArray[np.int64]) -> tuple[float, NDArray[np.int64]]:
        """Mean loss on (x, y) and the predicted classes."""
        import torch

        self.module.eval()
        with torch.no_grad():
            output = self.module(torch.from_numpy(x))
            loss = float(self._loss(output, torch.from_numpy(y)))
        return loss, output.argmax(dim=1).numpy().astype(np.int64)


def load_model(data: bytes, *, what: str) -> FederatedModel:
    """The ONNX bytes as a FederatedModel; UntrainableModelError naming the operators the path cannot train."""
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError or its backend's equivalent
        raise UntrainableModelError(f"{what}: not an ONNX model ({type(exc).__name__})") from exc
    missing = unconvertible_operators(proto)
    if missing:
        raise UntrainableModelError(f"{what}: onnx2torch cannot convert {', '.join(missing)}: the model cannot be "
                                    "trained federatedly")
    try:
        converted = trainable(proto)
    except Exception as exc:  # onnx2torch raises plain exceptions on graphs it half supports
        raise UntrainableModelError(f"{what}: onnx2torch could not convert the graph: {exc}") from exc
    if not converted.bindings:
        raise UntrainableModelError(f"{what}: no float initializer became a trainable tensor (nothing to train)")
    bindings = sorted(converted.bindings, key=lambda b: b.initializer)
    return FederatedModel(proto, converted.module, bindings, _outputs_probabilities(proto))
