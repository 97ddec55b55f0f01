"""The ServerApp: wait for enough devices, run the strategy's rounds, score each aggregate on held-out data.

What the rounds produced is left in a `Run` (the server runs in the caller's process, in simulation and beside a
SuperLink alike), from which `tinymlops.federated.run` builds the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from numpy.typing import NDArray

from tinymlops.errors import NotEnoughClientsError
from tinymlops.federated.spec import TrainingSpec
from tinymlops.federated.strategies import build_strategy
from tinymlops.federated.torchmodel import FederatedModel

POLL_S = 0.5


@dataclass
class Run:
    """The inputs of one training and, once it ran, what it produced."""

    spec: TrainingSpec
    model: FederatedModel  # the server's copy: scores aggregates and exports the last one
    model_path: str
    model_sha256: str
    shards_dir: str
    x_eval: NDArray[np.float32]
    y_eval: NDArray[np.int64]
    result: Result | None = None
    strategy: Any = None
    available: int = 0
    evaluations: dict[int, tuple[float, float]] = field(default_factory=dict)  # round: (loss, accuracy)
    error: BaseException | None = None
    model_bytes: bytes | None = None  # beside a SuperLink: the graph travels to devices, which lack model_path

    def score(self, server_round: int, arrays: list[NDArray[np.float32]]) -> tuple[float, float]:
        """Held-out (loss, accuracy) of the global `arrays` after `server_round`, kept for the history."""
        self.model.set_arrays(arrays)
        loss, predicted = self.model.evaluate(self.x_eval, self.y_eval)
        accuracy = float(np.mean(predicted == self.y_eval))
        self.evaluations[server_round] = (loss, accuracy)
        return loss, accuracy


def train_config(run: Run) -> dict[str, Any]:
    """What every client needs to train a round (the model it checks by hash, where its shard is, the optimiser)."""
    spec = run.spec
    return {"model-path": run.model_path, "model-sha256": run.model_sha256, "shards-dir": run.shards_dir,
            "local-epochs": spec.local_epochs, "learning-rate": spec.learning_rate, "batch-size": spec.batch_size,
            # a device beside a SuperLink cannot read the server's path: the graph travels in the message
            **({} if run.model_bytes is None else {"model-onnx": run.model_bytes})}


def wait_for_clients(grid: Grid, needed: int, timeout_s: float) -> int:
    """How many devices are connected once `needed` are, or NotEnoughClientsError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (connected := len(list(grid.get_node_ids()))) < needed:
        if time.monotonic() >= deadline:
            raise NotEnoughClientsError(f"{connected} of the {needed} clients a round needs connected within "
                                        f"{timeout_s:g} s")
        time.sleep(POLL_S)
    return connected


def run_rounds(run: Run, grid: Grid) -> None:
    spec = run.spec
    run.available = wait_for_clients(grid, spec.min_clients, spec.wait_for_clients_s)
    run.strategy = build_strategy(spec, run.available)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = run.score(server_round, arrays.to_numpy_ndarrays())
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    config = ConfigRecord(train_config(run))
    run.result = run.strategy.start(grid=grid, initial_arrays=ArrayRecord(run.model.get_arrays()),
                                    num_rounds=spec.rounds, train_config=config, evaluate_fn=evaluate)


def server_app(run: Run) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_rounds(run, grid)
        except BaseException as exc:  # the simulation swallows a ServerApp's error: keep it for the caller
            run.error = exc
            raise

    return app
