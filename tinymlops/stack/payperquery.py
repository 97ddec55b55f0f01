"""The demo's pay-per-query scenario: licensed devices serve offline, run out, are refilled, and cheats are caught.

Once the fleet has converged, a `License` (licensee `acme`, 10 inferences per token, 30 per
device per month) is applied; the operator issues each device of the fleet a token bound to
its identity key and the fleet's stable menu.  Four of the fleet's devices then run as
standalone agents, each with its own state directory, installing the fleet's signed variant
directory and fetching its token through the gateway, as a real device would:

- `honest` serves within its quota offline;
- `runs-out` serves its 10, is refused the 11th (`agent infer` would exit 5), reconnects:
  uploads its checkpoints, the operator sees the token used up in the gateway's reconciled
  usage and issues a refill, which the device fetches and serves under;
- `restorer` keeps a copy of its state, serves, uploads, then restores the copy and serves
  again on the re-used counters: the gateway names `rolled-back-counter` at the upload;
- `swapper` answers the server's canary audit with a model of its own (same input and output
  shapes, other weights): its outputs disagree with the licensed variant's, which the server
  computes.

A sampled receipt audit (k for 1 % at 95 %) of the honest device's checkpoint passes.  The
report's `licensing` section holds what happened; a step that does not happen is a DemoError.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from tinymlops import API_GROUP, API_VERSION
from tinymlops.agent.install import install_from_dir
from tinymlops.agent.licensed import export_usage
from tinymlops.agent.standalone import infer, open_agent
from tinymlops.agent.usage_uplink import refresh_license, upload
from tinymlops.envelope import device_key_pem
from tinymlops.errors import DemoError, LicenseRefusedError
from tinymlops.fleet.identities import FleetIdentities
from tinymlops.layout import model_prefix
from tinymlops.licensing.audit import answer, choose, compare_canaries, samples_for, verify_answers
from tinymlops.runners import Runner
from tinymlops.signing import private_key_pem
from tinymlops.stack.local import LocalStack
from tinymlops.stack.waits import wait_until

CR_API = f"{API_GROUP}/{API_VERSION}"
PER_TOKEN, PER_PERIOD = 10, 30
ROLES = ("honest", "runs-out", "restorer", "swapper")
CANARIES = 32


def license_manifest(namespace: str, fleet: str) -> dict[str, Any]:
    return {"apiVersion": CR_API, "kind": "License", "metadata": {"name": "acme", "namespace": namespace},
            "spec": {"licensee": "acme", "fleetRef": {"name": fleet},
                     "quota": {"perPeriod": PER_PERIOD, "perToken": PER_TOKEN, "period": "month"},
                     "validity": "7d"}}


class Devices:
    """The scenario's licensed devices: standalone state directories, online through the stack's gateway."""

    def __init__(self, stack: LocalStack, root: Path, names: Mapping[str, str], *, namespace: str, fleet: str) -> None:
        assert stack.gateway is not None
        self.gateway, self.root, self.names = stack.gateway.url, root, dict(names)
        self.namespace, self.fleet = namespace, fleet

    def state(self, role: str) -> Path:
        return self.root / role

    async def _upload(self, role: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            return await upload(session, self.gateway, self.state(role), namespace=self.namespace, fleet=self.fleet,
                                device=self.names[role], now=time.time())

    async def _refresh(self, role: str) -> Any:
        async with aiohttp.ClientSession() as session:
            return await refresh_license(session, self.gateway, self.state(role), namespace=self.namespace,
                                         fleet=self.fleet, device=self.names[role], now=time.time())

    def upload(self, role: str) -> dict[str, Any]:
        return asyncio.run(self._upload(role))

    def refresh(self, role: str) -> Any:
        return asyncio.run(self._refresh(role))


def run_pay_per_query(stack: LocalStack, *, model: Mapping[str, Any], fleet: Mapping[str, Any],
                      identities: FleetIdentities, device_names: list[str], group_key: X25519PrivateKey | None,
                      samples: NDArray[np.float32], deadline: float, progress: Callable[[str], None]) -> dict[str, Any]:
    assert stack.kube is not None and stack.gateway is not None
    namespace, fleet_name = fleet["metadata"].get("namespace", "default"), fleet["metadata"]["name"]
    if len(device_names) < len(ROLES):
        raise DemoError(f"pay-per-query needs {len(ROLES)} devices, the fleet has {len(device_names)}")
    names = dict(zip(ROLES, device_names, strict=False))
    stack.kube.apply(license_manifest(namespace, fleet_name))
    variant_dir = stack.paths.store / model_prefix(model["metadata"].get("namespace", "default"),
                                                  model["metadata"]["name"])
    root = stack.paths.root / "licensing"
    shutil.rmtree(root, ignore_errors=True)
    devices = Devices(stack, root, names, namespace=namespace, fleet=fleet_name)
    for role in ROLES:
        install_from_dir(variant_dir, devices.state(role), pubkey_pem=stack.paths.public_key.read_bytes(),
                         device_key_pem=device_key_pem(group_key) if group_key else None,
                         identity_pem=private_key_pem(identities.key(names[role])))
        wait_until(f"the operator's token for {names[role]}", lambda r=role: devices.refresh(r), deadline,  # type: ignore[misc]
                   why=lambda: f"; License status: {_license_status(stack, namespace)}")
    progress(f"licence acme applied: tokens of {PER_TOKEN} inferences issued to {', '.join(names.values())}")

    # Offline: no upload, no refresh; each device serves from its licence.
    x = samples
    infer(devices.state("honest"), x[:6])
    infer(devices.state("runs-out"), x[:PER_TOKEN])
    try:
        infer(devices.state("runs-out"), x[PER_TOKEN:PER_TOKEN + 1])
        raise DemoError("runs-out: the 11th inference was served beyond the licence's quota")
    except LicenseRefusedError as exc:
        refused = str(exc)
    progress(f"offline: {names['runs-out']} refused: {refused}")
    backup = root / "restorer-backup"
    shutil.copytree(devices.state("restorer"), backup)
    infer(devices.state("restorer"), x[:8])
    infer(devices.state("swapper"), x[:5])

    # Reconnect: every device uploads its checkpoints; the used-up token is refilled by the operator.
    uploads = {role: devices.upload(role) for role in ROLES}
    refill = wait_until("the operator's refill for runs-out", lambda: devices.refresh("runs-out"), deadline,
                        why=lambda: f"; License status: {_license_status(stack, namespace)}")
    infer(devices.state("runs-out"), x[PER_TOKEN:PER_TOKEN + 3])
    progress(f"reconnected: {names['runs-out']} refilled (token {refill.token_id[:8]}, epoch {refill.epoch}, "
             f"{refill.quota} inferences) and serving again")

    # The restorer goes back to its copy and spends the same counters again on other queries.
    shutil.rmtree(devices.state("restorer"))
    shutil.copytree(backup, devices.state("restorer"))
    infer(devices.state("restorer"), x[20:28])
    caught = devices.upload("restorer")
    kinds = sorted({a["kind"] for a in caught["anomalies"]})
    if "rolled-back-counter" not in kinds:
        raise DemoError(f"restorer: the restored state was not caught at reconcile (anomalies: {kinds})")
    progress(f"{names['restorer']} restored an old state: caught at reconcile ({', '.join(kinds)})")

    audits = _audits(devices, root, samples)
    progress(f"canary audit: {names['honest']} passes, {names['swapper']} (another model) "
             f"{'caught' if not audits['canary']['swapper']['ok'] else 'NOT caught'}")
    if audits["canary"]["swapper"]["ok"] or not audits["canary"]["honest"]["ok"] or not audits["receipts"]["ok"]:
        raise DemoError(f"pay-per-query audits: {json.dumps(audits)}")
    for role in ("honest", "runs-out"):
        devices.upload(role)
    status = wait_until("the License's usage in its status", lambda: _status_with_usage(stack, namespace), deadline)
    summary = _gateway_usage(stack.gateway.url, namespace, fleet_name)
    return {
        "license": {"licensee": "acme", "per_token": PER_TOKEN, "per_period": PER_PERIOD, "status": status},
        "devices": names, "refused": refused,
        "refill": {"device": names["runs-out"], "token_id": refill.token_id, "epoch": refill.epoch,
                   "quota": refill.quota},
        "uploads": {role: {"usage": u["usage"], "anomalies": [a["kind"] for a in u["anomalies"]]}
                    for role, u in uploads.items()},
        "rolled_back": {"device": names["restorer"], "anomalies": kinds},
        "audits": audits,
        "gateway_usage": {"inferences": summary["inferences"], "anomalies": summary["anomalies"]},
    }


def _audits(devices: Devices, root: Path, samples: NDArray[np.float32]) -> dict[str, Any]:
    """The server's canary audit of two devices, and a sampled receipt audit of the honest one."""
    canaries = np.random.default_rng(0).random((CANARIES, samples.shape[1]), dtype=np.float32)
    reference = open_agent(devices.state("honest"))  # the licensed variant, as verified from the signed menu
    assert reference.active is not None
    expected = reference.active.runner.many(canaries)
    honest = compare_canaries(expected, open_agent(devices.state("honest")).active.runner.many(canaries))  # type: ignore[union-attr]
    swapped = compare_canaries(expected, Runner.load(other_model(samples.shape[1], expected.shape[1])).many(canaries))
    export = export_usage(devices.state("honest"), time.time())
    checkpoint = export.checkpoints[-1]
    k = samples_for(0.01, 0.95)
    asked = choose(checkpoint, k, b"server nonce")
    receipts = export.receipts.between(checkpoint.start, checkpoint.end)
    verdict = verify_answers(checkpoint, asked, answer(checkpoint, receipts, asked))
    return {"canary": {"honest": honest.to_json(), "swapper": swapped.to_json()},
            "receipts": {"k_for_1pct_at_95": k, "asked": len(asked), "passed": verdict.passed, "ok": verdict.ok}}


def _license_status(stack: LocalStack, namespace: str) -> dict[str, Any]:
    assert stack.kube is not None
    obj = stack.kube.get(CR_API, "License", namespace, "acme") or {}
    return dict(obj.get("status") or {})


def other_model(features: int, classes: int, seed: int = 1) -> bytes:
    """What the swapper runs instead of the licensed variant: a softmax regression with random weights, the
    same input and output shapes (so nothing but the outputs can tell)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, (features, classes)).astype(np.float32), "w"),
               numpy_helper.from_array(np.zeros(classes, np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])]
    graph = helper.make_graph(nodes, "swapped", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _status_with_usage(stack: LocalStack, namespace: str) -> dict[str, Any] | None:
    status = _license_status(stack, namespace)
    usage = status.get("usage") or {}
    return dict(status) if usage.get("refills") and usage.get("anomalyCount") else None


def _gateway_usage(url: str, namespace: str, fleet: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/v1/fleets/{namespace}/{fleet}/usage", timeout=10) as response:
        summary: dict[str, Any] = json.load(response)
    return summary
