"""The protect demo's thief: the disguise it applies to a leaked model (`tinymlops.stack.leak.disguise`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tinymlops.model import DigitsArtifacts
from tinymlops.runners import Runner
from tinymlops.stack.leak import PRUNED, disguise
from tinymlops.variants.transforms import Int8Static


def weight_matrices(model: bytes) -> list[np.ndarray]:
    proto = onnx.load_model_from_string(model)
    return [numpy_helper.to_array(i) for i in proto.graph.initializer if len(i.dims) >= 2]


def agreement(a: bytes, b: bytes, x: np.ndarray) -> float:
    return float(np.mean(Runner.load(a).many(x).argmax(1) == Runner.load(b).many(x).argmax(1)))


def test_a_float_model_is_pruned_then_quantized_and_still_mostly_agrees(digits: DigitsArtifacts) -> None:
    model = digits.model_path.read_bytes()
    x = np.load(digits.data_path)["x"]
    suspect, steps = disguise(model)
    assert [s.split()[0] for s in steps] == ["magnitude", "int8"]
    int8 = [w for w in weight_matrices(suspect) if w.dtype == np.int8]
    assert int8 and all(np.mean(w == 0) >= PRUNED - 0.01 for w in int8)
    assert agreement(model, suspect, x) > 0.8  # a useful copy, not a destroyed one


def test_a_static_int8_model_keeps_its_quantization_and_loses_half_its_weights(digits: DigitsArtifacts) -> None:
    x = np.load(digits.data_path)["x"]
    int8 = Int8Static().resolve(digits.model_path.read_bytes()).apply(digits.model_path.read_bytes(), x, "input")
    suspect, steps = disguise(int8)
    assert "int8 weight matrix" in steps[-1]
    before, after = weight_matrices(int8), weight_matrices(suspect)
    assert [w.shape for w in before] == [w.shape for w in after]
    # The weight matrices (int8, symmetric: zero point 0) lose half their values; nothing else changes.
    changed = [(a, b) for a, b in zip(after, before, strict=True) if not np.array_equal(a, b)]
    assert len(changed) == 3 and all(a.dtype == np.int8 for a, _ in changed)
    assert all(np.mean(a == 0) >= PRUNED - 0.01 > np.mean(b == 0) for a, b in changed)
    assert agreement(int8, suspect, x) > 0.8


def test_a_model_without_weight_matrices_is_named(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from tinymlops.errors import DemoError

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(DemoError, match="neither float nor int8 weight matrices"):
        disguise(helper.make_model(graph).SerializeToString())
