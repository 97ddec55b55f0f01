"""Runs FederatedTrainings off the operator's event loop, one at a time, and publishes a promoted model.

A run: read the EdgeModel's source and the held-out data from the store; run the rounds with Flower over the
fleet's devices; score the base and the trained model on the held-out data (onnxruntime, as devices run them)
and apply the promotion rule; when it holds, write the trained model, its lineage stamped in its metadata
(`tinymlops.variants.lineage`), and the same record as `training.json` under the revision's store folder.
The handler then points the EdgeModel at it.

Where the devices are: on the embedded stack each simulated device's own data is `<data dir>/<device>.npz`
(`TINYMLOPS_FEDERATED_DATA_DIR`, written by the fleet simulator) and Flower's simulation engine runs one
SuperNode per device over it; a device without such a file does not take part.  With `spec.runtime: SuperLink`
the run gets its own local flower-superlink (`tinymlops.federated.superlink`), the fleet's bound node keys are
registered with it, its address and CA are announced for status, and real devices connect with `tinymlops agent
federate`.  On a cluster the SuperLink's manifests are `logic.federated.superlink_manifests`: built, not applied.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import hashlib
import io
import json
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import InvalidDataError, NotEnoughClientsError
from tinymlops.extras import require_extra
from tinymlops.federated.nodekey import NODE_KEY_ANNOTATION
from tinymlops.store import atomic_write
from tinymlops.variants.lineage import stamp_training
from tinymlops.variants.source import resolve_uri
from tinymlops_operator.logic import federated as logic

TrainFn = Callable[[logic.TrainingRequest], dict[str, Any]]


@dataclass(frozen=True)
class TrainingOutcome:
    result: dict[str, Any] | None
    error: BaseException | None


def _predict(model: bytes, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    predicted: np.ndarray[Any, Any] = np.asarray(session.run(None, {name: x})[0]).argmax(axis=1)
    return predicted


def federated_train_fn(store_root: Path, data_dir: Path | None, cpus: int = 2, *,
                       superlink_host: str = "127.0.0.1") -> TrainFn:
    def train(request: logic.TrainingRequest) -> dict[str, Any]:
        require_extra("federated", "FederatedTraining")
        from tinymlops.federated.promotion import decide
        from tinymlops.federated.run import train_federated

        spec = request.spec
        shards = [data_dir / f"{device}.npz" for device in request.devices] if data_dir else []
        shards = [path for path in shards if path.is_file()]
        if spec.runtime == "SuperLink" and len(request.node_keys) < spec.min_clients:
            raise NotEnoughClientsError(f"{len(request.node_keys)} of the fleet's {len(request.devices)} devices carry "
                                        f"a verified Flower node key ({NODE_KEY_ANNOTATION}); spec.clients.min is "
                                        f"{spec.min_clients}")
        if spec.runtime != "SuperLink" and len(shards) < spec.min_clients:
            raise NotEnoughClientsError(f"{len(shards)} of the fleet's {len(request.devices)} devices can take part "
                                        f"(have local data); spec.clients.min is {spec.min_clients}")
        model = resolve_uri(request.source_uri, store_root)
        with np.load(io.BytesIO(resolve_uri(request.data_uri, store_root))) as data:
            if "y" not in data:
                raise InvalidDataError(f"{request.data_uri}: held-out data needs labels (y) for the promotion rule")
            x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
            groups = data["group"].astype(str) if "group" in data else None
        with tempfile.TemporaryDirectory(prefix="federated-") as workdir:
            if spec.runtime == "SuperLink":
                outcome = _train_on_superlink(request, model, x, y, Path(workdir), superlink_host)
            else:
                outcome = train_federated(model, shards, spec, x_eval=x, y_eval=y, workdir=Path(workdir),
                                          cpus=cpus, what=request.source_uri)
        verdict = decide(spec.promotion, y, _predict(model, x), _predict(outcome.model, x), groups)
        result: dict[str, Any] = {
            "rounds": [r.as_dict() for r in outcome.rounds], "clientsAvailable": outcome.clients_available,
            "baseAccuracy": round(verdict.base_accuracy, 4), "accuracy": round(verdict.accuracy, 4),
            "epsilon": None if outcome.epsilon is None else round(outcome.epsilon, 3), "delta": outcome.delta,
            "verdict": verdict.as_dict(), "revision": None}
        if verdict.promote:
            record = logic.lineage(request, result, hashlib.sha256(model).hexdigest())
            published = stamp_training(outcome.model, record)  # every variant built from it names this run
            sha256 = hashlib.sha256(published).hexdigest()
            atomic_write(store_root / request.revision_prefix / "model.onnx", published)
            atomic_write(store_root / request.revision_prefix / "training.json",
                         json.dumps({"kind": "FederatedTraining", **record}, indent=2).encode() + b"\n")
            result["revision"] = {"uri": f"store://{request.revision_prefix}/model.onnx", "sha256": sha256}
        return result

    return train


def _train_on_superlink(request: logic.TrainingRequest, model: bytes, x: np.ndarray[Any, Any],
                        y: np.ndarray[Any, Any], workdir: Path, host: str) -> Any:
    """A local flower-superlink for this run: the fleet's bound node keys registered, devices told where it is."""
    from tinymlops.federated.deployed import train_on_superlink
    from tinymlops.federated.superlink import LocalSuperLink

    with LocalSuperLink(workdir / "superlink", host=host) as superlink:
        for _, public_key_pem in request.node_keys:
            superlink.register(public_key_pem)
        announce_superlink({"address": superlink.address, "caCertificate": superlink.tls.ca_pem.decode("ascii"),
                            "registered": len(request.node_keys)})
        return train_on_superlink(superlink, model, request.spec, x_eval=x, y_eval=y, run_dir=workdir / "run",
                                  what=request.source_uri)


