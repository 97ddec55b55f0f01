"""Real Flower deployment on loopback: a `flower-superlink` with TLS and SuperNode authentication, and devices that
take part through `tinymlops agent federate` (the real `flower-supernode` under the participation policy).

The operator's runner starts its own SuperLink, on which two registered devices train one round; a second
SuperLink serves the other tests: a device whose node key was never registered is refused; a device whose policy
forbids training never starts a SuperNode; one whose charger is unplugged while it runs stops.  Assertions are
about what must happen on any machine, not about accuracy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from tinymlops.agent.standalone import save_policy  # noqa: E402
from tinymlops.federated.nodekey import annotation_value, ensure_node_key, verified_node_key  # noqa: E402
from tinymlops.federated.sample import FederatedSample, federated_sample  # noqa: E402
from tinymlops.federated.spec import parse_spec  # noqa: E402
from tinymlops.federated.superlink import LocalSuperLink  # noqa: E402
from tinymlops.signing import IDENTITY_KEY_FILE, private_key_pem, public_key_base64  # noqa: E402
from tinymlops_operator.federated import FederatedLauncher, federated_train_fn  # noqa: E402
from tinymlops_operator.logic import federated as logic  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {"battery_pct": 90, "charging": True, "network": "wifi", "idle": True}


@pytest.fixture(scope="module")
def sample() -> FederatedSample:
    """A weak digits model and two devices' non-IID shards (sklearn, under a second)."""
    return federated_sample(["a", "b"], slice_size=60, seed=0)


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSuperLink]:
    with LocalSuperLink(tmp_path_factory.mktemp("superlink")) as link:
        yield link


def device(root: Path, name: str, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any],
           context: dict[str, Any] = ALLOWED) -> tuple[Path, Ed25519PrivateKey]:
    """A provisioned device: identity key, its fleet's policy (consent), its data, its context file."""
    state = root / name
    state.mkdir(parents=True)
    identity = Ed25519PrivateKey.generate()
    (state / IDENTITY_KEY_FILE).write_bytes(private_key_pem(identity))
    save_policy(state, {"federated": {"consent": True}})
    np.savez(state / "data.npz", x=x, y=y)
    (state / "context.json").write_text(json.dumps(context))
    return state, identity


def register(link: LocalSuperLink, state: Path, identity: Ed25519PrivateKey) -> None:
    """What the operator does for a Device: register the node key only if its binding verifies."""
    binding = ensure_node_key(state, identity).binding
    link.register(verified_node_key(binding, identity.public_key(), source=state.name))


