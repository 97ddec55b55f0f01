"""`tinymlops operator run`: the kopf operator against the current kubeconfig."""

from __future__ import annotations

import click


@click.group()
def operator() -> None:
    """The TinyMLOps Kubernetes operator."""


@operator.command("run")
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True,
              help="kopf liveness endpoint (empty to disable).")
@click.option("--verbose", is_flag=True, help="Log every kopf step.")
def run(liveness: str, verbose: bool) -> None:
    """Reconcile EdgeModels and DeviceFleets cluster-wide until interrupted.

    Configuration comes from the environment: TINYMLOPS_STORE (artifact store
    directory), TINYMLOPS_SIGNING_KEY (Ed25519 PEM), TINYMLOPS_GATEWAY_URL,
    TINYMLOPS_KFP_HOST (a Kubeflow Pipelines endpoint; local kfp runs without it).
    """
    import asyncio
    import logging

    import kopf

    from tinymlops_operator import main as registered  # noqa: F401  (registers the handlers)
    from tinymlops_operator.config import ConfigError, Settings

    try:
        Settings.from_env()  # fail fast, before kopf starts talking to the cluster
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    kopf.configure(verbose=verbose, log_prefix=True)
    logging.getLogger("kopf.objects").setLevel(logging.INFO)
    asyncio.run(kopf.operator(clusterwide=True, liveness_endpoint=liveness or None))
