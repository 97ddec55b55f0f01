"""`tinymlops cluster up`: the embedded local stack in the foreground, for kubectl and experiments."""

from __future__ import annotations

import shutil
from pathlib import Path

import click


def _is_emulator_kubeconfig(path: Path) -> bool:
    """Whether `path` is a kubeconfig an earlier `cluster up` wrote (only the emulator's context in it)."""
    import yaml

    from tinymlops.stack.kubeconfig import CONTEXT

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    contexts = config.get("contexts") if isinstance(config, dict) else None
    return isinstance(contexts, list) and [c.get("name") for c in contexts if isinstance(c, dict)] == [CONTEXT]


@click.group()
def cluster() -> None:
    """The embedded local stack (API emulator, operator, gateway, simulated devices)."""


@cluster.command("up")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the kubeconfig here (it is always in WORKDIR/kubeconfig).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=".tinymlops/cluster",
              show_default=True, help="State of the stack (store, keys, kubeconfig).")
@click.option("--api-port", type=int, default=0, help="API emulator port (0: any free port).")
@click.option("--gateway-port", type=int, default=0, help="Gateway port (0: any free port).")
@click.option("--devices", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="Simulated KubeEdge devices to register and run.")
@click.option("--fleet", default="default/digits-fleet", show_default=True,
              help="NAMESPACE/NAME of the DeviceFleet the simulated devices follow.")
def up(kubeconfig: Path | None, workdir: Path, api_port: int, gateway_port: int, devices: int, fleet: str) -> None:
    """Run the stack until Ctrl-C; then `kubectl --kubeconfig ... apply -f examples/`.

    The sample digits model is placed in the store as store://sources/digits/,
    which is what examples/edgemodel-digits.yaml builds.
    """
    import signal
    import threading

    import numpy as np

    from tinymlops.bundled import examples_dir
    from tinymlops.commands.outputs import check_output_files
    from tinymlops.fleet import FleetSimulator, make_fleet
    from tinymlops.fleet.identities import FleetIdentities
    from tinymlops.fleet.kubeedge import device_manifest, device_models
    from tinymlops.layout import source_prefix
    from tinymlops.model.digits import prepare_digits
    from tinymlops.signing import load_public_key
    from tinymlops.stack.demo import twin_sink
    from tinymlops.stack.local import LocalStack
    from tinymlops.stack.threads import LoopThread

    if kubeconfig is not None:  # someone's real kubeconfig is not replaced by the emulator's
        check_output_files([kubeconfig], force=False, option="--kubeconfig", ours=_is_emulator_kubeconfig)
    namespace, _, fleet_name = fleet.rpartition("/")
    namespace = namespace or "default"
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalStack(workdir, api_port=api_port, gateway_port=gateway_port) as stack:
        digits = prepare_digits(stack.paths.store / source_prefix("digits"))
        if kubeconfig:
            shutil.copyfile(stack.paths.kubeconfig, kubeconfig)
        assert stack.kube is not None and stack.gateway is not None
        simulator, loop = None, None
        if devices:
            for manifest in device_models(namespace):
                stack.kube.apply(manifest)
            fleet_devices = make_fleet(devices)
            identities = FleetIdentities()
            for index, caps in enumerate(fleet_devices):
                stack.kube.apply(device_manifest(caps, index=index, namespace=namespace,
                                                 gateway_url=stack.gateway.url, fleet=fleet_name,
                                                 identity=identities.public_base64(caps.name)))
            simulator = FleetSimulator(
                fleet_devices, identities=identities, namespace=namespace, fleet=fleet_name,
                gateway_url=stack.gateway.url,
                publisher_key=load_public_key(stack.paths.public_key.read_bytes()),
                samples=np.load(digits.data_path)["x"].astype(np.float32),
                twin_sink=twin_sink(stack.kube, namespace),
            )
            loop = LoopThread("fleet").start()
            loop.call(simulator.start())
        config = kubeconfig or stack.paths.kubeconfig
        click.echo(f"API emulator:  {stack.api_url}")
        click.echo(f"gateway:       {stack.gateway.url}  (/metrics, /v1/store/..., /v1/reports)")
        click.echo(f"prometheus:    {stack.prometheus_url}  (scrapes the gateway and the operator; /graph)")
        click.echo(f"devices:       {devices} simulated, following {namespace}/{fleet_name}")
        click.echo(f"kubeconfig:    export KUBECONFIG={config.resolve()}")
        click.echo(f"then:          kubectl apply -f {examples_dir()} && kubectl get edgemodels,devicefleets")
        click.echo("Ctrl-C stops everything.")
        try:
            stop.wait()
        finally:
            if simulator is not None and loop is not None:
                loop.call(simulator.stop())
                loop.stop()
