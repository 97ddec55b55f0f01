"""Candidate split points of a variant: where its graph can run in two parts, a head on the device and a tail on a
server, and what each costs (Neurosurgeon, Kang et al. 2017).

A split point is a tensor that alone carries everything the rest of the graph needs from its first part: after
some node (in the graph's topological order), the only value produced so far and still used afterwards.  For
each (at most MAX_POINTS, spread over the graph) the factory cuts the variant with `onnx.utils.extract_model`
into a head (model input → that tensor) and a tail (that tensor → the model's scores) and records:

- `values` and the bytes to send per sample: `bytes_fp32` (float32 as computed), `bytes_int8` (quantised
  per tensor, uint8 plus a float32 scale and an int32 zero point);
- `head_ms_p50`, `tail_ms_p50`: each part's latency on the build host (one thread, as every variant's);
- `max_abs_diff` of head → tail against the whole variant on up to EXACT_SAMPLES evaluation samples, and
  `exact` (within EXACT_ATOL); `int8_agreement`: the share of those samples whose class survives sending the
  tensor quantised to int8.

Only float tensors qualify (in a QDQ-quantised graph, the dequantised side of a pair), and only ONNX variants
the factory accepted are split.  The menu carries the points under the variant's `split`; `with_parts` adds
each exact point's head and tail as content-addressed blobs (`head`, `tail`: sha256 and size), which the
device (head) and the gateway's tail service (tail) run.  An encrypted menu gets no parts: head and tail
together are the whole model, in the clear.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from tinymlops.runners import Runner
from tinymlops.store import sha256_bytes

MAX_POINTS = 6
EXACT_ATOL = 1e-5
EXACT_SAMPLES = 64
INT8_OVERHEAD_BYTES = 8  # the float32 scale and int32 zero point sent with a uint8 tensor


def cut_tensors(model: onnx.ModelProto) -> list[str]:
    """The float tensors, in topological order, that alone cross from the graph's first part to the rest."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    outputs = {out.name for out in graph.output}
    floats = _float_tensors(model)
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in constants:
                last_use[name] = index
    produced: list[tuple[int, str]] = [(-1, value.name) for value in graph.input if value.name not in constants]
    cuts = []
    for index, node in enumerate(graph.node[:-1]):
        produced += [(index, name) for name in node.output if name]
        crossing = {name for at, name in produced if last_use.get(name, -1) > index or name in outputs}
        if len(crossing) == 1:
            (name,) = crossing
            if name in floats and name not in outputs and not any(at < 0 for at, n in produced if n == name):
                cuts.append(name)
    return cuts


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def spread(items: list[str], most: int) -> list[str]:
    """At most `most` of `items`, evenly spaced, first and last kept."""
    if len(items) <= most:
        return list(items)
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


def _extract(path: Path, workdir: Path, inputs: list[str], outputs: list[str], name: str) -> bytes:
    out = workdir / f"{name}.onnx"
    onnx.utils.extract_model(str(path), str(out), inputs, outputs)
    return out.read_bytes()


def head_and_tail(variant: bytes, tensor: str) -> tuple[bytes, bytes]:
    """The ONNX head (the variant's input → `tensor`) and tail (`tensor` → its scores) of a split point."""
    whole = Runner.load(variant)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = workdir / "variant.onnx"
        path.write_bytes(variant)
        return (_extract(path, workdir, [whole.input_name], [tensor], "head"),
                _extract(path, workdir, [tensor], [whole.output_name], "tail"))


def _int8_roundtrip(values: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per-tensor affine uint8 quantisation of each sample, and back."""
    flat = values.reshape(len(values), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    scale = np.where(high > low, (high - low) / 255.0, 1.0)
    quantised = np.clip(np.round((flat - low) / scale), 0, 255)
    restored: NDArray[np.float32] = (quantised * scale + low).astype(np.float32).reshape(values.shape)
    return restored


def split_points(variant: bytes, x: NDArray[np.float32]) -> list[dict[str, Any]]:
    """The candidate split points of the ONNX `variant`, measured on the samples `x` (batch first)."""
    model = onnx.load_model_from_string(variant)
    whole = Runner.load(variant)
    x = x[:EXACT_SAMPLES]
    expected = whole.many(x)
    classes = expected.reshape(len(x), -1).argmax(axis=1)
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = workdir / "variant.onnx"
        path.write_bytes(variant)
        cuts = cut_tensors(model)
        for tensor in spread(cuts, MAX_POINTS):
            head = Runner.load(_extract(path, workdir, [whole.input_name], [tensor], "head"))
            tail = Runner.load(_extract(path, workdir, [tensor], [whole.output_name], "tail"))
            middle = head.many(x)
            got = tail.many(middle)
            diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
            after_int8 = tail.many(_int8_roundtrip(middle)).reshape(len(x), -1).argmax(axis=1)
            values = int(np.prod(middle.shape[1:]))
            points.append({
                "k": cuts.index(tensor) + 1,
                "tensor": tensor,
                "values": values,
                "bytes_fp32": values * 4,
                "bytes_int8": values + INT8_OVERHEAD_BYTES,
                "head_ms_p50": head.latency_ms(x)[0],
                "tail_ms_p50": tail.latency_ms(middle)[0],
                "max_abs_diff": diff,
                "exact": diff <= EXACT_ATOL,
                "int8_agreement": round(float(np.mean(after_int8 == classes)), 6),
            })
    return points


def split_entry(entry: Mapping[str, Any], variant: bytes, x: NDArray[np.float32]) -> dict[str, Any] | None:
    """The menu's `split` for an accepted ONNX variant (None for any other, or a graph without a split point)."""
    if entry.get("format") != "onnx" or not entry.get("accepted"):
        return None
    points = split_points(variant, x)
    if not points:
        return None
    return {"points": points, "atol": EXACT_ATOL, "samples": int(min(len(x), EXACT_SAMPLES)),
            "candidates": len(cut_tensors(onnx.load_model_from_string(variant)))}


def with_parts(variants: Sequence[Mapping[str, Any]], blobs: Mapping[str, bytes]
               ) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The variants with each exact split point's `head` and `tail` named, and the blobs with their bytes."""
    out_variants, out_blobs = [], dict(blobs)
    for variant in variants:
        split = variant.get("split")
        if not split or variant.get("encryption"):
            out_variants.append(dict(variant))
            continue
        points = []
        for point in split["points"]:
            point = dict(point)
            if point["exact"]:
                for name, part in zip(("head", "tail"), head_and_tail(blobs[variant["sha256"]], point["tensor"]),
                                      strict=True):
                    out_blobs[sha256_bytes(part)] = part
                    point[name] = {"sha256": sha256_bytes(part), "size_bytes": len(part)}
            points.append(point)
        out_variants.append({**variant, "split": {**split, "points": points}})
    return out_variants, out_blobs

