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
    assert [p["port"] for p in service["spec"]["ports"]] == [9092]
    assert container["command"][container["command"].index("--host") + 1] == "0.0.0.0"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("secure", [True, False, {"shares": 5, "reconstructionThreshold": 3}])
def test_secure_aggregation_in_both_forms_passes_the_schema_and_shows_in_status(secure: Any) -> None:
    spec = {**SPEC, "secureAggregation": secure}
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "FederatedTraining",
            "metadata": {"name": "ft", "namespace": "default"}, "spec": spec}
    assert REGISTRY.validate(body, strict=True) == []
    on = logic.TrainingRequest("default/ft@1", "default", "ft", 1, parse_spec(spec), "store://sources/m.onnx",
                               "store://sources/data.npz", ("d1", "d2"), "x")
    training = logic.training_status({}, on, None, now=NOW)
    assert valid(training) == []
    (ready,) = training["conditions"]
    if secure is False:
        assert training["secureAggregation"] is None and "SecAgg+" not in ready["message"]
    else:
        assert training["secureAggregation"]["shares"] == (0.2 if secure is True else 5)
        assert "with SecAgg+ (shares" in ready["message"]
        assert logic.lineage(on, result(True), "0" * 64)["secureAggregation"] == training["secureAggregation"]


def test_only_node_keys_bound_to_the_devices_identity_are_registered(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.federated.nodekey import annotation_value, ensure_node_key
    from tinymlops.signing import public_key_base64

    def provisioned(name: str, identity: Any) -> tuple[str, bytes]:
        (tmp_path / name).mkdir()
        key = ensure_node_key(tmp_path / name, identity)
        return annotation_value(key.binding), key.public_key_pem

    good, thief = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    good_binding, good_pem = provisioned("d1", good)
    stolen_binding, _ = provisioned("d3", thief)
    bindings = {"d1": (good_binding, public_key_base64(good.public_key())),
                "d2": (None, public_key_base64(good.public_key())),  # not provisioned for training: left out quietly
                "d3": (stolen_binding, public_key_base64(good.public_key())),  # signed by another identity
                "d4": (good_binding, None)}
    keys, problems = logic.node_keys(["d1", "d2", "d3", "d4", "d5"], bindings)
    assert keys == [("d1", good_pem)]
    assert len(problems) == 2
    assert problems[0].startswith("Device d3: tinymlops.io/flower-node-key: the node key is not signed")
    assert "Device d4: a node key binding but no tinymlops.io/identity-public-key" in problems[1]


def test_the_runtime_is_simulation_unless_the_spec_asks_for_a_superlink() -> None:
    assert parse_spec(SPEC).runtime == "Simulation"
    assert parse_spec({**SPEC, "runtime": "SuperLink"}).runtime == "SuperLink"
    with pytest.raises(SpecError, match="spec.runtime: 'Cloud'"):
        parse_spec({**SPEC, "runtime": "Cloud"})
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "FederatedTraining",
            "metadata": {"name": "ft", "namespace": "default"}, "spec": {**SPEC, "runtime": "Cloud"}}
    assert REGISTRY.validate(body, strict=True)
    training = logic.training_status({}, request(), None, now=NOW)
    endpoint = {"address": "127.0.0.1:4000", "caCertificate": "-----BEGIN CERTIFICATE-----", "registered": 2}
    assert valid({**training, "superlink": endpoint}) == []


def test_a_training_announces_its_superlink_while_it_runs() -> None:
    import threading

    from tinymlops_operator.federated import FederatedLauncher, announce_superlink

    release = threading.Event()
    announced = threading.Event()

    def train(req: logic.TrainingRequest) -> dict[str, Any]:
        announce_superlink({"address": "127.0.0.1:4000", "caCertificate": "pem", "registered": 2})
        announced.set()
        release.wait(10)
        return result(False)

    launcher = FederatedLauncher(train)
    launcher.submit(request())
    assert announced.wait(10)
    assert launcher.endpoint("default/ft@1") == {"address": "127.0.0.1:4000", "caCertificate": "pem",
                                                 "registered": 2}
    assert launcher.endpoint("default/other@1") is None
    release.set()
    while (outcome := launcher.poll("default/ft@1")) is None:
        threading.Event().wait(0.05)
    assert outcome.error is None and launcher.endpoint("default/ft@1") is None
    announce_superlink({"address": "x"})  # outside a training's thread: nobody listens, nothing breaks
    launcher.shutdown()


def test_status_names_the_superlink_once_while_the_run_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import kopf

    from tinymlops_operator.handlers import federated as handler

    events: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "info", lambda body, *, reason, message: events.append((reason, message)))
    endpoint = {"address": "127.0.0.1:4000", "caCertificate": "pem", "registered": 2}
    runtime: Any = SimpleNamespace(trainings=SimpleNamespace(endpoint=lambda key: endpoint))
    patch: Any = SimpleNamespace(status={})
    handler._announce_superlink(runtime, "default/ft@1", {}, {}, patch)  # type: ignore[arg-type]
    assert patch.status == {"superlink": endpoint}
    assert events == [("SuperLinkReady", "devices connect to 127.0.0.1:4000; 2 node keys registered")]
    again: Any = SimpleNamespace(status={})
    handler._announce_superlink(runtime, "default/ft@1", {"superlink": endpoint}, {}, again)  # type: ignore[arg-type]
    assert again.status == {} and len(events) == 1


def test_a_superlink_request_carries_the_verified_node_keys_and_names_the_others(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.federated.nodekey import annotation_value, ensure_node_key
    from tinymlops.signing import public_key_base64
    from tinymlops_operator.handlers import federated as handler

    identity = Ed25519PrivateKey.generate()
    key = ensure_node_key(tmp_path, identity)
    bindings = {"d1": (annotation_value(key.binding), public_key_base64(identity.public_key())),
                "d2": ("{", public_key_base64(identity.public_key()))}
    models = {("default", "digits"): [{"source": "store://m.onnx", "data": "store://d.npz"}]}
    fleet = {"selector": {"matchLabels": {"site": "a"}}}
    devices = [("d1", {"site": "a"}), ("d2", {"site": "a"}), ("d3", {"site": "b"})]
    superlink, problems = handler._request({**SPEC, "runtime": "SuperLink"}, "ft", "default", 1, models, fleet,
                                           devices, bindings)
    assert superlink.devices == ("d1", "d2") and superlink.node_keys == (("d1", key.public_key_pem),)
    assert len(problems) == 1 and "Device d2" in problems[0] and "not JSON" in problems[0]
    simulated, none = handler._request(SPEC, "ft", "default", 1, models, fleet, devices, bindings)
    assert simulated.node_keys == () and none == []


def test_the_superlink_listens_on_loopback_unless_an_address_devices_dial_is_given(tmp_path: Path) -> None:
    from tinymlops.errors import ConfigError
    from tinymlops_operator.config import Settings

    key = tmp_path / "key.pem"
    key.write_text("k")
    env = {"TINYMLOPS_STORE": str(tmp_path), "TINYMLOPS_SIGNING_KEY": str(key)}
    assert Settings.from_env(env).superlink_host == "127.0.0.1"
    assert Settings.from_env({**env, "TINYMLOPS_SUPERLINK_HOST": " 192.168.1.20 "}).superlink_host == "192.168.1.20"
    for bad, named in (("0.0.0.0", "the address devices dial"), ("link.local", "not an IPv4 address")):
        with pytest.raises(ConfigError, match=named):
            Settings.from_env({**env, "TINYMLOPS_SUPERLINK_HOST": bad})
