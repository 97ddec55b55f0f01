"""One federated training on simulated devices with Flower's simulation engine (Ray), start to exported model.

Each simulated device is a Flower SuperNode running the ClientApp on its own shard file; the ServerApp runs in
this process.  The result is the aggregate written back into the base model's graph, the history of its rounds
(clients, dropped updates, training loss, held-out loss and accuracy) and the ε the rounds spent.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import FederatedError
from tinymlops.federated.client import client_app
from tinymlops.federated.privacy import epsilon
from tinymlops.federated.secagg_client import secure_client_app
from tinymlops.federated.secagg_server import secure_server_app
from tinymlops.federated.server import Run, server_app
from tinymlops.federated.spec import TrainingSpec
from tinymlops.federated.torchmodel import load_model
from tinymlops.store import atomic_write

Shard = tuple[NDArray[np.float32], NDArray[np.int64]]
ShardSource = Shard | Path  # in memory (the benchmark) or a device's own DATA.npz, linked, never copied


@dataclass(frozen=True)
class RoundRecord:
    round: int
    clients: int  # updates averaged
    dropped: dict[str, int]  # updates refused, by reason (tinymlops.federated.guard.REASONS)
    train_loss: float | None
    loss: float
    accuracy: float

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, "clients": self.clients, "dropped": self.dropped,
                "trainLoss": None if self.train_loss is None else round(self.train_loss, 4),
                "loss": round(self.loss, 4), "accuracy": round(self.accuracy, 4)}


@dataclass(frozen=True)
class Outcome:
    model: bytes  # the base graph with the trained weights
    base_accuracy: float
    rounds: list[RoundRecord]
    epsilon: float | None  # None without privacy
    delta: float | None
    clients_available: int

    @property
    def accuracy(self) -> float:
        return self.rounds[-1].accuracy if self.rounds else self.base_accuracy


def write_shards(shards: Sequence[ShardSource], directory: Path) -> None:
    """Simulated device N reads `N.npz` here: a link to a device's own file, or the arrays written out."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, shard in enumerate(shards):
        target = directory / f"{index}.npz"
        if isinstance(shard, Path):
            target.unlink(missing_ok=True)
            target.symlink_to(shard.resolve())
            continue
        buffer = io.BytesIO()
        np.savez(buffer, x=shard[0], y=shard[1])
        atomic_write(target, buffer.getvalue())


def round_history(run: Run) -> list[RoundRecord]:
    """Per round of a finished run: clients that replied, updates dropped (by reason), train and held-out figures."""
    assert run.result is not None and run.strategy is not None
    records = []
    for number in range(1, run.spec.rounds + 1):
        metrics: dict[str, Any] = dict(run.result.train_metrics_clientapp.get(number) or {})
        loss, accuracy = run.evaluations[number]
        records.append(RoundRecord(number, run.strategy.replied.get(number, 0),
                                   dict(run.strategy.dropped.get(number, {})),
                                   float(metrics["train-loss"]) if "train-loss" in metrics else None,
                                   loss, accuracy))
    return records


def train_federated(model: bytes, shards: Sequence[ShardSource], spec: TrainingSpec, *, x_eval: NDArray[np.float32],
                    y_eval: NDArray[np.int64], workdir: Path, cpus: int = 2, what: str = "model") -> Outcome:
    """Run `spec` over one simulated device per shard; UntrainableModelError before any round when the model
    cannot be trained, NotEnoughClientsError when fewer shards than `spec.min_clients`."""
    from flwr.simulation import run_simulation

    server_model = load_model(model, what=what)  # names what cannot be trained before Ray starts
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = workdir / "model.onnx"
    atomic_write(model_path, model)
    write_shards(shards, workdir / "shards")
    run = Run(spec, server_model, str(model_path), hashlib.sha256(model).hexdigest(), str(workdir / "shards"),
              x_eval, y_eval)
    base_loss, predicted = server_model.evaluate(x_eval, y_eval)
    base_accuracy = float(np.mean(predicted == y_eval))
    logging.getLogger("flwr").setLevel(logging.WARNING)
    if spec.secure_aggregation is None:
        apps = server_app(run), client_app(spec.privacy is not None)
    else:
        apps = secure_server_app(run), secure_client_app(spec.privacy is not None)
    run_simulation(*apps, num_supernodes=len(shards),
                   backend_config={"client_resources": {"num_cpus": 1},
                                   "init_args": {"num_cpus": cpus, "log_to_driver": False,
                                                 "include_dashboard": False}})
    if run.error is not None:
        raise run.error
    if run.result is None:
        raise FederatedError(f"{what}: the federated run ended without a result (see Flower's log)")
    history = round_history(run)
    final = run.result.arrays.to_numpy_ndarrays()
    if not all(np.isfinite(a).all() for a in final):
        raise FederatedError(f"{what}: the aggregate has non-finite weights; nothing is exported")
    privacy = spec.privacy
    spent = epsilon(privacy.noise_multiplier, spec.rounds, privacy.delta) if privacy else None
    return Outcome(server_model.export(final), base_accuracy, history,
                   None if spent is None or math.isinf(spent) else spent, privacy.delta if privacy else None,
                   run.available)
