"""The federated core without Flower's engine: spec, shards, ε, the update guard, promotion, the ONNX/torch model."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from tinymlops.errors import SpecError, UntrainableModelError
from tinymlops.federated.guard import screen
from tinymlops.federated.privacy import epsilon
from tinymlops.federated.promotion import decide, loss_p_value
from tinymlops.federated.shards import class_label_mix, deal
from tinymlops.federated.spec import Promotion, parse_spec
from tinymlops.federated.torchmodel import load_model, unconvertible_operators
from tinymlops.model.digits import DigitsArtifacts

REFS = {"model": {"name": "digits"}, "fleet": {"name": "sim"}}


# --- spec ---------------------------------------------------------------------------------

def test_a_minimal_spec_gets_the_defaults_and_flower_keywords() -> None:
    spec = parse_spec({**REFS, "strategy": {"name": "FedAdam", "params": {"etaL": 0.01, "beta1": 0.8}}})
    assert (spec.model, spec.fleet, spec.rounds, spec.strategy) == ("digits", "sim", 10, "FedAdam")
    assert spec.flower_params() == {"eta_l": 0.01, "beta_1": 0.8}
    assert spec.clients_per_round(100) == 10 and spec.clients_per_round(5) == 2
    assert spec.promotion.significance is None
    assert parse_spec({**REFS, "promotion": {"significance": 0.05}}).promotion.significance == 0.05


@pytest.mark.parametrize(("patch", "field"), [
    ({"model": {}}, "spec.model.name"),
    ({"rounds": 0}, "spec.rounds"),
    ({"rounds": 2.5}, "spec.rounds"),
    ({"clients": {"fraction": 0}}, "spec.clients.fraction"),
    ({"clients": {"fraction": 1.5}}, "spec.clients.fraction"),
    ({"strategy": {"name": "FedMagic"}}, "spec.strategy.name"),
    ({"strategy": {"name": "FedProx", "params": {"eta": 1}}}, "spec.strategy.params.eta"),
    ({"strategy": {"name": "Krum"}, "privacy": {"clipNorm": 1}}, "spec.privacy"),
    ({"privacy": {"clipNorm": 0}}, "spec.privacy.clipNorm"),
    ({"schedule": "Hourly"}, "spec.schedule"),
    ({"secureAggregation": "yes"}, "spec.secureAggregation"),
    ({"promotion": {"maxClassLoss": -0.1}}, "spec.promotion.maxClassLoss"),
    ({"promotion": {"significance": 0}}, "spec.promotion.significance"),
    ({"promotion": {"significance": "5%"}}, "spec.promotion.significance"),
])
def test_a_bad_field_is_named(patch: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_spec({**REFS, **patch})


# --- shards -------------------------------------------------------------------------------

def test_every_sample_is_dealt_once_and_each_class_sees_its_own_mix() -> None:
    y = np.repeat(np.arange(10), 100)
    classes = ["a", "b"] * 10
    shards = deal(y, classes, alpha=0.3, seed=1)
    dealt = np.concatenate(shards)
    assert sorted(dealt.tolist()) == list(range(len(y)))
    sizes_a = [len(s) for s, c in zip(shards, classes, strict=True) if c == "a"]
    assert max(sizes_a) - min(sizes_a) <= 1
    histogram = {c: np.bincount(y[np.concatenate([s for s, k in zip(shards, classes, strict=True) if k == c])],
                                minlength=10) for c in ("a", "b")}
    mix = class_label_mix(10, classes, alpha=0.3, seed=1)
    # the label a class sees most of is the one its mix weighs most against the other class's
    favoured_by_a = int(np.argmax(mix["a"] / (mix["a"] + mix["b"])))
    assert histogram["a"][favoured_by_a] > histogram["b"][favoured_by_a]
    assert deal(y, classes, alpha=0.3, seed=1)[3].tolist() == shards[3].tolist()  # repeatable


# --- privacy ------------------------------------------------------------------------------

def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    assert epsilon(1.0, 0) == 0.0 and math.isinf(epsilon(0.0, 3))
    assert epsilon(1.0, 10) > epsilon(1.0, 5) > 0
    assert epsilon(2.0, 10) < epsilon(1.0, 10)
    # zCDP rho = rounds / (2 sigma^2); the classical conversion bounds OpenDP's (tighter) one from above
    rho, delta = 10 / 2, 1e-5
    assert epsilon(1.0, 10, delta) <= rho + 2 * math.sqrt(rho * math.log(1 / delta))


# --- guard --------------------------------------------------------------------------------

def test_non_finite_oversized_and_malformed_updates_are_named() -> None:
    current = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
    assert screen([np.full((3, 2), 0.1, np.float32), np.zeros(2, np.float32)], current, 1.0) is None
    assert screen([np.full((3, 2), np.nan, np.float32), np.zeros(2, np.float32)], current, 1.0) == "non-finite"
    assert screen([np.full((3, 2), 1.0, np.float32), np.zeros(2, np.float32)], current, 1.0) == "oversized"
    assert screen([np.zeros((2, 3), np.float32), np.zeros(2, np.float32)], current, 1.0) == "malformed"
    assert screen(current[:1], current, 1.0) == "malformed"


# --- promotion ----------------------------------------------------------------------------

def test_promotion_needs_the_gain_and_no_class_losing_too_much() -> None:
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    groups = np.array(["cam", "cam", "cam", "cam", "mic", "mic", "mic", "mic"])
    base = np.array([0, 1, 9, 9, 0, 1, 2, 9])  # cam 2/4, mic 3/4
    better = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    verdict = decide(Promotion(None, 0.05, 0.0), y, base, better, groups)
    assert verdict.promote and verdict.per_class["cam"] == {"base": 0.5, "new": 1.0, "images": 4, "lossPValue": 1.0}
    assert not decide(Promotion(None, 0.5, 0.0), y, base, better, groups).promote
    trades = np.array([0, 1, 2, 3, 0, 9, 9, 3])  # cam 4/4, mic 2/4: +1/8 overall, mic loses 25 points
    rejected = decide(Promotion(None, 0.0, 0.1), y, base, trades, groups)
    assert not rejected.promote and "device class mic" in rejected.reason
    assert decide(Promotion(None, 0.0, 0.3), y, base, trades, groups).promote


def test_mcnemar_p_value_is_the_binomial_tail_of_the_images_only_the_base_gets_right() -> None:
    assert loss_p_value(0, 0) == 1.0
    assert loss_p_value(2, 1) == 0.5  # (C(3,2) + C(3,3)) / 8
    assert loss_p_value(6, 3) == (84 + 36 + 9 + 1) / 512
    assert loss_p_value(10, 0) == 1 / 1024


def test_with_a_significance_level_only_a_loss_the_data_can_show_rejects() -> None:
    """A class of 68 images losing three net (4.41 points: CI once saw this) is noise at 5 %; twenty is not."""
    y = np.zeros(200, np.int64)
    groups = np.array(["rpi4"] * 68 + ["pc"] * 132)
    base = np.where(np.arange(200) < 55, 0, 1)  # rpi4 55/68 right; pc all wrong
    new = base.copy()
    new[:6], new[55:58] = 1, 0  # rpi4: 6 images only the base gets right, 3 only the new one: 52/68
    new[68:], rule = 0, Promotion(None, 0.01, 0.02, significance=0.05)  # pc: all right now
    noisy = decide(rule, y, base, new, groups)
    assert noisy.promote and "rpi4 -4.41 points: p 0.254 on 68 images" in noisy.reason, noisy.reason
    assert not decide(Promotion(None, 0.01, 0.02), y, base, new, groups).promote  # without: as measured
    new[:20] = 1  # rpi4 now 20 only-base, 3 only-new: 38/68
    real = decide(rule, y, base, new, groups)
    assert not real.promote and real.reason.startswith("device class rpi4 would lose 25.00 points")
    assert "significant at 0.05 (p 0.000" in real.reason and real.per_class["rpi4"]["images"] == 68


# --- the model ----------------------------------------------------------------------------

def test_weights_go_back_into_the_same_graph(digits: DigitsArtifacts) -> None:
    data = digits.model_path.read_bytes()
    model = load_model(data, what="digits")
    arrays = [a * 0.5 for a in model.get_arrays()]
    exported = onnx.load_model_from_string(model.export(arrays))
    original = onnx.load_model_from_string(data)
    assert [(n.op_type, list(n.input), list(n.output)) for n in exported.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in original.graph.node]
    assert exported.graph.input == original.graph.input and exported.graph.output == original.graph.output
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in exported.graph.initializer}
    for name, array in zip(model.names, arrays, strict=True):
        np.testing.assert_array_equal(weights[name], array)
    x = np.load(digits.data_path)["x"][:8]
    again = load_model(model.export(arrays), what="again")
    torch_out = again.module(__import__("torch").from_numpy(x)).detach().numpy()
    onnx_out = ort.InferenceSession(model.export(arrays)).run(None, {"input": x})[0]
    np.testing.assert_allclose(torch_out, onnx_out, atol=1e-5)


def test_local_training_lowers_the_loss_on_its_data(digits: DigitsArtifacts) -> None:
    model = load_model(digits.model_path.read_bytes(), what="digits")
    model.set_arrays([np.zeros_like(a) if a.ndim == 1 else a * 0.2 for a in model.get_arrays()])  # a worse start
    with np.load(digits.data_path) as data:
        x, y = data["x"][:200], data["y"][:200]
    before, _ = model.evaluate(x, y)
    model.train(x, y, epochs=3, learning_rate=0.1, batch_size=16, seed=0)
    after, _ = model.evaluate(x, y)
    assert after < before


def test_a_model_onnx2torch_cannot_convert_is_named_before_training() -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Hardmax", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
                              [onnx.numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert unconvertible_operators(proto) == ["Hardmax@17"]
    with pytest.raises(UntrainableModelError, match="Hardmax@17"):
        load_model(proto.SerializeToString(), what="einsum.onnx")
    with pytest.raises(UntrainableModelError, match="not an ONNX model"):
        load_model(hashlib.sha256(b"x").digest(), what="junk.onnx")


def test_fedavgm_is_flowers_with_the_server_momentum_asked_for() -> None:
    from tinymlops.federated.strategies import build_strategy

    spec = parse_spec({**REFS, "strategy": {"name": "FedAvgM", "params": {"serverMomentum": 0.7}}})
    guarded = build_strategy(spec, available=10)
    assert type(guarded.inner).__name__ == "FedAvgM" and guarded.inner.server_momentum == 0.7
    with pytest.raises(SpecError, match="spec.strategy.params.momentum"):
        parse_spec({**REFS, "strategy": {"name": "FedAvgM", "params": {"momentum": 0.7}}})
