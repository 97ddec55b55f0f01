"""Scoring one variant against the base with onnxruntime: quality, speed, size, memory.

Latency is single-sample inference on one thread (intra- and inter-op
threads = 1, sequential execution), the way a small device runs it; it is
a property of this build machine, recorded with the thread count so the
numbers are comparable between variants, not between machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from tinymlops.errors import InvalidDataError

# The runtime side lives in tinymlops.runners (devices import it without the build chain); re-exported here
# for the factory's callers.
from tinymlops.runners import THREADS as THREADS
from tinymlops.runners import Runner as Runner
from tinymlops.runners import VariantRunner as VariantRunner
from tinymlops.runners import open_session as open_session
from tinymlops.runners import scores_output as scores_output
from tinymlops.variants.source import Dataset

HEALTH_SAMPLES = 4
# Measured on x86_64: importing onnxruntime and opening a session for the digits MLP adds
# ~43 MB RSS to CPython; a native embedding needs less, so 32 MB is the floor we ask of a device.
RUNTIME_BASE_MB = 32
MIB = 1 << 20


def _classes(scores: NDArray[np.float32]) -> NDArray[np.int64]:
    return np.asarray(scores.reshape(len(scores), -1).argmax(axis=1), dtype=np.int64)


def accuracy(scores: NDArray[np.float32], labels: NDArray[np.int64]) -> float:
    if len(scores) != len(labels):
        raise InvalidDataError(f"data: y has {len(labels)} labels for {len(scores)} samples")
    return float(np.mean(_classes(scores) == labels))


def estimate_memory(model: bytes) -> int:
    """Peak bytes of one batch-1 inference: the serialized model (held while the session is built),
    the decoded weights, and every intermediate tensor (an upper bound: the runtime reuses buffers).

    Dequantized weights are not counted: onnxruntime fuses DequantizeLinear of a constant into
    its integer kernels, so int8 weights stay int8 in memory."""
    proto = onnx.load_model_from_string(model)
    weights = sum(
        math.prod(init.dims) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        for init in proto.graph.initializer
    )
    inferred = onnx.shape_inference.infer_shapes(proto)
    initializers = {init.name for init in proto.graph.initializer}
    folded = {node.output[0] for node in proto.graph.node
              if node.op_type == "DequantizeLinear" and node.input[0] in initializers}
    activations = 0
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if value.name in initializers or value.name in folded or not tensor.elem_type:
            continue
        dims = [dim.dim_value if dim.HasField("dim_value") else 1 for dim in tensor.shape.dim]
        activations += math.prod(dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    return len(model) + int(weights) + activations


def graph_stats(model: bytes) -> dict[str, Any]:
    """Parameter count (and how many are zero), and how often each operator occurs."""
    from collections import Counter

    from onnx import numpy_helper

    proto = onnx.load_model_from_string(model)
    params = zeros = 0
    for init in proto.graph.initializer:
        values = numpy_helper.to_array(init)
        params += int(values.size)
        zeros += int(values.size - np.count_nonzero(values))
    histogram = Counter(node.op_type for node in proto.graph.node)
    return {
        "params": params,
        "zero_params": zeros,
        "sparsity": round(zeros / params, 4) if params else 0.0,
        "op_histogram": dict(sorted(histogram.items())),
    }


def compressed_size(blob: bytes) -> int:
    """What the artifact costs on the wire and in a compressed store (pruned zeros shrink here)."""
    import zlib

    return len(zlib.compress(blob, 9))


def operators(model: bytes) -> tuple[list[str], int]:
    """Sorted operator names (domain-qualified outside the default domain) and the default opset."""
    proto = onnx.load_model_from_string(model)
    ops = {f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
           for node in proto.graph.node}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return sorted(ops), int(opset)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    requirements: dict[str, Any]
    health_check: dict[str, Any]
    quality: float  # accuracy when labelled, else agreement with the base
    base_quality: float
    refusal: str | None = None  # why the variant is not accepted whatever its quality (e.g. wrong outputs)


def evaluate(
    base: bytes,
    variant: bytes,
    dataset: Dataset,
    *,
    health_atol: float,
    runner: VariantRunner | None = None,
    graph: bytes | None = None,
    measure_latency: bool = True,
    runtime: str = "onnxruntime",
) -> Evaluation:
    """Score `variant` against `base` on the held-out data.

    For ONNX variants everything comes from the variant bytes.  A compiled variant
    passes its `runner` (TVM's), and `graph`, the ONNX graph it was compiled from,
    for operators, parameters and memory; when it runs on another architecture,
    `runner` is the same module compiled for this host and `measure_latency` is off:
    a latency measured here would say nothing about the device.
    """
    graph = variant if graph is None else graph
    base_runner = Runner.load(base)
    scorer: VariantRunner = runner if runner is not None else Runner.load(variant)
    x = dataset.evaluation
    base_scores, scores = base_runner.many(x), scorer.many(x)
    if base_scores.shape != scores.shape:
        raise ValueError(f"variant output shape {scores.shape} differs from the base's {base_scores.shape}")
    agreement = float(np.mean(_classes(scores) == _classes(base_scores)))
    metrics: dict[str, Any] = {}
    if dataset.labels is not None:
        quality, base_quality = accuracy(scores, dataset.labels), accuracy(base_scores, dataset.labels)
        metrics["accuracy"] = round(quality, 6)
    else:
        quality, base_quality = agreement, 1.0
    p50, p95 = scorer.latency_ms(x) if measure_latency else (None, None)
    # A compiled artifact replaces the serialized graph in memory; the tensors stay the same.
    memory = estimate_memory(graph) - len(graph) + len(variant)
    ops, opset = operators(graph)
    golden = x[:HEALTH_SAMPLES]
    metrics.update(
        agreement=round(agreement, 6),
        max_abs_diff=float(np.max(np.abs(scores - base_scores))),
        latency_ms_p50=p50,
        latency_ms_p95=p95,
        threads=THREADS,
        memory_bytes=memory,
        compressed_bytes=compressed_size(variant),
        eval_samples=len(x),
        eval_data=dataset.kind,
        **graph_stats(graph),
    )
    return Evaluation(
        metrics=metrics,
        requirements={
            "arch": ["any"],
            "runtime": runtime,
            "min_ram_mb": RUNTIME_BASE_MB + math.ceil(memory / MIB),
            "operators": ops,
            "opset": opset,
        },
        health_check={
            "input_name": scorer.input_name,
            "output_name": scorer.output_name,
            "inputs": golden.tolist(),
            "outputs": [scorer.one(sample).tolist() for sample in golden],
            "atol": health_atol,
        },
        quality=quality,
        base_quality=base_quality,
    )
