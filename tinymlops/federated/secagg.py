"""What replaces the update guard under secure aggregation, where the server sees only the sum of the updates.

SecAgg+ (Flower's SecAggPlusWorkflow) hands the strategy one vector: the clients' updates (new minus global
weights, masked by `secagg_client`), averaged by their weights.  Each individual update was screened by its own
device (`secagg_client.update_mod`), which withdraws it when non-finite or longer than `maxUpdateNorm`; a device
that does not play by the rules is bounded by SecAgg+'s clipping range, set to that same norm.  The server then
checks what it can see: the average is finite and, as an average of updates no longer than `maxUpdateNorm`, no
longer itself; otherwise the round's result is dropped and the global model stays as it was.

`SecureAggregateStrategy` wraps a legacy Flower strategy (FedAvg, FedProx, FedAdam, FedYogi, with or without the
DP wrapper): it applies the average update to the global weights and passes the result on, so the inner strategy
aggregates weights as usual (FedAvg returns them, FedAdam takes its server step from them, the DP wrapper adds its
noise).  It counts per round, like `guard.GuardedStrategy`, the updates averaged and those dropped by reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import MetricRecord
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from numpy.typing import NDArray

from tinymlops.federated.secagg_client import WITHDRAWN

MODULUS = 2**32  # SecAgg+'s mask modulus (Flower's default and its maximum)
_WITHDRAWN_REASON = re.compile(re.escape(WITHDRAWN) + r" \(([a-z-]+)\) by node (\d+)")


def quantization_range(clients: int) -> int:
    """The finest power-of-two quantization whose sum over `clients` masked values stays below the modulus (a sum
    that wrapped would decode to garbage) and within the int32 Flower quantizes into."""
    limit = (MODULUS - 1) // max(clients, 1)
    return int(2 ** min(30, limit.bit_length() - 1))


def check_aggregate(update: Sequence[NDArray[Any]], max_update_norm: float) -> str | None:
    """Why the average update must not be applied ("non-finite" or "oversized"), or None when it may."""
    if not all(np.isfinite(u).all() for u in update):
        return "non-finite"
    norm = float(np.sqrt(sum(float(np.sum(np.asarray(u, dtype=np.float64) ** 2)) for u in update)))
    return "oversized" if norm > max_update_norm else None


def withdrawals(failures: Sequence[BaseException | tuple[ClientProxy, FitRes]]) -> Counter[str]:
    """How many devices withdrew their update, by the guard's reason, from the errors their replies carried.  A
    device counts once however often its failure is listed (Flower 1.42's SecAgg+ lists each one twice); other
    failures (a device that crashed or timed out) are not refused updates, as in the plain path."""
    reasons = {}
    for failure in failures:
        match = _WITHDRAWN_REASON.search(str(failure))
        if match:
            reasons[int(match.group(2))] = match.group(1)
    return Counter(reasons.values())


def mean_train_loss(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """The clients' training loss weighted by their weights, as the plain path's FedAvg reports it."""
    total = sum(weight for weight, _ in metrics)
    return {"train-loss": sum(weight * float(m["train-loss"]) for weight, m in metrics) / total} if total else {}


class SecureAggregateStrategy(Strategy):
    """`inner`, fed the global weights plus the securely averaged update, when the average passes `check_aggregate`."""

    def __init__(self, inner: Strategy, max_update_norm: float, max_clients: int) -> None:
        self.inner = inner
        self.max_update_norm = max_update_norm
        self.max_clients = max_clients  # the quantization range holds the sum of this many updates, no more
        self.dropped: dict[int, Counter[str]] = {}
        self.sampled: dict[int, int] = {}
        self.replied: dict[int, int] = {}
        self.train_metrics: dict[int, MetricRecord] = {}
        self._current: list[NDArray[Any]] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self._current = parameters_to_ndarrays(parameters)
        instructions = list(self.inner.configure_fit(server_round, parameters, client_manager))[:self.max_clients]
        self.sampled[server_round] = len(instructions)
        return instructions

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        dropped = withdrawals(failures)
        self.dropped[server_round], self.replied[server_round] = dropped, 0
        if not results:
            return None, {}
        # SecAgg+ gives every result the same parameters: the average update, never one device's own.
        update = parameters_to_ndarrays(results[0][1].parameters)
        refused = check_aggregate(update, self.max_update_norm)
        if refused is not None or len(update) != len(self._current):
            dropped[f"{refused or 'malformed'}-aggregate"] += len(results)
            return None, {}
        self.replied[server_round] = len(results)
        weights = ndarrays_to_parameters([(c + u).astype(c.dtype) for c, u in zip(self._current, update, strict=True)])
        for _, res in results:
            res.parameters = weights
        aggregated, metrics = self.inner.aggregate_fit(server_round, results, [])  # withdrawals are counted above
        if "train-loss" in metrics:
            self.train_metrics[server_round] = MetricRecord({"train-loss": float(metrics["train-loss"])})
        return aggregated, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return list(self.inner.configure_evaluate(server_round, parameters, client_manager))

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]
                           ) -> tuple[float | None, dict[str, Scalar]]:
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return self.inner.evaluate(server_round, parameters)
