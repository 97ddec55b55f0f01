"""A source a FederatedTraining made names that run in every variant's lineage, and never carries device data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from kfp import dsl

from tinymlops.errors import IntegrityError, InvalidModelError
from tinymlops.model import DigitsArtifacts
from tinymlops.store import sha256_bytes
from tinymlops.variants import build_variant, load_dataset, load_source
from tinymlops.variants.lineage import TRAINING_KEY, stamp_training, through_watermark, training_lineage

RECORD: dict[str, Any] = {
    "namespace": "default", "name": "digits-federated", "uid": "0b6e-uid", "generation": 1,
    "parentSource": "store://sources/digits/model.onnx", "parentSha256": "p" * 64, "strategy": "FedAvg",
    "strategyParams": {}, "rounds": 10, "clientsPerRound": [100] * 10, "localEpochs": 10,
    "privacy": {"clipNorm": 1.0, "noiseMultiplier": 3.0}, "epsilon": 5.57, "delta": 1e-5, "baseAccuracy": 0.72,
    "accuracy": 0.96}


def test_the_record_rides_in_the_metadata_and_leaves_the_graph_as_it_was(digits: DigitsArtifacts) -> None:
    model = digits.model_path.read_bytes()
    stamped = stamp_training(model, RECORD)
    before, after = onnx.load_model_from_string(model), onnx.load_model_from_string(stamped)
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    assert training_lineage(model) == []
    assert training_lineage(stamped) == [{"name": "federated-training", "params": RECORD}]
    restamped = stamp_training(stamped, {**RECORD, "generation": 2})  # one record: the newest training's
    assert [p.key for p in onnx.load_model_from_string(restamped).metadata_props].count(TRAINING_KEY) == 1
    assert training_lineage(restamped)[0]["params"]["generation"] == 2


def test_a_record_with_anything_beyond_the_allow_list_is_refused(digits: DigitsArtifacts) -> None:
    model = digits.model_path.read_bytes()
    with pytest.raises(IntegrityError, match="devices"):
        stamp_training(model, {**RECORD, "devices": ["rpi4-0001"]})
    proto = onnx.load_model_from_string(model)
    proto.metadata_props.add(key=TRAINING_KEY, value=json.dumps({**RECORD, "shard": [[0.1, 0.2]]}))
    with pytest.raises(IntegrityError, match="shard"):
        training_lineage(proto.SerializeToString())
    del proto.metadata_props[:]
    proto.metadata_props.add(key=TRAINING_KEY, value="[1, 2")
    with pytest.raises(InvalidModelError, match=TRAINING_KEY):
        training_lineage(proto.SerializeToString())


def test_every_variant_of_a_trained_source_starts_its_lineage_with_the_training(tmp_path: Path,
                                                                              digits: DigitsArtifacts) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(stamp_training(digits.model_path.read_bytes(), RECORD))
    base = load_source(path)
    entry = build_variant(base, load_dataset(digits.data_path, base), "int8", accuracy_budget=0.05).entry
    first, *rest = entry["lineage"]["transforms"]
    assert first == {"name": "federated-training", "params": RECORD}
    assert rest and all(step["name"] != "federated-training" for step in rest)
    assert entry["lineage"]["parent"] == base.sha256
    assert not any(name in json.dumps(entry) for name in ("rpi4-0001", "x_train"))


def test_a_licensee_variant_keeps_the_order_training_then_watermark_then_its_own(tmp_path: Path,
                                                                               digits: DigitsArtifacts) -> None:
    from tinymlops_pipelines.components import build_variant as build_task

    copy = tmp_path / "watermarked.onnx"  # stands in for the watermarked copy: it keeps the source's metadata
    copy.write_bytes(stamp_training(digits.model_path.read_bytes(), RECORD))
    step = {"source_sha256": "s" * 64, "watermarked_sha256": sha256_bytes(copy.read_bytes()),
            "transform": {"name": "watermark", "params": {"licensee": "acme"}}}
    base = dsl.Model(uri=str(copy), metadata={"source": "store://m.onnx", "watermark": step})
    data = dsl.Dataset(uri=str(digits.data_path), metadata={"present": True})
    entry = json.loads(build_task.python_func(base=base, data=data, variant_id="fp32", accuracy_budget=0.01,
                                              cache_dir="", variant=dsl.Model(uri=str(tmp_path / "v"))))
    assert [t["name"] for t in entry["lineage"]["transforms"]][:2] == ["federated-training", "watermark"]
    assert entry["lineage"]["parent"] == "s" * 64


def test_through_watermark_puts_the_watermark_after_the_training_step() -> None:
    training = {"name": "federated-training", "params": {"rounds": 3}}
    entry = {"id": "int8", "lineage": {"parent": "w" * 64, "transforms": [training, {"name": "quantize"}]}}
    traced = through_watermark(entry, watermarked_sha256="w" * 64, source_sha256="s" * 64,
                               transform={"name": "watermark", "params": {}})
    assert [t["name"] for t in traced["lineage"]["transforms"]] == ["federated-training", "watermark", "quantize"]
