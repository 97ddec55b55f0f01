"""The ServerApp under secure aggregation: Flower's legacy DefaultWorkflow with SecAggPlusWorkflow as its fit step.

Flower 1.42 runs SecAgg+ only in its legacy workflow API, so this path builds the legacy strategy of the same name
(flwr.server.strategy) with the same parameters, the same DP wrapper and the same held-out scoring as `server`,
wrapped by `secagg.SecureAggregateStrategy`.  What the rounds produced is left in the same `Run` (a `Result` with
the final weights and each round's training loss, the strategy's per-round counts), so `run` reports both paths
alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server import strategy as legacy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from tinymlops.errors import SpecError
from tinymlops.federated.secagg import MODULUS, SecureAggregateStrategy, mean_train_loss, quantization_range
from tinymlops.federated.secagg_client import MAX_UPDATE_NORM_KEY, MAX_WEIGHT_KEY
from tinymlops.federated.server import Run, train_config, wait_for_clients
from tinymlops.federated.spec import SecureAggregation, TrainingSpec

MAX_WEIGHT = 1000  # Flower's default: a device with more examples weighs this much under SecAgg+


def check_round_size(secure: SecureAggregation, clients: int) -> None:
    """SpecError when a round of `clients` cannot run SecAgg+ with these settings (Flower would halt every round)."""
    if clients < 2:
        raise SpecError(f"spec.clients: secure aggregation needs at least 2 clients per round, a round samples "
                        f"{clients}")
    if isinstance(secure.shares, int) and secure.shares > clients:
        raise SpecError(f"spec.secureAggregation.shares: {secure.shares} shares need as many clients per round, a "
                        f"round samples {clients}")


def clipping_range(spec: TrainingSpec) -> float:
    """Every coordinate of an update a device sends is within this (its norm is, or it is withdrawn), so SecAgg+'s
    clipping before quantization never changes an honest update."""
    if spec.privacy is not None:
        return min(spec.max_update_norm, spec.privacy.clip_norm)
    return spec.max_update_norm


def build_legacy_strategy(spec: TrainingSpec, run: Run, clients: int) -> SecureAggregateStrategy:
    config = {**train_config(run), MAX_UPDATE_NORM_KEY: spec.max_update_norm, MAX_WEIGHT_KEY: MAX_WEIGHT}

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return {**config, "server-round": server_round}

    def evaluate(server_round: int, arrays: NDArrays, _: dict[str, Scalar]) -> tuple[float, dict[str, Scalar]]:
        loss, accuracy = run.score(server_round, list(arrays))
        return loss, {"accuracy": accuracy}

    inner: legacy.Strategy = getattr(legacy, spec.strategy)(
        fraction_fit=spec.fraction, fraction_evaluate=0.0, min_fit_clients=spec.min_clients,
        min_evaluate_clients=0, min_available_clients=spec.min_clients, evaluate_fn=evaluate,
        on_fit_config_fn=fit_config, fit_metrics_aggregation_fn=mean_train_loss,
        initial_parameters=ndarrays_to_parameters(run.model.get_arrays()),
        **spec.flower_params())
    if spec.privacy is not None:
        # Clients clip (Flower's fixedclipping_mod) before masking; the server noises the unmasked average, so
        # client-side clipping DP composes with SecAgg+: the server never needs an individual update.
        inner = legacy.DifferentialPrivacyClientSideFixedClipping(
            inner, noise_multiplier=spec.privacy.noise_multiplier, clipping_norm=spec.privacy.clip_norm,
            num_sampled_clients=clients)
    return SecureAggregateStrategy(inner, spec.max_update_norm, clients)


def run_secure_rounds(run: Run, grid: Grid, context: Context) -> None:
    spec = run.spec
    secure = spec.secure_aggregation
    assert secure is not None
    run.available = wait_for_clients(grid, spec.min_clients, spec.wait_for_clients_s)
    clients = spec.clients_per_round(run.available)
    check_round_size(secure, clients)
    strategy = run.strategy = build_legacy_strategy(spec, run, clients)
    fit = SecAggPlusWorkflow(secure.shares, secure.reconstruction_threshold,
                             max_weight=1.0 if spec.privacy is not None else float(MAX_WEIGHT),
                             clipping_range=clipping_range(spec), quantization_range=quantization_range(clients),
                             modulus_range=MODULUS, timeout=secure.timeout_s)
    legacy_context = LegacyContext(context=context, config=ServerConfig(num_rounds=spec.rounds), strategy=strategy)
    DefaultWorkflow(fit_workflow=fit)(grid, legacy_context)
    final: ArrayRecord = legacy_context.state.array_records[MAIN_PARAMS_RECORD]
    arrays = [np.asarray(a, dtype=np.float32) for a in final.to_numpy_ndarrays()]
    run.result = Result(arrays=ArrayRecord(arrays), train_metrics_clientapp=dict(strategy.train_metrics))


def secure_server_app(run: Run) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> Any:
        try:
            run_secure_rounds(run, grid, context)
        except BaseException as exc:  # the simulation swallows a ServerApp's error: keep it for the caller
            run.error = exc
            raise

    return app
