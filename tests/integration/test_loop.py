"""The whole loop on the embedded stack: EdgeModel → variants → DeviceFleet → devices converge.

One stack (API emulator, gateway, kopf operator) serves the whole module; each
test uses its own resources in it, as users of one cluster would.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import OPERATOR_CLIENTS, denied_operator_requests, wait_for
from tests.unit.samples import picked
from tinymlops.fleet import FleetSimulator, make_fleet
from tinymlops.fleet.identities import FleetIdentities
from tinymlops.fleet.kubeedge import device_manifest, device_models
from tinymlops.model.digits import prepare_digits
from tinymlops.selection.filters import rejection_reason
from tinymlops.signing import load_public_key
from tinymlops.stack.demo import twin_sink
from tinymlops.stack.kube import Kube
from tinymlops.stack.local import LocalStack
from tinymlops.stack.threads import LoopThread

pytestmark = pytest.mark.integration

API = "tinymlops.io/v1alpha1"
NS = "default"


def edgemodel(name: str, source: str) -> dict[str, Any]:
    return {
        "apiVersion": API, "kind": "EdgeModel", "metadata": {"name": name, "namespace": NS},
        "spec": {"source": {"uri": source}, "data": {"uri": "store://sources/digits/data.npz"},
                 "variants": {"precisions": ["fp32", "int8"]}, "accuracyBudget": 0.01},
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack")) as running:
        prepare_digits(running.paths.store / "sources" / "digits")
        yield running


@pytest.fixture(scope="module")
def ready_model(kube: Kube) -> dict[str, Any]:
    kube.apply(edgemodel("digits", "store://sources/digits/model.onnx"))
    return wait_for(
        "EdgeModel digits Ready",
        lambda: (obj := kube.get(API, "EdgeModel", NS, "digits")) and obj.get("status", {}).get("phase") == "Ready"
        and obj,
    )


def test_edgemodel_gets_evaluated_signed_variants_in_status(ready_model: dict[str, Any], stack: LocalStack) -> None:
    status = ready_model["status"]
    variants = {v["id"]: v for v in status["variants"]}
    assert set(variants) == {"fp32", "int8-static"}
    assert all(v["accepted"] for v in variants.values())
    assert variants["int8-static"]["sizeBytes"] <= 0.35 * variants["fp32"]["sizeBytes"]
    assert variants["fp32"]["accuracy"] - variants["int8-static"]["accuracy"] <= 0.01
    assert condition(ready_model, "Ready")["status"] == "True"
    assert status["observedGeneration"] == ready_model["metadata"]["generation"]
    assert (stack.paths.store / "models" / NS / "digits" / "menu.sig").is_file()
    # The run that built it: with kfp.local, the run's directory under the operator's pipeline root.
    run_id = status["pipelineRun"]["id"]
    assert run_id.startswith("tinymlops-variants-") and (stack.paths.operator_state / "pipeline-root" / run_id).is_dir()


def test_devicefleet_converges_with_each_device_on_a_variant_it_can_run(
    ready_model: dict[str, Any], stack: LocalStack, kube: Kube
) -> None:
    devices = make_fleet(12, prefix="it")
    assert stack.gateway is not None
    for manifest in device_models(NS):
        kube.apply(manifest)
    identities = FleetIdentities()
    for index, caps in enumerate(devices):
        kube.apply(device_manifest(caps, index=index, namespace=NS, gateway_url=stack.gateway.url, fleet="it-fleet",
                                   identity=identities.public_base64(caps.name)))
    policy = {"objective": "accuracy"}
    simulator = FleetSimulator(
        devices, identities=identities, namespace=NS, fleet="it-fleet", gateway_url=stack.gateway.url,
        publisher_key=load_public_key(stack.paths.public_key.read_bytes()),
        samples=np.load(stack.paths.store / "sources" / "digits" / "data.npz")["x"], poll_interval_s=0.5,
        twin_sink=twin_sink(kube, NS),
    )
    loop = LoopThread("fleet").start()
    loop.call(simulator.start())
    try:
        kube.apply({
            "apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": "it-fleet", "namespace": NS},
            "spec": {"modelRef": {"name": "digits"}, "policy": policy,
                     "selector": {"matchLabels": {"app.kubernetes.io/part-of": "tinymlops-demo"},
                                  "matchExpressions": [{"key": "tinymlops.io/device-class", "operator": "In",
                                                        "values": sorted({d.device_class for d in devices})}]}},
        })
        fleet = wait_for(
            "DeviceFleet it-fleet Healthy",
            lambda: (obj := kube.get(API, "DeviceFleet", NS, "it-fleet"))
            and obj.get("status", {}).get("phase") == "Healthy" and obj,
        )
    finally:
        loop.call(simulator.stop())
        loop.stop()
    status = fleet["status"]
    assert status["devices"] == status["converged"] == 12
    # What each device picks from the published menu: the others run whichever variant this machine's
    # training favours (fp32 and int8 may tie on accuracy, and the smaller int8 then wins), but the
    # 128 KB Pi Zeros cannot store fp32 (~200 KB) and run int8 whatever the training gave.
    menu = json.loads((stack.paths.store / "models" / NS / "digits" / "menu.json").read_bytes())
    picks = {caps.name: picked(menu, caps, policy) for caps in devices}
    assert any(caps.model_storage_kb < 200 for caps in devices)
    assert all(picks[caps.name]["id"] == "int8-static" for caps in devices if caps.model_storage_kb < 200)
    assert all(rejection_reason(picks[caps.name], caps) is None for caps in devices)
    expected = Counter(str(variant["id"]) for variant in picks.values())
    assert status["byVariant"] == expected
    assert simulator.by_variant() == expected
    assert len(simulator.sessions) == len(expected)  # one loaded session per variant, shared by the devices
    assert simulator.inferences > 0
    assert condition(fleet, "Converged")["status"] == "True"
    # Each device reported what it runs as a KubeEdge twin, which kubectl shows in the Variant column.
    device = wait_for("twin of the first device", lambda: (kube.get("devices.kubeedge.io/v1beta1", "Device", NS,
                                                                     devices[0].name) or {}).get("status"))
    twin = device["twins"][0]
    assert twin["propertyName"] == "active-variant" and twin["reported"]["value"] == simulator.agents[
        devices[0].name].agent.active.variant_id  # type: ignore[union-attr]


def test_bad_source_sets_ready_false_naming_it_and_a_fixed_spec_recovers(
    ready_model: dict[str, Any], kube: Kube
) -> None:
    kube.apply(edgemodel("broken", "store://sources/nowhere/model.onnx"))
    failed = wait_for(
        "EdgeModel broken to fail",
        lambda: (obj := kube.get(API, "EdgeModel", NS, "broken"))
        and obj.get("status", {}).get("phase") == "Failed" and obj,
    )
    ready = condition(failed, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSource"
    assert "store://sources/nowhere/model.onnx" in ready["message"]
    # The operator keeps serving everything else.
    assert kube.get(API, "EdgeModel", NS, "digits")["status"]["phase"] == "Ready"  # type: ignore[index]

    kube.apply(edgemodel("broken", "store://sources/digits/model.onnx"))
    recovered = wait_for(
        "EdgeModel broken to recover",
        lambda: (obj := kube.get(API, "EdgeModel", NS, "broken"))
        and obj.get("status", {}).get("phase") == "Ready" and obj,
    )
    assert condition(recovered, "Ready")["status"] == "True"
    assert recovered["status"]["observedGeneration"] == 2


def test_corrupt_onnx_source_is_named_in_the_condition(
    ready_model: dict[str, Any], stack: LocalStack, kube: Kube
) -> None:
    corrupt = stack.paths.store / "sources" / "corrupt" / "model.onnx"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(b"this is not a protobuf")
    kube.apply(edgemodel("corrupt", "store://sources/corrupt/model.onnx"))
    failed = wait_for(
        "EdgeModel corrupt to fail",
        lambda: (obj := kube.get(API, "EdgeModel", NS, "corrupt"))
        and obj.get("status", {}).get("phase") == "Failed" and obj,
    )
    assert "store://sources/corrupt/model.onnx" in condition(failed, "Ready")["message"]


def test_the_gateway_serves_prometheus_metrics_without_device_ids(stack: LocalStack) -> None:
    import urllib.request

    assert stack.gateway is not None
    with urllib.request.urlopen(f"{stack.gateway.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "tinymlops_device_inferences_total" in text
    assert "it-industrial-pc" not in text


def test_a_model_signed_with_the_key_from_its_secret(
    ready_model: dict[str, Any], stack: LocalStack, kube: Kube
) -> None:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from kubernetes import client

    from tinymlops.menu import verify_variant_dir

    model = edgemodel("team-signed", "store://sources/digits/model.onnx")
    model["spec"]["signingKeySecret"] = {"name": "team-key"}
    kube.apply(model)
    waiting = wait_for(
        "EdgeModel team-signed to report the missing Secret",
        lambda: (obj := kube.get(API, "EdgeModel", NS, "team-signed"))
        and "team-key" in condition(obj, "Ready").get("message", "") and obj,
    )
    assert condition(waiting, "Ready")["reason"] == "SigningFailed"
    assert "Secret default/team-key does not exist" in condition(waiting, "Ready")["message"]

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    client.CoreV1Api(kube.api).create_namespaced_secret(NS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-key"},
        "data": {"signing-key.pem": base64.b64encode(pem).decode()},
    })
    # The build is retried with backoff (5 s first); the Secret is read at the retry.
    wait_for(
        "EdgeModel team-signed Ready",
        lambda: (obj := kube.get(API, "EdgeModel", NS, "team-signed"))
        and obj.get("status", {}).get("phase") == "Ready",
        timeout=60,
    )
    menu = verify_variant_dir(stack.paths.store / "models" / NS / "team-signed", key.public_key())
    assert menu["model"]["name"] == "team-signed"


def test_an_encrypted_model_reaches_devices_that_hold_their_group_key(
    ready_model: dict[str, Any], stack: LocalStack, kube: Kube
) -> None:
    from tinymlops.envelope import device_public_pem, generate_device_key, is_envelope

    devices = make_fleet(6, prefix="sealed")
    keys = {d.device_class: generate_device_key() for d in devices}
    model = edgemodel("sealed", "store://sources/digits/model.onnx")
    model["spec"]["encryption"] = {"recipients": [
        {"name": cls, "publicKey": device_public_pem(key.public_key()).decode()} for cls, key in keys.items()]}
    kube.apply(model)
    wait_for("EdgeModel sealed Ready", lambda: (obj := kube.get(API, "EdgeModel", NS, "sealed"))
             and obj.get("status", {}).get("phase") == "Ready")
    folder = stack.paths.store / "models" / NS / "sealed"
    assert all(is_envelope(blob.read_bytes()) for blob in (folder / "blobs").iterdir())
    assert len(list((folder / "keys").iterdir())) == len(keys)
    data_key = client_secret(kube, "sealed-data-key")  # kept for rebuilds and new recipients
    assert data_key is not None

    assert stack.gateway is not None
    identities = FleetIdentities()
    for index, caps in enumerate(devices):
        kube.apply(device_manifest(caps, index=index, namespace=NS, gateway_url=stack.gateway.url,
                                   fleet="sealed-fleet", identity=identities.public_base64(caps.name)))
    simulator = FleetSimulator(
        devices, identities=identities, namespace=NS, fleet="sealed-fleet", gateway_url=stack.gateway.url,
        publisher_key=load_public_key(stack.paths.public_key.read_bytes()),
        samples=np.load(stack.paths.store / "sources" / "digits" / "data.npz")["x"], poll_interval_s=0.5,
        group_keys=keys,
    )
    loop = LoopThread("fleet").start()
    loop.call(simulator.start())
    try:
        kube.apply({
            "apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": "sealed-fleet", "namespace": NS},
            "spec": {"modelRef": {"name": "sealed"},
                     "selector": {"matchExpressions": [{"key": "tinymlops.io/device-class", "operator": "In",
                                                        "values": sorted(keys)}],
                                  "matchLabels": {"app.kubernetes.io/part-of": "tinymlops-demo"}}},
        })
        wait_for("every sealed device running", lambda: simulator.phases().get("Running") == len(devices))
    finally:
        loop.call(simulator.stop())
        loop.stop()
    assert sum(simulator.by_variant().values()) == len(devices)


def client_secret(kube: Kube, name: str) -> Any:
    from kubernetes import client

    return client.CoreV1Api(kube.api).read_namespaced_secret(name, NS).data


def events(kube: Kube, reason: str, name: str) -> list[Any]:
    from kubernetes import client

    found = client.CoreV1Api(kube.api).list_namespaced_event(NS).items
    return [e for e in found if e.reason == reason and e.involved_object.name == name]


def post_reports(stack: LocalStack, reports: list[dict[str, Any]]) -> dict[str, Any]:
    import urllib.request

    assert stack.gateway is not None
    request = urllib.request.Request(f"{stack.gateway.url}/v1/reports", method="POST",
                                     data=json.dumps({"reports": reports}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def test_a_device_registered_later_is_believed_and_one_that_keeps_failing_is_named_on_its_fleet(
    ready_model: dict[str, Any], stack: LocalStack, kube: Kube
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.gateway.authn import parse_registry
    from tinymlops.layout import DEVICE_REGISTRY_KEY
    from tinymlops.report import Report, sign_report

    assert stack.gateway is not None
    wait_for("DeviceFleet it-fleet", lambda: kube.get(API, "DeviceFleet", NS, "it-fleet"))
    good, bad = make_fleet(2, prefix="id")
    identities = FleetIdentities()
    kube.apply(device_manifest(good, index=0, namespace=NS, gateway_url=stack.gateway.url, fleet="it-fleet",
                               identity=identities.public_base64(good.name)))
    kube.apply(device_manifest(bad, index=1, namespace=NS, gateway_url=stack.gateway.url, fleet="it-fleet",
                               identity="LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0="))
    registry_file = stack.paths.store / DEVICE_REGISTRY_KEY
    registry = wait_for("the operator to register the new device", lambda: registry_file.is_file() and (
        r := parse_registry(registry_file.read_bytes())) and (NS, good.name) in r and r)
    assert (NS, bad.name) not in registry  # left out, and named where its owner looks
    (warning,) = wait_for("a Warning on the Device with the malformed key",
                          lambda: events(kube, "InvalidIdentityKey", bad.name))
    assert warning.type == "Warning" and f"{NS}/{bad.name}" in warning.message

    report = Report(device=good.name, namespace=NS, fleet="it-fleet", device_class=good.device_class,
                    arch=good.arch, phase="Pending", menu_version=0, sent_at=1.0)
    assert post_reports(stack, [identities.signer(good.name).sign(report).to_json()])["accepted"] == 1
    forger = Ed25519PrivateKey.generate()
    forged = post_reports(stack, [sign_report(report, forger, seq).to_json() for seq in (10, 11, 12)])
    assert forged["accepted"] == 0 and {r["reason"] for r in forged["rejected"]} == {"bad-signature"}
    (named,) = wait_for("a ReportsRejected Warning on the fleet", lambda: events(kube, "ReportsRejected", "it-fleet"))
    assert good.name in named.message and "bad-signature x3" in named.message


def test_every_request_the_operator_made_is_allowed_by_the_charts_rbac(
    stack: LocalStack, chart_cluster_role: dict[tuple[str, str], set[str]]
) -> None:
    """Runs last in this module, after builds with Secret-held keys, encrypted models and a converged fleet."""
    requests = stack.emulator.requests
    seen = {(verb, group, resource) for (client, verb, group, resource) in requests if client in OPERATOR_CLIENTS}
    assert ("get", "", "secrets") in seen and ("patch", "tinymlops.io", "devicefleets/status") in seen
    assert denied_operator_requests(requests, chart_cluster_role) == []
