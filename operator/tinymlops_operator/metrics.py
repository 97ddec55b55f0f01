"""The operator's own Prometheus metrics: reconciles, rollout steps, durations and rollbacks.

One CollectorRegistry per operator (tests run several in one process), served
by prometheus-client on TINYMLOPS_METRICS_PORT.  Labels are the fleet's
namespace and name and small fixed sets of reasons: the series count grows with
fleets, never with devices.  Names follow Prometheus' conventions: base units
(seconds), ratios in 0..1 (`_ratio`), and no `_created` series (prometheus-client
would add one per labelled counter and histogram; nothing here reads them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

ROLLOUT_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400)


# prometheus-client leaves this one untyped; it takes and returns nothing.
_disable_created = cast(Callable[[], None], disable_created_metrics)


class OperatorMetrics:
    def __init__(self) -> None:
        _disable_created()  # process-wide in prometheus-client; the gateway does the same
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "tinymlops_operator_reconciles", "Reconciles by resource kind and outcome.",
            ("kind", "result"), registry=self.registry,
        )
        self.steps = Counter(
            "tinymlops_operator_rollout_steps", "Rollout steps completed.",
            ("namespace", "fleet"), registry=self.registry,
        )
        self.rollbacks = Counter(
            "tinymlops_operator_rollbacks", "Rollouts rolled back, by reason.",
            ("namespace", "fleet", "reason"), registry=self.registry,
        )
        self.promotions = Counter(
            "tinymlops_operator_rollout_promotions", "Revisions promoted to stable.",
            ("namespace", "fleet"), registry=self.registry,
        )
        self.duration = Histogram(
            "tinymlops_operator_rollout_duration_seconds", "From a canary's start to its promotion or rollback.",
            ("outcome",), buckets=ROLLOUT_BUCKETS, registry=self.registry,
        )
        self.canary_weight = Gauge(
            "tinymlops_operator_canary_weight_ratio",
            "Share of the fleet (0..1) the current plan sends to the canary.",
            ("namespace", "fleet"), registry=self.registry,
        )
        self.analysis = Counter(
            "tinymlops_operator_analysis_runs", "Canary analysis runs by verdict.",
            ("namespace", "fleet", "verdict"), registry=self.registry,
        )
        # Pay-per-query, per License object and its licensee (bounded by the Licenses, never by devices).
        self.license_inferences = Gauge(
            "tinymlops_license_licensee_inferences",
            "Inferences counted for a License from its devices' reconciled checkpoints (as the gateway last said).",
            ("namespace", "license", "licensee"), registry=self.registry,
        )
        self.license_refills = Counter(
            "tinymlops_license_refills", "Licence tokens issued to a device after its first (refills).",
            ("namespace", "license", "licensee"), registry=self.registry,
        )
        self.license_tokens = Counter(
            "tinymlops_license_tokens_issued", "Licence tokens issued, first ones and refills.",
            ("namespace", "license", "licensee"), registry=self.registry,
        )
        # Federated training: labelled by namespace and training name (a handful per cluster), never by device.
        self.federated_runs = Counter(
            "tinymlops_operator_federated_runs", "FederatedTraining runs by outcome (started, promoted, ...).",
            ("namespace", "outcome"), registry=self.registry,
        )
        self.federated_rounds = Counter(
            "tinymlops_operator_federated_rounds", "Federated rounds completed.",
            ("namespace", "training"), registry=self.registry,
        )
        self.federated_dropped = Counter(
            "tinymlops_operator_federated_dropped_updates", "Client updates dropped before aggregation, by reason.",
            ("namespace", "reason"), registry=self.registry,
        )
        self.federated_accuracy = Gauge(
            "tinymlops_operator_federated_accuracy_ratio", "Held-out accuracy of a training's last global model.",
            ("namespace", "training"), registry=self.registry,
        )
        self.federated_epsilon = Gauge(
            "tinymlops_operator_federated_epsilon", "Differential privacy spent by a training (epsilon).",
            ("namespace", "training"), registry=self.registry,
        )
        self._server: WSGIServer | None = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a pod's metrics port
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
