"""The embedded local stack: API emulator, gateway and operator on loopback, in one process.

`tinymlops demo`, `tinymlops cluster up` and the integration tests start it
the same way.  Its state lives under one work directory:

    <root>/store/          the artifact store the operator writes and the gateway serves
    <root>/keys/           the Ed25519 signing key pair (made on first use)
    <root>/operator-state/ pipeline root and the digest-keyed variant cache
    <root>/kubeconfig      for kubectl (and kopf) against the emulator
    <root>/prometheus/     a real Prometheus scraping the gateway and the operator (see stack/prometheus.py)

The gateway authenticates reports, as on a cluster: it takes only reports signed
by a device the operator registered (from the identity annotations on the
KubeEdge Devices, published in the store as `registry/devices.json`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tinymlops.bundled import crd_dir as bundled_crd_dir
from tinymlops.gateway.app import Gateway
from tinymlops.gateway.authn import ReportGuard
from tinymlops.gateway.ratelimit import DEFAULT_BURST, RateLimiter
from tinymlops.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, generate_key_pair
from tinymlops.stack.emulator import ApiEmulator
from tinymlops.stack.kube import Kube
from tinymlops.stack.prometheus import RELEASE_NAMESPACE, PrometheusServer, find_prometheus, free_port, kubernetes_job
from tinymlops.stack.threads import LoopThread, OperatorThread
from tinymlops.store import DirectoryStore

# What the stack exports to os.environ for the operator (as its Deployment would set them); restored on stop.
EXPORTED_ENV = ("KUBECONFIG", "TINYMLOPS_STORE", "TINYMLOPS_SIGNING_KEY", "TINYMLOPS_GATEWAY_URL",
                "TINYMLOPS_STATE_DIR", "TINYMLOPS_METRICS_PORT", "TINYMLOPS_PROMETHEUS_URL")


# Simulated devices poll every 0.5 to 2 s and each poll may upload a report: the stack's per-device limit
# leaves them room (the gateway's default, 1 report/s, suits devices that report every 10 s or more).
STACK_REPORT_RATE = 10.0


def crd_paths(crd_dir: Path | None = None) -> list[Path]:
    crd_dir = crd_dir or bundled_crd_dir()
    # Every CRD the chart installs: ours, KubeEdge's devices, kopf's peering (served; the stack's operator
    # runs standalone, as one replica may).
    paths = sorted(crd_dir.rglob("*.yaml"))
    if not paths:
        raise FileNotFoundError(f"no CRDs found under {crd_dir}")
    return paths


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def private_key(self) -> Path:
        return self.keys / PRIVATE_KEY_FILE

    @property
    def public_key(self) -> Path:
        return self.keys / PUBLIC_KEY_FILE

    @property
    def operator_state(self) -> Path:
        return self.root / "operator-state"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"


class LocalStack:
    """Start with `with LocalStack(root) as stack:`; everything stops on exit, even after an error."""

    def __init__(self, root: Path, *, api_port: int = 0, gateway_port: int = 0, operator: bool = True,
                 offline_after_s: float = 30.0, prometheus: bool = True, metrics_port: int = 0) -> None:
        self.paths = StackPaths(root.resolve())
        self.api_port, self.gateway_port, self.metrics_port = api_port, gateway_port, metrics_port
        self.with_operator = operator
        self.with_prometheus = prometheus
        self.offline_after_s = offline_after_s
        self.servers = LoopThread("api+gateway")
        self.emulator = ApiEmulator(crd_paths(), port=api_port)
        self.gateway: Gateway | None = None
        self.operator: OperatorThread | None = None
        self.kube: Kube | None = None
        self.prometheus: PrometheusServer | None = None
        self._emulator_running = False
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        paths = self.paths
        # Rollout analysis needs it, so a missing binary fails here, before anything started, saying how to install.
        prometheus_bin = find_prometheus() if self.with_prometheus else None
        paths.store.mkdir(parents=True, exist_ok=True)
        if not paths.private_key.is_file():
            generate_key_pair(paths.keys)
        self.servers.start()
        self.servers.call(self.emulator.__aenter__())
        self._emulator_running = True
        self.emulator.write_kubeconfig(paths.kubeconfig)
        guard = ReportGuard({}, limiter=RateLimiter(rate=STACK_REPORT_RATE, burst=DEFAULT_BURST))
        self.gateway = Gateway(DirectoryStore(paths.store), port=self.gateway_port,
                               offline_after_s=self.offline_after_s, guard=guard, registry_from_store=True)
        self.servers.call(self.gateway.start())
        # The operator serves its /metrics from its own thread later; Prometheus must know the port now.
        self.metrics_port = self.metrics_port or free_port()
        env = {
            "KUBECONFIG": str(paths.kubeconfig),
            "TINYMLOPS_STORE": str(paths.store),
            "TINYMLOPS_SIGNING_KEY": str(paths.private_key),
            "TINYMLOPS_GATEWAY_URL": self.gateway.url,
            "TINYMLOPS_STATE_DIR": str(paths.operator_state),
            "TINYMLOPS_METRICS_PORT": str(self.metrics_port),
        }
        # Put back on stop whatever the process had, so one stack never leaks its settings into the next.
        self._saved_env = {name: os.environ.get(name) for name in EXPORTED_ENV}
        if prometheus_bin is not None:
            gateway_host = f"[{self.gateway.host}]" if ":" in self.gateway.host else self.gateway.host
            # Scraped as the Prometheus Operator scrapes the chart's monitors (target labels namespace, pod, ...
            # and honorLabels: true), so a label clash with the fleets' `namespace` shows up here too.
            self.prometheus = PrometheusServer(
                paths.root / "prometheus",
                {"tinymlops-gateway": kubernetes_job(
                    [f"{gateway_host}:{self.gateway.port}"], namespace=RELEASE_NAMESPACE, service="tinymlops-gateway",
                    pod="tinymlops-gateway-0", container="gateway", endpoint="http", honor_labels=True),
                 "tinymlops-operator": kubernetes_job(
                    [f"127.0.0.1:{self.metrics_port}"], namespace=RELEASE_NAMESPACE,
                    service="tinymlops-operator-metrics", pod="tinymlops-operator-0", container="operator",
                    endpoint="metrics", honor_labels=True)},
                scrape_interval_s=1.0, binary=prometheus_bin,
            )
            self.prometheus.start()
            env["TINYMLOPS_PROMETHEUS_URL"] = self.prometheus.url
        else:
            # A URL left by an earlier stack in this process would name a server that is gone.
            os.environ.pop("TINYMLOPS_PROMETHEUS_URL", None)
        # The operator reads its configuration from the environment, as in its Deployment.
        os.environ.update(env)
        self.kube = Kube(paths.kubeconfig)
        if self.with_operator:
            self.operator = OperatorThread()
            self.operator.start()

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None
        if self.kube is not None:
            self.kube.close()
            self.kube = None
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
        if self.gateway is not None:
            self.servers.call(self.gateway.stop())
            self.gateway = None
        if self._emulator_running:
            self.servers.call(self.emulator.__aexit__(None, None, None))
            self._emulator_running = False
        self.servers.stop()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    @property
    def api_url(self) -> str:
        return self.emulator.url

    @property
    def prometheus_url(self) -> str | None:
        return self.prometheus.url if self.prometheus is not None else None
