"""Candidate split points: where a graph splits with one tensor crossing, and head → tail equal to the whole."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tinymlops.variants import Dataset, SourceModel
from tinymlops.variants.split import EXACT_ATOL, MAX_POINTS, cut_tensors, split_entry, split_points, spread


def graph(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_chain_splits_after_every_node_a_branch_does_not() -> None:
    chain = graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
                   helper.make_node("Abs", ["b"], ["out"])])
    assert cut_tensors(chain) == ["a", "b"]
    diamond = graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b1"]),
                     helper.make_node("Abs", ["a"], ["b2"]), helper.make_node("Add", ["b1", "b2"], ["c"]),
                     helper.make_node("Relu", ["c"], ["out"])])
    assert cut_tensors(diamond) == ["a", "c"]  # inside the branch two tensors cross


def test_spread_keeps_the_ends_and_at_most_that_many() -> None:
    names = [str(i) for i in range(20)]
    picked = spread(names, MAX_POINTS)
    assert len(picked) == MAX_POINTS and picked[0] == "0" and picked[-1] == "19"
    assert spread(names[:3], MAX_POINTS) == names[:3]


def test_every_split_point_of_the_digits_model_is_exact(base: SourceModel, dataset: Dataset) -> None:
    points = split_points(base.data, dataset.evaluation)
    assert 1 <= len(points) <= MAX_POINTS
    assert [p["k"] for p in points] == sorted(p["k"] for p in points)
    for point in points:
        assert point["exact"] and point["max_abs_diff"] <= EXACT_ATOL
        assert point["bytes_fp32"] == 4 * point["values"] and point["bytes_int8"] < point["bytes_fp32"]
        assert 0 <= point["int8_agreement"] <= 1 and point["head_ms_p50"] > 0 and point["tail_ms_p50"] > 0
    hidden = {p["tensor"]: p["values"] for p in points}
    assert max(hidden.values()) == 256  # the first hidden layer's width: what a split there sends


def test_only_accepted_onnx_variants_are_split(base: SourceModel, dataset: Dataset) -> None:
    x = np.asarray(dataset.evaluation[:8])
    assert split_entry({"format": "onnx", "accepted": False}, base.data, x) is None
    assert split_entry({"format": "tvm-lib", "accepted": True}, base.data, x) is None
    entry = split_entry({"format": "onnx", "accepted": True}, base.data, x)
    assert entry is not None and entry["samples"] == 8 and entry["candidates"] >= len(entry["points"])
