"""The operator's FederatedTraining decisions (pure) and their statuses against the CRD schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tinymlops import API_GROUP, API_VERSION
from tinymlops.errors import NotEnoughClientsError, SpecError
from tinymlops.federated.spec import parse_spec
from tinymlops.kube.schema import load_crds
from tinymlops.merge_patch import merge_patch
from tinymlops.variants.lineage import TRAINING_FIELDS
from tinymlops_operator.logic import federated as logic

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = load_crds(ROOT / "crds")
SPEC = {"model": {"name": "digits"}, "fleet": {"name": "sim", "selector": {"matchLabels": {"site": "a"}}},
        "rounds": 2}
NOW = "2026-01-01T00:00:00Z"


def request(devices: tuple[str, ...] = ("d1", "d2")) -> logic.TrainingRequest:
    return logic.TrainingRequest("default/ft@1", "default", "ft", 1, parse_spec(SPEC), "store://sources/m.onnx",
                                 "store://sources/data.npz", devices,
                                 logic.revision_prefix("default", "digits", "ft", 1), uid="uid-1")


def result(promote: bool) -> dict[str, Any]:
    rounds = [{"round": 1, "clients": 2, "dropped": {"non-finite": 1}, "trainLoss": 0.5, "loss": 0.4,
               "accuracy": 0.8},
              {"round": 2, "clients": 2, "dropped": {}, "trainLoss": None, "loss": 0.3, "accuracy": 0.9}]
    verdict = {"promote": promote, "reason": "device class rpi4 would lose 3.00 points", "baseAccuracy": 0.7,
               "accuracy": 0.9, "perClass": {"rpi4": {"base": 0.9, "new": 0.87}}}
    return {"rounds": rounds, "clientsAvailable": 2, "baseAccuracy": 0.7, "accuracy": 0.9, "epsilon": 4.2,
            "delta": 1e-5, "verdict": verdict,
            "revision": {"uri": "store://x/model.onnx", "sha256": "a" * 64} if promote else None}


def valid(status: dict[str, Any]) -> list[str]:
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "FederatedTraining",
            "metadata": {"name": "ft", "namespace": "default"}, "spec": SPEC, "status": status}
    return list(REGISTRY.validate(body, strict=True))


def test_once_trains_each_generation_once_and_on_drift_each_drift() -> None:
    assert logic.needs_training(SPEC, {}, 1, None)
    assert not logic.needs_training(SPEC, {"observedGeneration": 1, "phase": "Promoted"}, 1, None)
    assert logic.needs_training(SPEC, {"observedGeneration": 1, "phase": "Promoted"}, 2, None)
    drifting = {"conditions": [{"type": "Drifted", "status": "True", "lastTransitionTime": NOW}]}
    on_drift = {**SPEC, "schedule": "OnDrift"}
    assert not logic.needs_training(on_drift, {}, 1, {"conditions": []})
    assert logic.needs_training(on_drift, {"observedGeneration": 1}, 1, drifting)
    assert not logic.needs_training(on_drift, {"observedGeneration": 1, "driftSeenAt": NOW}, 1, drifting)


def test_the_training_selector_narrows_the_fleet() -> None:
    devices = [("d1", {"site": "a", "fleet": "x"}), ("d2", {"site": "b", "fleet": "x"}), ("d3", {"fleet": "y"})]
    fleet = {"matchLabels": {"fleet": "x"}}
    assert logic.selected(devices, fleet, None) == ["d1", "d2"]
    assert logic.selected(devices, fleet, {"matchLabels": {"site": "a"}}) == ["d1"]


def test_every_status_fits_the_crd() -> None:
    training = logic.training_status({}, request(), None, now=NOW)
    assert valid(training) == []
    for promote in (True, False):
        finished = logic.finished_status(training, result(promote), 1, now=NOW)
        assert valid(merge_patch(training, finished)) == []
        assert finished["phase"] == ("Promoted" if promote else "Rejected")
        (ready,) = finished["conditions"]
        assert ready["status"] == "True" and ready["reason"] == finished["phase"]
    failed = logic.failed_status(training, NotEnoughClientsError("1 of the 3 devices can take part"), 1, now=NOW)
    assert valid(merge_patch(training, failed)) == []
    assert failed["conditions"][0]["reason"] == "NotEnoughClientsError"
    assert "1 of the 3" in failed["conditions"][0]["message"]


def test_the_crd_schema_refuses_what_the_spec_parser_refuses() -> None:
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "FederatedTraining",
            "metadata": {"name": "ft", "namespace": "default"}, "spec": {**SPEC, "strategy": {"name": "FedMagic"}}}
    assert REGISTRY.validate(body, strict=True)
    with pytest.raises(SpecError, match="spec.strategy.name"):
        parse_spec(body["spec"])


def test_lineage_and_the_source_patch_carry_no_device_data() -> None:
    lineage = logic.lineage(request(), result(True), "b" * 64)
    assert lineage["rounds"] == 2 and lineage["clientsPerRound"] == [2, 2] and lineage["epsilon"] == 4.2
    assert lineage["parentSha256"] == "b" * 64 and lineage["privacy"] is None and lineage["uid"] == "uid-1"
    assert "d1" not in str(lineage) and lineage["strategy"] == "FedAvg"
    assert set(lineage) <= set(TRAINING_FIELDS), "what the revision records is what a variant may carry"
    assert logic.source_patch("store://x/model.onnx", "a" * 64) == {
        "spec": {"source": {"uri": "store://x/model.onnx", "sha256": "a" * 64}}}


def test_the_superlink_for_a_cluster_runs_with_tls_and_supernode_auth() -> None:
    deployment, service = logic.superlink_manifests("ml", "ft", image="flwr/superlink:1.42.0", tls_secret="ft-tls")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--enable-supernode-auth" in container["command"] and "--insecure" not in container["command"]
    assert container["command"][container["command"].index("--ssl-certfile") + 1].endswith("tls.crt")
    assert deployment["spec"]["replicas"] == 1
    assert {p["port"] for p in service["spec"]["ports"]} == {9092, 9093}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
