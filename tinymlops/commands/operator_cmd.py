"""`tinymlops operator run`: the kopf operator against the current kubeconfig.

The operator reads its configuration once, from the environment, in
`tinymlops_operator.config.Settings.from_env` (as its Deployment sets it). Every
variable it reads is also an option here (click's `envvar`, so `--help` lists
them); an option given on the command line is exported under its variable's
name before the operator starts, so that one reader still parses and checks it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

# The liveness endpoint must not share the gateway's default port (8080): with the chart's emptyDir store both
# run in one pod. 8081 is the health-probe port Kubernetes controllers conventionally use.
LIVENESS_DEFAULT = "http://0.0.0.0:8081/healthz"

# option -> (environment variable read by tinymlops_operator.config, help); names unchanged from config.py.
SETTINGS: dict[str, tuple[str, str]] = {
    "--store": ("TINYMLOPS_STORE", "Artifact store directory the operator publishes to (required)."),
    "--signing-key": ("TINYMLOPS_SIGNING_KEY", "Ed25519 private key (PEM) that signs menus and plans (required)."),
    "--state-dir": ("TINYMLOPS_STATE_DIR", "Operator state (default: operator-state beside the store)."),
    "--gateway-url": ("TINYMLOPS_GATEWAY_URL", "Gateway the operator reads fleet summaries from."),
    "--gateway-ca": ("TINYMLOPS_GATEWAY_CA", "PEM CA file an HTTPS gateway's certificate is checked against "
                                             "(default: the system's CAs)."),
    "--kfp-host": ("TINYMLOPS_KFP_HOST", "Kubeflow Pipelines endpoint for variant builds (default: run locally)."),
    "--pipeline-root": ("TINYMLOPS_PIPELINE_ROOT", "Pipeline root of local runs (default: STATE_DIR/pipeline-root)."),
    "--cache-dir": ("TINYMLOPS_CACHE_DIR", "Digest-keyed variant cache (default: STATE_DIR/variant-cache)."),
    "--prometheus-url": ("TINYMLOPS_PROMETHEUS_URL", "Prometheus that canary analysis queries, unless a fleet "
                                                     "names its own (default: none, such canaries pause)."),
    "--metrics-port": ("TINYMLOPS_METRICS_PORT", "Port of the operator's own /metrics (default: not served)."),
    "--peering": ("TINYMLOPS_PEERING", "ClusterKopfPeering that elects one acting replica (default: standalone)."),
    "--peering-priority": ("TINYMLOPS_PEERING_PRIORITY", "This replica's peering priority (default: older "
                                                         "replicas win, minus the start time in microseconds)."),
    "--plan-ttl-seconds": ("TINYMLOPS_PLAN_TTL_SECONDS", "How long each signed plan stays current unless a fleet "
                                                         "sets spec.planExpirySeconds (default: 86400, a day)."),
    "--federated-data-dir": ("TINYMLOPS_FEDERATED_DATA_DIR", "Simulated devices' own data (<device>.npz) for "
                                                             "FederatedTrainings on the embedded stack."),
    "--federated-cpus": ("TINYMLOPS_FEDERATED_CPUS", "Cores Flower's simulation engine may use (default: 2)."),
    "--superlink-host": ("TINYMLOPS_SUPERLINK_HOST", "IPv4 address a spec.runtime SuperLink FederatedTraining's "
                                                     "flower-superlink listens on and devices dial (default: "
                                                     "127.0.0.1)."),
}
KUBECONFIG_ENV = "KUBECONFIG"
DEFAULT_KUBECONFIG = "~/.kube/config"


def _settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for flag, (env, text) in reversed(SETTINGS.items()):
        command = click.option(flag, envvar=env, show_envvar=True, help=text)(command)
    return command


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """A configuration error names an environment variable; say which flag sets it too."""
    for flag, env in flags.items():
        message = message.replace(env, f"{flag}/{env}")
    return message


def kubeconfig_problem(kubeconfig: str | None, *, in_cluster: bool) -> str | None:
    """Why kopf could not log in (one line naming the kubeconfig), or None when it can.

    Tries what kopf's own login tries, in the same order: the in-cluster service
    account, then the kubeconfig (--kubeconfig, else $KUBECONFIG, else ~/.kube/config).
    """
    import kubernetes
    import yaml

    if in_cluster:
        try:
            kubernetes.config.load_incluster_config()
            return None
        except kubernetes.config.ConfigException:
            pass  # kopf falls back to a kubeconfig, so do we
    where = kubeconfig or os.environ.get(KUBECONFIG_ENV) or DEFAULT_KUBECONFIG
    if not Path(os.path.expanduser(where.split(os.pathsep)[0])).is_file():
        return f"kubeconfig {where}: no such file (pass --kubeconfig or set {KUBECONFIG_ENV}, or run in a cluster)"
    try:
        kubernetes.config.load_kube_config(config_file=kubeconfig)
    except (kubernetes.config.ConfigException, yaml.YAMLError, OSError, ValueError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"kubeconfig {where}: not usable ({detail})"
    return None


@click.group()
def operator() -> None:
    """The TinyMLOps Kubernetes operator."""


@operator.command("run")
@click.option("--kubeconfig", envvar=KUBECONFIG_ENV, show_envvar=True,
              type=click.Path(dir_okay=False, path_type=str),
              help=f"Cluster to operate (default: the in-cluster service account, else {DEFAULT_KUBECONFIG}).")
@_settings_options
@click.option("--liveness", default=LIVENESS_DEFAULT, show_default=True,
              help="kopf liveness endpoint (empty to disable).")
@click.option("--verbose", is_flag=True, help="Log every kopf step.")
def run(kubeconfig: str | None, liveness: str, verbose: bool, **settings: str | None) -> None:
    """Reconcile EdgeModels and DeviceFleets cluster-wide until interrupted.

    Each setting is an option or its environment variable (as in the chart's
    Deployment); --store and --signing-key are required.
    """
    from tinymlops.errors import ConfigError
    from tinymlops_operator.config import Settings

    given = {flag: settings[flag.removeprefix("--").replace("-", "_")] for flag in SETTINGS}
    exported = {SETTINGS[flag][0]: value for flag, value in given.items() if value is not None}
    if kubeconfig:
        exported[KUBECONFIG_ENV] = kubeconfig
    try:
        Settings.from_env({**os.environ, **exported})  # fail fast, before kopf starts talking to the cluster
    except ConfigError as exc:
        raise click.ClickException(name_flags(str(exc), {flag: env for flag, (env, _) in SETTINGS.items()})) from exc
    problem = kubeconfig_problem(kubeconfig, in_cluster=bool(os.environ.get("KUBERNETES_SERVICE_HOST")))
    if problem is not None:
        raise click.ClickException(problem)
    # Exported, not passed: Settings.from_env stays the one reader, and the operator's startup reads it again.
    os.environ.update(exported)
    _run_kopf(liveness, verbose)


def _run_kopf(liveness: str, verbose: bool) -> None:
    import asyncio
    import logging

    import kopf

    from tinymlops_operator import main as registered  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose, log_prefix=True)
    logging.getLogger("kopf.objects").setLevel(logging.INFO)
    asyncio.run(kopf.operator(clusterwide=True, liveness_endpoint=liveness or None))
