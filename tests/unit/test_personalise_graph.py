"""Reading the last layer out of ONNX variants (float and int8 QDQ) without the onnx package on the device."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from tinymlops.errors import NoLastLayerError
from tinymlops.layout import model_prefix
from tinymlops.model import DigitsArtifacts
from tinymlops.personalise import Head, Personalised, check_reproduces, expose, find_last_layer
from tinymlops.personalise.onnxproto import parse_model
from tinymlops.runners import Runner
from tinymlops.store import DirectoryStore
from tinymlops.variants import build_variants


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> dict[str, tuple[dict[str, Any], bytes]]:
    root = tmp_path_factory.mktemp("store")
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                          signing_key=Ed25519PrivateKey.generate(), model_ref=("ns", "digits"), menu_version=1)
    return {v["id"]: (v, (root / "models/ns/digits/blobs" / v["sha256"]).read_bytes()) for v in menu["variants"]}


def test_parsing_and_writing_back_keeps_the_model(digits: DigitsArtifacts) -> None:
    original = digits.model_path.read_bytes()
    assert onnx.load_from_string(parse_model(original).SerializeToString()) == onnx.load_from_string(original)


@pytest.mark.parametrize("variant_id", ["fp32", "int8-static"])
def test_the_last_layer_of_each_variant_reproduces_its_outputs(
        blobs: dict[str, tuple[dict[str, Any], bytes]], digits: DigitsArtifacts, variant_id: str) -> None:
    variant, model = blobs[variant_id]
    base_runner = Runner.load(model)
    layer = find_last_layer(model, base_runner.output_name)
    assert layer.softmax and layer.weight.shape == (128, 10) and layer.bias.shape == (10,)
    x = np.load(digits.data_path)["x"][:200]
    head = Head(layer.weight, layer.bias, layer.softmax)
    personalised = Personalised.load(model, layer, head, variant_sha256=variant["sha256"], revision=0)
    scores, features = personalised.run(x)
    # Exposing a tensor changes nothing the model computes: its own output is the signed model's.
    np.testing.assert_allclose(scores, base_runner.many(x), atol=1e-6)
    check_reproduces(head, features, scores)
    if variant_id == "fp32":  # float: the layer read back is the layer
        np.testing.assert_allclose(head.scores(features), scores, atol=1e-5)
    base_out, personal_out = personalised.one(x[0])
    assert base_out.shape == personal_out.shape == (10,)


def _graph(nodes: list[Any], initializers: list[np.ndarray[Any, Any]], names: list[str]) -> bytes:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a, n) for a, n in zip(initializers, names, strict=True)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_gemm_with_transposed_weights_and_scales_is_read() -> None:
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 10  # [classes, features]: transB
    bias = np.array([0.5, -1.0, 2.0], np.float32)
    model = _graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=2.0, beta=0.5)],
                   [weight, bias], ["w", "b"])
    layer = find_last_layer(model, "y")
    assert layer.features == "x" and not layer.softmax
    np.testing.assert_allclose(layer.weight, 2 * weight.T)
    np.testing.assert_allclose(layer.bias, 0.5 * bias)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    got = Runner.load(expose(model, ["x"])).many(x)
    np.testing.assert_allclose(Head(layer.weight, layer.bias, False).scores(x), got, atol=1e-5)


@pytest.mark.parametrize(("nodes", "message"), [
    ([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])], "is a Sigmoid"),
    ([helper.make_node("MatMul", ["x", "x2"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
     "'x2' is not a constant"),
    ([helper.make_node("Add", ["x", "b"], ["y"])], "is not a MatMul's product"),
    ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["s"]),
      helper.make_node("Softmax", ["s"], ["y"], axis=0)], "over axis 0"),
])
def test_a_model_without_an_identifiable_last_layer_is_named(nodes: list[Any], message: str) -> None:
    model = _graph(nodes, [np.ones((4, 3), np.float32), np.ones(3, np.float32)], ["w", "b"])
    with pytest.raises(NoLastLayerError, match=message):
        find_last_layer(model, "y")


def test_bytes_that_are_not_a_model_are_named() -> None:
    with pytest.raises(NoLastLayerError, match="not an ONNX protobuf"):
        find_last_layer(b"\xff\xff not a model", "y")