def federate(link: LocalSuperLink | tuple[str, Path], state: Path) -> subprocess.Popen[str]:
    address, ca = (link.address, link.ca_path) if isinstance(link, LocalSuperLink) else link
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator"), str(ROOT / "pipelines")])}
    return subprocess.Popen(
        [sys.executable, "-m", "tinymlops", "agent", "federate", "--state-dir", str(state), "--superlink",
         address, "--data", str(state / "data.npz"), "--context", str(state / "context.json"),
         "--root-certificates", str(ca), "--poll-seconds", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def stop(agent: subprocess.Popen[str]) -> tuple[int, str]:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    output, _ = agent.communicate(timeout=30)
    return agent.returncode, output


def test_the_operator_trains_registered_devices_on_its_own_superlink(sample: FederatedSample,
                                                                     tmp_path: Path) -> None:
    """The operator's runner with spec.runtime SuperLink: it starts a SuperLink, registers the node keys bound
    to the Devices' identities, says where it is, and two `agent federate` devices train a round on it."""
    store = tmp_path / "store"
    (store / "sources").mkdir(parents=True)
    (store / "sources" / "m.onnx").write_bytes(sample.weak_model)
    np.savez(store / "sources" / "held.npz", x=sample.x_test, y=sample.y_test)
    devices = [device(tmp_path, f"dev{i}", *shard) for i, shard in enumerate(sample.shards)]
    bindings = {state.name: (annotation_value(ensure_node_key(state, identity).binding),
                             public_key_base64(identity.public_key())) for state, identity in devices}
    keys, problems = logic.node_keys(sorted(bindings), bindings)
    assert problems == [] and len(keys) == 2
    spec = parse_spec({"model": {"name": "digits"}, "fleet": {"name": "real"}, "rounds": 1, "runtime": "SuperLink",
                       "clients": {"fraction": 1.0, "min": 2}, "learningRate": 0.01, "waitForClientsSeconds": 60,
                       "promotion": {"minAccuracyGain": -1, "maxClassLoss": 1}})
    request = logic.TrainingRequest("default/ft@1", "default", "ft", 1, spec, "store://sources/m.onnx",
                                    "store://sources/held.npz", tuple(sorted(bindings)),
                                    logic.revision_prefix("default", "digits", "ft", 1), node_keys=tuple(keys))
    launcher = FederatedLauncher(federated_train_fn(store, None))
    launcher.submit(request)
    endpoint = wait_for(lambda: launcher.endpoint(request.run_key), "the SuperLink's announcement", 60)
    assert endpoint["registered"] == 2
    ca = tmp_path / "superlink-ca.pem"
    ca.write_text(endpoint["caCertificate"])
    agents = [federate((endpoint["address"], ca), state) for state, _ in devices]
    try:
        outcome = wait_for(lambda: launcher.poll(request.run_key), "the training", 300)
    finally:
        ended = [stop(agent) for agent in agents]
        launcher.shutdown()
    assert outcome.error is None, outcome.error
    result = outcome.result
    assert result is not None and result["clientsAvailable"] == 2
    assert [(r["round"], r["clients"], r["dropped"]) for r in result["rounds"]] == [(1, 2, {})]
    assert result["verdict"]["promote"] and result["revision"]["uri"].startswith("store://sources/default/digits")
    trained = (store / request.revision_prefix / "model.onnx").read_bytes()
    assert trained != sample.weak_model  # trained weights, written back into the same graph
    for code, output in ended:
        assert code == 0, output
        assert "stopped on request" in output


def wait_for(value: Any, what: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while (found := value()) is None:
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.2)
    return found


def test_an_unregistered_device_is_refused(superlink: LocalSuperLink, tmp_path: Path) -> None:
    state, _ = device(tmp_path, "stranger", np.zeros((4, 64), np.float32), np.zeros(4, np.int64))
    code, output = stop_when_done(federate(superlink, state))
    assert code == 1
    assert "refused this node" in output and "tinymlops.io/flower-node-key" in output


def test_a_device_whose_policy_forbids_training_does_not_start(superlink: LocalSuperLink, tmp_path: Path) -> None:
    state, identity = device(tmp_path, "unplugged", np.zeros((4, 64), np.float32), np.zeros(4, np.int64),
                             {**ALLOWED, "charging": False, "network": "metered"})
    register(superlink, state, identity)
    code, output = stop_when_done(federate(superlink, state))
    assert code == 6
    assert "requireCharging" in output and "requireUnmetered" in output
    assert not (state / "flower-supernode.log").exists()


def test_a_supernode_stops_when_the_charger_is_unplugged(superlink: LocalSuperLink, tmp_path: Path) -> None:
    state, identity = device(tmp_path, "phone", np.zeros((4, 64), np.float32), np.zeros(4, np.int64))
    register(superlink, state, identity)
    agent = federate(superlink, state)
    log = state / "flower-supernode.log"
    deadline = time.monotonic() + 30
    while "SuperNode ID" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    (state / "context.json").write_text(json.dumps({**ALLOWED, "charging": False}))
    code, output = stop_when_done(agent)
    assert code == 0, output
    assert "stopped: not charging" in output


def stop_when_done(agent: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = agent.communicate(timeout=60)
    return agent.returncode, output
