"""Embedding and attribution on the digits sample model: one embed per licensee for the whole module.

Assertions are about attribution and p-value bounds, never about the exact weights training produces here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tinymlops.errors import (
    ArchitectureMismatchError,
    InvalidDataError,
    NotOnnxError,
    RegistryConflictError,
    SpecError,
    UnknownLicenseeError,
    WatermarkError,
)
from tinymlops.model.digits import DigitsArtifacts
from tinymlops.onnxtorch import import_onnx2torch
from tinymlops.store import DirectoryStore
from tinymlops.variants.transforms import Fp16, Int8Dynamic, Int8Static, Prune
from tinymlops.watermark import Embedded, WatermarkRegistry, embed, lineage_transform, verify
from tinymlops.watermark.stats import ALPHA

KEY = bytes(range(100, 132))


@dataclass
class Setup:
    base: bytes
    x: np.ndarray
    y: np.ndarray
    registry: WatermarkRegistry
    acme: Embedded
    globex: Embedded


@pytest.fixture(scope="module")
def setup(digits: DigitsArtifacts, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    registry = WatermarkRegistry(DirectoryStore(tmp_path_factory.mktemp("registry")))
    base = digits.model_path.read_bytes()
    with np.load(digits.data_path) as data:
        x, y = data["x"], data["y"]
    acme = embed(base, x, y, key=KEY, licensee="acme", registry=registry)
    globex = embed(base, x, None, key=KEY, licensee="globex", registry=registry, seed=7)
    return Setup(base, x, y, registry, acme, globex)


def _without_weights(model: bytes) -> bytes:
    proto = onnx.load_model_from_string(model)
    for init in proto.graph.initializer:
        init.ClearField("raw_data")
        init.ClearField("float_data")
    return bytes(proto.SerializeToString())


def _edit(model: bytes, **arrays: np.ndarray) -> bytes:
    proto = onnx.load_model_from_string(model)
    for init in proto.graph.initializer:
        if init.name in arrays:
            init.CopyFrom(numpy_helper.from_array(arrays[init.name].astype(np.float32), init.name))
    return bytes(proto.SerializeToString())


def _weights(model: bytes) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load_model_from_string(model).graph.initializer}


def _identified(attribution_licensee: str | None, chance: float, licensee: str) -> None:
    assert attribution_licensee == licensee and chance <= ALPHA


def test_the_graph_is_unchanged_only_weight_values_move(setup: Setup) -> None:
    assert _without_weights(setup.acme.model) == _without_weights(setup.base)
    assert setup.acme.model != setup.base
    assert setup.acme.record.watermarked_sha256 != setup.acme.record.base_sha256
    metrics = setup.acme.metrics
    assert {"accuracy_before", "accuracy_after", "bit_error_rate", "trigger_accuracy", "seconds"} <= set(metrics)
    assert setup.globex.metrics["labels"] == "base model predictions"


def test_each_copy_names_its_licensee(setup: Setup) -> None:
    for embedded in (setup.acme, setup.globex):
        attribution = verify(embedded.model, key=KEY, registry=setup.registry)
        _identified(attribution.licensee, attribution.chance_match_probability, embedded.record.licensee)
        mine = next(t for t in attribution.tests if t.licensee == embedded.record.licensee)
        assert mine.payload_recovered and mine.bit_p_value <= ALPHA and mine.trigger_p_value <= ALPHA
        assert attribution.tests_made == 4 and attribution.to_json()["identified"] is True


def test_unwatermarked_and_wrong_key_name_nobody(setup: Setup) -> None:
    attribution = verify(setup.base, key=KEY, registry=setup.registry)
    assert attribution.licensee is None and attribution.chance_match_probability > ALPHA
    assert not any(test.payload_recovered for test in attribution.tests)
    for seed in range(3):
        wrong = np.random.default_rng(seed).bytes(32)
        assert verify(setup.acme.model, key=wrong, registry=setup.registry).licensee is None


def test_permuted_and_rescaled_units_still_name_the_licensee(setup: Setup) -> None:
    w = _weights(setup.acme.model)
    rng = np.random.default_rng(1)
    order, scale = rng.permutation(256), rng.uniform(0.25, 4.0, 256)
    shuffled = _edit(setup.acme.model, coefficient=w["coefficient"][:, order] * scale,
                     intercepts=w["intercepts"][:, order] * scale,
                     coefficient1=w["coefficient1"][order] / scale[:, None])
    from tinymlops.runners import Runner
    np.testing.assert_allclose(Runner.load(shuffled).many(setup.x), Runner.load(setup.acme.model).many(setup.x),
                               atol=1e-4)
    attribution = verify(shuffled, key=KEY, registry=setup.registry)
    _identified(attribution.licensee, attribution.chance_match_probability, "acme")
    assert attribution.tests[0].bit_p_value <= ALPHA  # the white-box read-out itself survives realignment


def test_quantized_and_pruned_copies_name_the_licensee(setup: Setup) -> None:
    quantized = Int8Static().apply(setup.globex.model, setup.x, "input")
    assert any(node.op_type == "DequantizeLinear" for node in onnx.load_model_from_string(quantized).graph.node)
    pruned = Prune(0.5).apply(setup.globex.model, None, "input")
    dynamic = Int8Dynamic().apply(setup.globex.model, None, "input")  # integer weights, ~100x the float ones
    half = Fp16().apply(setup.globex.model, None, "input")
    for suspect in (quantized, pruned, dynamic, half):
        attribution = verify(suspect, key=KEY, registry=setup.registry)
        _identified(attribution.licensee, attribution.chance_match_probability, "globex")
        assert attribution.tests[0].bit_p_value <= ALPHA


def test_bad_suspects_are_named(setup: Setup) -> None:
    with pytest.raises(NotOnnxError, match="suspect: not an ONNX model"):
        verify(b"not a model", key=KEY, registry=setup.registry)
    w = _weights(setup.base)
    narrower = onnx.load_model_from_string(setup.base)
    for init in narrower.graph.initializer:
        if init.name == "coefficient2":
            init.CopyFrom(numpy_helper.from_array(w["coefficient2"][:64], "coefficient2"))
    with pytest.raises(ArchitectureMismatchError, match=r"weight layer 3 .* is 64x10 .* base model's .* 128x10"):
        verify(narrower.SerializeToString(), key=KEY, registry=setup.registry)
    with pytest.raises(WatermarkError, match="holds no records"):
        verify(setup.base, key=KEY, registry=WatermarkRegistry(DirectoryStore(Path(setup.registry.store.root) / "x")))


def test_the_registry_never_replaces_a_record(setup: Setup) -> None:
    record = setup.registry.record("acme")
    assert setup.registry.licensees() == ["acme", "globex"]
    assert setup.registry.base_model_digests() == [record.base_sha256]
    setup.registry.add(record)  # the same record again: nothing changes
    assert len(setup.registry.records()) == 2
    from dataclasses import replace
    with pytest.raises(RegistryConflictError, match="'acme' already has a watermark"):
        setup.registry.add(replace(record, trigger_seed=9))
    with pytest.raises(UnknownLicenseeError, match="'initech'.*licensees: acme, globex"):
        setup.registry.record("initech")
    with pytest.raises(SpecError, match="not a valid id"):
        embed(setup.base, setup.x, setup.y, key=KEY, licensee="no spaces", registry=setup.registry)
    stored = (Path(setup.registry.store.root) / "registry" / "watermarks" / "licensees.json").read_bytes()
    assert KEY not in stored and KEY.hex().encode() not in stored


def test_embedding_again_returns_the_kept_copy_and_anything_else_conflicts(setup: Setup) -> None:
    again = embed(setup.base, setup.x, setup.y, key=KEY, licensee="acme", registry=setup.registry)
    assert again.model == setup.acme.model and again.record == setup.acme.record
    assert again.metrics["reused"] is True and again.metrics["epochs"] == 0 and again.metrics["bit_error_rate"] == 0
    with pytest.raises(RegistryConflictError, match="made with another trigger_seed"):
        embed(setup.base, setup.x, setup.y, key=KEY, licensee="acme", registry=setup.registry, seed=5)
    with pytest.raises(RegistryConflictError, match="made with another key"):
        embed(setup.base, setup.x, setup.y, key=bytes(32), licensee="acme", registry=setup.registry)
    assert len(setup.registry.records()) == 2


def test_lineage_names_the_step_never_the_key_nor_the_code(setup: Setup) -> None:
    entry = lineage_transform(setup.acme.record)
    assert entry["name"] == "watermark" and entry["params"]["licensee"] == "acme"
    assert entry["params"]["code_bits"] == 127 and entry["params"]["triggers"] == setup.acme.record.parameters[
        "triggers"]
    text = repr(entry)
    assert setup.acme.record.payload not in text and KEY.hex() not in text


def test_onnx2torch_loads_beside_a_broken_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # what a torchvision built for another torch looks like
    monkeypatch.setitem(sys.modules, "torchvision.ops", None)
    module = import_onnx2torch()
    assert hasattr(module, "convert")
    with pytest.raises(WatermarkError, match="detection operators"):
        sys.modules["torchvision"].ops.nms(None, None, 0.5)


def test_bad_embed_inputs_are_named(setup: Setup) -> None:
    with pytest.raises(InvalidDataError, match="x has 32 values per sample, .* takes 64"):
        embed(setup.base, setup.x[:, :32], None, key=KEY, licensee="acme2", registry=setup.registry)
    with pytest.raises(InvalidDataError, match=r"labels y range over 0\.\.10, .* classes 0\.\.9"):
        embed(setup.base, setup.x, np.where(setup.y == 9, 10, setup.y), key=KEY, licensee="acme2",
              registry=setup.registry)
    with pytest.raises(NotOnnxError, match="model to watermark: not an ONNX model"):
        embed(b"\x00\x01", setup.x, None, key=KEY, licensee="acme2", registry=setup.registry)
    assert "acme2" not in setup.registry.licensees()


def _gemm_model(rng: np.random.Generator) -> bytes:
    """A logits classifier made of Gemm nodes with transposed weights, as PyTorch exports nn.Linear."""
    from onnx import TensorProto, helper

    w1, w2 = rng.normal(0, 0.5, (32, 8)).astype(np.float32), rng.normal(0, 0.5, (3, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1)], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.full(32, 0.1, np.float32), "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(3, np.float32), "b2")])
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def test_a_gemm_logits_model_is_watermarked_and_attributed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = _gemm_model(rng)
    x = rng.uniform(-1, 1, (300, 8)).astype(np.float32)
    registry = WatermarkRegistry(DirectoryStore(tmp_path))
    marked = embed(model, x, None, key=KEY, licensee="acme", registry=registry)
    assert _without_weights(marked.model) == _without_weights(model)
    attribution = verify(marked.model, key=KEY, registry=registry)
    _identified(attribution.licensee, attribution.chance_match_probability, "acme")
    assert attribution.tests[0].bit_p_value <= ALPHA and attribution.tests[0].trigger_p_value <= ALPHA
    assert verify(model, key=KEY, registry=registry).licensee is None


def test_a_graph_onnx2torch_cannot_convert_is_refused_by_name(tmp_path: Path) -> None:
    from tinymlops.model.mlperf_tiny import resnet8

    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    with pytest.raises(WatermarkError, match="onnx2torch cannot turn this model .*auto_pad"):
        embed(resnet8(), x, None, key=KEY, licensee="acme", registry=WatermarkRegistry(DirectoryStore(tmp_path)))


def test_too_little_data_to_hold_out_measures_no_accuracy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    marked = embed(_gemm_model(rng), rng.uniform(-1, 1, (6, 8)).astype(np.float32), None, key=KEY, licensee="tiny",
                   registry=WatermarkRegistry(DirectoryStore(tmp_path)))
    assert marked.metrics["holdout_samples"] == 0 and marked.metrics["accuracy_after"] is None
