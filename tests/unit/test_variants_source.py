"""Checking the inputs of a build: every failure names the model or data at fault."""

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tinymlops.errors import InvalidDataError, InvalidModelError
from tinymlops.variants import load_dataset, load_source, resolve_uri
from tinymlops.variants.source import CALIBRATION_EVERY, split


def tiny_model(features: int = 4, classes: int = 3, batch: int | None = None) -> bytes:
    weights = helper.make_tensor("w", TensorProto.FLOAT, [features, classes],
                                 np.arange(features * classes, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch if batch else "N", features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch if batch else "N", classes])],
        [weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_missing_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match=r"model .*nope\.onnx: cannot be read"):
        load_source(tmp_path / "nope.onnx")


def test_garbage_model_names_the_uri(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not onnx at all")
    with pytest.raises(InvalidModelError, match=rf"model file://{path}: not a valid ONNX model"):
        load_source(f"file://{path}")


def test_graph_that_fails_the_checker_is_invalid() -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "undefined"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        load_source(data)


def test_store_uri_resolves_inside_the_store_only(tmp_path: Path) -> None:
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "m.onnx").write_bytes(tiny_model())
    model = load_source("store://sources/m.onnx", tmp_path)
    assert model.source == "store://sources/m.onnx" and model.input_name == "x"
    assert model.input_shape == (None, 4)
    with pytest.raises(FileNotFoundError, match="escapes"):
        resolve_uri("store://../outside.onnx", tmp_path)
    with pytest.raises(InvalidModelError, match="unsupported URI"):
        load_source("relative/model.onnx")


def test_data_checks_name_the_data(tmp_path: Path) -> None:
    model = load_source(tiny_model())
    cases = {
        "not-npz": (b"plain text", "not a readable .npz"),
        "no-x": (npz(y=np.zeros(3, np.int64)), "no array `x`"),
        "float64": (npz(x=np.zeros((3, 4))), "x is float64"),
        "width": (npz(x=np.zeros((3, 5), np.float32)), "dimension 1 is 5, model input x needs 4"),
        "rank": (npz(x=np.zeros(3, np.float32)), "shape"),
        "labels": (npz(x=np.zeros((3, 4), np.float32), y=np.zeros(3, np.int32)), "y must be int64"),
        "range": (npz(x=np.zeros((3, 4), np.float32), y=np.array([0, 2, 3], np.int64)),
                  r"labels y range over 0\.\.3, but the model scores classes 0\.\.2"),
        "negative": (npz(x=np.zeros((3, 4), np.float32), y=np.array([-1, 0, 1], np.int64)), "range over -1"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(data)
        with pytest.raises(InvalidDataError, match=rf"data .*{name}\.npz: .*{message}"):
            load_dataset(path, model)


def test_a_npy_file_is_named_with_the_expected_format(tmp_path: Path) -> None:
    model = load_source(tiny_model())
    path = tmp_path / "data.npy"
    np.save(path, np.zeros((3, 4), np.float32))
    with pytest.raises(InvalidDataError) as caught:
        load_dataset(path, model)
    message = str(caught.value)
    assert message.startswith(f"data {path}: is a single array (float32 (3, 4), a .npy file)")
    assert "array `x` (float32, batch first) and optional `y` (int64 labels)" in message


def test_split_is_deterministic_and_disjoint() -> None:
    x = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    y = np.arange(50, dtype=np.int64)
    dataset = split(x, y)
    assert len(dataset.calibration) == 10 and len(dataset.evaluation) == 40
    assert dataset.labels is not None
    calibrated = set(dataset.calibration[:, 0].tolist())
    assert calibrated == {float(i * 4) for i in range(0, 50, CALIBRATION_EVERY)}
    assert calibrated.isdisjoint(dataset.evaluation[:, 0].tolist())
    assert dataset.labels.tolist() == [i for i in range(50) if i % CALIBRATION_EVERY]
    assert dataset.digest == split(x, y).digest


def test_tiny_data_is_used_for_both_parts() -> None:
    x = np.ones((2, 4), np.float32)
    dataset = split(x, None)
    assert len(dataset.calibration) == len(dataset.evaluation) == 2 and dataset.kind == "unlabelled"


def test_without_data_inputs_are_synthesised_when_the_shape_is_known() -> None:
    dataset = load_dataset(None, load_source(tiny_model()))
    assert dataset.kind == "synthetic" and dataset.labels is None
    assert dataset.evaluation.shape[1:] == (4,) and dataset.evaluation.dtype == np.float32
    symbolic = onnx.load_model_from_string(tiny_model())
    symbolic.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
    with pytest.raises(InvalidDataError, match="provide DATA.npz"):
        load_dataset(None, load_source(symbolic.SerializeToString()))
