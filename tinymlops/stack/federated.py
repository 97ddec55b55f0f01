"""The demo's federated scenario: the fleet improves a weak model on its own data, and the result rolls out.

The EdgeModel starts from a weak digits model (trained on 60 images); every simulated device gets a shard of the
other training images, non-IID by device class, in its own file (`<root>/device-data/<device>.npz`: the device's
data, which only its simulated Flower client reads).  A FederatedTraining runs its rounds with Flower; when the
promotion rule holds on the held-out data (tagged per device class), the operator points the EdgeModel at the
trained model, the variants pipeline rebuilds the menu, and the fleet's canary steps roll revision 2 out.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops import API_GROUP, API_VERSION
from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import DemoError
from tinymlops.fleet import FleetSimulator
from tinymlops.model.digits import DigitsArtifacts
from tinymlops.stack.local import LocalStack
from tinymlops.store import atomic_write

CR_API = f"{API_GROUP}/{API_VERSION}"
DATA_DIR_ENV = "TINYMLOPS_FEDERATED_DATA_DIR"  # tinymlops_operator.config reads it
TRAINING_NAME = "digits-federated"
POLL_S = 0.5


@contextlib.contextmanager
def device_data_env(root: Path) -> Iterator[Path]:
    """Where the simulated devices keep their data, exported for the operator the stack starts (then restored)."""
    directory = root / "device-data"
    directory.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        if saved is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = saved


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def prepare_federated(source_dir: Path, data_dir: Path, devices: Sequence[DeviceCapabilities]) -> DigitsArtifacts:
    """The weak model and held-out data (with each image's device class) as the EdgeModel's source, and each
    device's shard in its own file."""
    import onnxruntime as ort

    from tinymlops.federated.sample import federated_sample

    sample = federated_sample([device.device_class for device in devices])
    model_path, data_path = source_dir / "model.onnx", source_dir / "data.npz"
    atomic_write(model_path, sample.weak_model)
    atomic_write(data_path, _npz(x=sample.x_test, y=sample.y_test, group=sample.groups))
    for device, (x, y) in zip(devices, sample.shards, strict=True):
        atomic_write(data_dir / f"{device.name}.npz", _npz(x=x, y=y))
    session = ort.InferenceSession(sample.weak_model, providers=["CPUExecutionProvider"])
    predicted = np.asarray(session.run(None, {session.get_inputs()[0].name: sample.x_test})[0]).argmax(axis=1)
    return DigitsArtifacts(model_path, data_path, float(np.mean(predicted == sample.y_test)))


def training_manifest(template: Mapping[str, Any] | None, model: Mapping[str, Any], fleet: Mapping[str, Any],
                      devices: int, rounds: int) -> dict[str, Any]:
    """The examples' FederatedTraining (or, without one, the same run built here), aimed at the demo's model and
    fleet, with the demo's rounds and a client minimum its fleet can meet."""
    namespace = fleet["metadata"].get("namespace", "default")
    manifest: dict[str, Any] = copy.deepcopy(dict(template)) if template else {
        "apiVersion": CR_API, "kind": "FederatedTraining", "metadata": {"name": TRAINING_NAME},
        "spec": {"clients": {"fraction": 0.5, "min": 2}, "localEpochs": 5, "learningRate": 0.05,
                 "strategy": {"name": "FedAvg"}, "promotion": {"minAccuracyGain": 0.01, "maxClassLoss": 0.02}}}
    manifest["metadata"] = {"name": manifest["metadata"].get("name", TRAINING_NAME), "namespace": namespace}
    spec = manifest["spec"]
    spec.update(model={"name": model["metadata"]["name"]}, fleet={"name": fleet["metadata"]["name"]}, rounds=rounds)
    clients = spec.setdefault("clients", {})
    clients["min"] = min(devices, int(clients.get("min", 2)))
    return manifest


def _wait(kube: Any, kind: str, namespace: str, name: str, done: Callable[[Mapping[str, Any]], bool],
          deadline: float, what: str, progress: Callable[[str], None]) -> dict[str, Any]:
    last = ""
    while True:
        status: dict[str, Any] = (kube.get(CR_API, kind, namespace, name) or {}).get("status") or {}
        line = f"{what}: phase {status.get('phase', '-')}"
        if line != last:
            progress(line)
            last = line
        if done(status):
            return status
        if time.monotonic() > deadline:
            why = "; ".join(f"{c.get('type')} {c.get('reason')}: {c.get('message')}"
                            for c in status.get("conditions") or ())
            raise DemoError(f"timed out waiting for {what}: {line} ({why})")
        time.sleep(POLL_S)


def run_federated(stack: LocalStack, simulator: FleetSimulator, *, model: Mapping[str, Any],
                  fleet: Mapping[str, Any], template: Mapping[str, Any] | None, rounds: int, deadline: float,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    """Apply the FederatedTraining, wait for its verdict and, when promoted, for every device on the new revision."""
    assert stack.kube is not None
    kube = stack.kube
    namespace, fleet_name = fleet["metadata"].get("namespace", "default"), fleet["metadata"]["name"]
    before = (kube.get(CR_API, "DeviceFleet", namespace, fleet_name) or {}).get("status") or {}
    stable = int(before.get("stableRevision") or 1)
    started = time.monotonic()
    training = training_manifest(template, model, fleet, len(simulator.agents), rounds)
    kube.apply(training)
    status = _wait(kube, "FederatedTraining", namespace, training["metadata"]["name"],
                   lambda s: s.get("phase") in ("Promoted", "Rejected", "Failed"), deadline, "federated training",
                   progress)
    trained_after = time.monotonic() - started
    for entry in status.get("rounds") or ():
        progress(f"round {entry['round']}: {entry['clients']} clients, held-out accuracy {entry['accuracy']:.2%}")
    report: dict[str, Any] = {
        "phase": status.get("phase"), "strategy": status.get("strategy"),
        "accuracy_per_round": [r["accuracy"] for r in status.get("rounds") or ()],
        "clients_per_round": [r["clients"] for r in status.get("rounds") or ()],
        "dropped_updates": [r["dropped"] for r in status.get("rounds") or ()],
        "base_accuracy": status.get("baseAccuracy"), "accuracy": status.get("accuracy"),
        "epsilon": status.get("epsilon"), "promoted": status.get("phase") == "Promoted",
        "verdict": status.get("verdict"), "revision_source": status.get("revision"),
        "seconds_to_verdict": round(trained_after, 1),
        "conditions": status.get("conditions"),
    }
    if not report["promoted"]:
        return report
    revision = stable + 1
    _wait(kube, "DeviceFleet", namespace, fleet_name,
          lambda s: s.get("stableRevision") == revision or any(
              h.get("revision") == revision and h.get("outcome") == "Aborted"
              for h in (s.get("rollout") or {}).get("history") or ()),
          deadline, f"canary of revision {revision}", progress)
    fleet_status = (kube.get(CR_API, "DeviceFleet", namespace, fleet_name) or {}).get("status") or {}
    rolled_out = fleet_status.get("stableRevision") == revision
    while rolled_out and simulator.by_revision().get(revision, 0) < len(simulator.agents):
        if time.monotonic() > deadline:
            raise DemoError(f"devices did not all reach revision {revision}: {dict(simulator.by_revision())}")
        time.sleep(POLL_S)
    report.update(revision=revision, rollout="promoted" if rolled_out else "rolled back",
                  devices_on_new_revision=simulator.by_revision().get(revision, 0),
                  seconds_from_verdict_to_fleet=round(time.monotonic() - started - trained_after, 1))
    return report
