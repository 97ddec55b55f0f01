"""`tinymlops gateway`: serve the artifact store and collect device reports over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from tinymlops.gateway.ratelimit import DEFAULT_BURST, DEFAULT_RATE

if TYPE_CHECKING:
    import ssl

    from tinymlops.gateway.authn import ReportGuard

STORE_ENV = "TINYMLOPS_STORE"
REGISTRY_ENV = "TINYMLOPS_DEVICE_REGISTRY"
REGISTRY_FROM_STORE_ENV = "TINYMLOPS_REGISTRY_FROM_STORE"
TLS_CERT_ENV, TLS_KEY_ENV = "TINYMLOPS_TLS_CERT", "TINYMLOPS_TLS_KEY"


@click.group()
def gateway() -> None:
    """The HTTP service edge devices talk to (store, reports, metrics)."""


@gateway.command("run")
@click.option("--store", "store", envvar=STORE_ENV, show_envvar=True,
              type=click.Path(path_type=Path),
              help="Artifact store directory to serve (menus, blobs, plans), the one the operator publishes to; "
                   "created if missing.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port). The operator's liveness endpoint defaults to 8081, so both fit "
                   "in one pod.")
@click.option("--offline-after", "offline_after_s", default=30.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Seconds without a report after which a device counts as Offline.")
@click.option("--registry", "registry_file", envvar=REGISTRY_ENV, show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Device registry (JSON: each device's namespace, name and identity public key). Given, the "
                   "gateway takes only reports signed by a registered device, each with a new sequence number; "
                   "without it, any well-formed report.")
@click.option("--registry-from-store", is_flag=True, envvar=REGISTRY_FROM_STORE_ENV, show_envvar=True,
              help="Take the device registry the operator publishes in the store (registry/devices.json, built "
                   "from the Devices' identity keys), reloaded when it changes. Until it exists no device is "
                   "registered and every report is refused.")
@click.option("--report-rate", default=DEFAULT_RATE, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="With a registry: reports per second each device may send, on average.")
@click.option("--report-burst", default=DEFAULT_BURST, show_default=True, type=click.FloatRange(min=1.0),
              help="With a registry: reports a device may send at once (a full outbox after a time offline).")
@click.option("--tls-cert", envvar=TLS_CERT_ENV, show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve HTTPS with this PEM certificate (chain), e.g. a kubernetes.io/tls Secret's tls.crt. "
                   "Needs --tls-key.")
@click.option("--tls-key", envvar=TLS_KEY_ENV, show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The PEM private key of --tls-cert (tls.key).")
def run(store: Path | None, host: str, port: int, offline_after_s: float, registry_file: Path | None,
        registry_from_store: bool, report_rate: float, report_burst: float, tls_cert: Path | None,
        tls_key: Path | None) -> None:
    """Serve the artifact store (--store) to devices and collect their reports until SIGINT or SIGTERM."""
    from tinymlops.errors import ConfigError
    from tinymlops.gateway.authn import ReportGuard, parse_registry
    from tinymlops.gateway.ratelimit import RateLimiter

    guard = None
    if registry_file is not None and registry_from_store:
        raise click.UsageError("--registry and --registry-from-store: choose one source of the device registry")
    if registry_from_store:
        guard = ReportGuard({}, limiter=RateLimiter(rate=report_rate, burst=report_burst))
    elif registry_file is not None:
        try:
            registry = parse_registry(registry_file.read_bytes(), source=str(registry_file))
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--registry") from exc
        guard = ReportGuard(registry, limiter=RateLimiter(rate=report_rate, burst=report_burst))
    ssl_context = _tls(tls_cert, tls_key)
    if store is None or not str(store):
        raise click.UsageError(f"--store/{STORE_ENV} is not set; point it at the artifact store directory")
    if store.exists() and not store.is_dir():
        raise click.BadParameter(f"{store} is not a directory", param_hint="--store")
    root = store
    # The operator and the pipelines may publish only after the gateway is up: an empty store is fine, and so is
    # a missing one on a read-only mount (the chart's gateway), which the operator creates later: until then
    # every request is a 404, not a crash loop.
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        click.echo(f"--store {store}: cannot create it yet ({exc.strerror or exc}); serving 404 until it exists",
                   err=True)

    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(root, host, port, offline_after_s, guard, registry_from_store, ssl_context))
    except OSError as exc:  # the port is taken, the address is not ours
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise click.UsageError("--tls-cert and --tls-key go together: the certificate and its private key")
    import ssl

    from tinymlops.gateway.app import server_tls

    try:
        return server_tls(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise click.BadParameter(f"{cert} with {key}: not a usable certificate and key ({exc})",
                                 param_hint="--tls-cert/--tls-key") from exc


async def _serve(root: Path, host: str, port: int, offline_after_s: float, guard: ReportGuard | None,
                 registry_from_store: bool, ssl_context: ssl.SSLContext | None) -> None:
    import asyncio
    import logging
    import signal

    from tinymlops.gateway.app import Gateway
    from tinymlops.store import DirectoryStore

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = Gateway(DirectoryStore(root), host=host, port=port, offline_after_s=offline_after_s, guard=guard,
                     registry_from_store=registry_from_store, ssl_context=ssl_context)
    await server.start()
    log = logging.getLogger("tinymlops.gateway")
    log.info("gateway serving %s at %s", root, server.url)
    if registry_from_store:
        log.info("taking signed reports from the devices the operator registers in the store only")
    elif guard is not None:
        log.info("taking signed reports from %d registered devices only", len(guard.registry))
    try:
        await stop.wait()
    finally:
        await server.stop()