_ANNOUNCE: contextvars.ContextVar[Callable[[dict[str, Any]], None]] = contextvars.ContextVar("announce")


def announce_superlink(endpoint: dict[str, Any]) -> None:
    """From a training's own thread: its SuperLink is up (address, CA, node keys registered) for status."""
    callback = _ANNOUNCE.get(None)
    if callback is not None:
        callback(endpoint)


class FederatedLauncher:
    """One training at a time (Ray takes the host's cores), submitted once per run key and polled."""

    def __init__(self, train: TrainFn) -> None:
        self._train = train
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="federated")
        self._runs: dict[str, concurrent.futures.Future[dict[str, Any]]] = {}
        self._requests: dict[str, logic.TrainingRequest] = {}
        self._endpoints: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def submit(self, request: logic.TrainingRequest) -> None:
        with self._lock:
            if request.run_key not in self._runs:
                self._runs[request.run_key] = self._executor.submit(self._run, request)
                self._requests[request.run_key] = request

    def _run(self, request: logic.TrainingRequest) -> dict[str, Any]:
        def announce(endpoint: dict[str, Any]) -> None:
            with self._lock:
                self._endpoints[request.run_key] = endpoint

        _ANNOUNCE.set(announce)  # this worker thread's context: only this run announces through it
        return self._train(request)

    def endpoint(self, run_key: str) -> dict[str, Any] | None:
        """The running training's SuperLink (address, caCertificate, registered), once it is up."""
        with self._lock:
            return self._endpoints.get(run_key)

    def request(self, run_key: str) -> logic.TrainingRequest | None:
        with self._lock:
            return self._requests.get(run_key)

    def knows(self, run_key: str) -> bool:
        with self._lock:
            return run_key in self._runs

    def poll(self, run_key: str) -> TrainingOutcome | None:
        with self._lock:
            future = self._runs.get(run_key)
            if future is None or not future.done():
                return None
            del self._runs[run_key]
            self._requests.pop(run_key, None)
            self._endpoints.pop(run_key, None)
        error = future.exception()
        return TrainingOutcome(None if error else future.result(), error)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def result_summary(result: Mapping[str, Any]) -> str:
    rounds = result["rounds"]
    accuracies = ", ".join(f"{r['accuracy']:.1%}" for r in rounds)
    return f"{len(rounds)} rounds, held-out accuracy per round {accuracies}"
