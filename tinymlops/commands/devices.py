"""`tinymlops devices simulate`: a fleet of simulated devices against any cluster's gateway (kind, a lab)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def devices() -> None:
    """Simulated KubeEdge devices for a cluster that has no real ones yet."""


@devices.command("simulate")
@click.option("--gateway", "gateway_url", required=True,
              help="The TinyMLOps gateway the devices poll and report to, e.g. http://127.0.0.1:30080 on kind.")
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The publisher's Ed25519 public key the devices pin (tinymlops keys generate wrote it).")
@click.option("--fleet", default="default/digits-fleet", show_default=True,
              help="NAMESPACE/NAME of the DeviceFleet the devices follow.")
@click.option("--devices", "count", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="How many devices (a mix of the five device classes).")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="DATA.npz whose `x` the devices run inferences on (default: the digits sample's held-out set).")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="KUBECONFIG",
              show_envvar=True, help="Register the devices as KubeEdge Device objects in that cluster and write "
                                     "their twins (without one the devices run unregistered).")
@click.option("--prefix", default="sim", show_default=True, help="Device name prefix.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM CA certificate(s) the devices' edge nodes trust for an HTTPS --gateway (default: the "
                   "system's CAs), e.g. the ca.crt of the gateway's cert-manager Secret.")
def simulate(gateway_url: str, pubkey: Path, fleet: str, count: int, data: Path | None, kubeconfig: Path | None,
             prefix: str, ca_file: Path | None) -> None:
    """Register --devices simulated devices and run their agents until Ctrl-C.

    Each polls the fleet's signed plan, verifies and loads its variant, serves real
    inferences and reports, like the devices of `tinymlops demo`."""
    import signal
    import tempfile
    import threading

    import numpy as np

    from tinymlops.fleet import FleetSimulator, make_fleet
    from tinymlops.fleet.identities import FleetIdentities
    from tinymlops.fleet.kubeedge import device_manifest, device_models
    from tinymlops.model.digits import prepare_digits
    from tinymlops.signing import load_public_key
    from tinymlops.stack.demo import poll_interval, twin_sink
    from tinymlops.stack.kube import Kube
    from tinymlops.stack.threads import LoopThread

    namespace, _, fleet_name = fleet.rpartition("/")
    namespace = namespace or "default"
    with tempfile.TemporaryDirectory() as tmp:
        data_path = data or prepare_digits(Path(tmp)).data_path
        samples = np.load(data_path)["x"].astype(np.float32)
    fleet_devices = make_fleet(count, prefix=prefix)
    identities = FleetIdentities()  # each device signs its reports; its Device registers the public key
    kube = Kube(kubeconfig) if kubeconfig else None
    if kube is not None:
        kube.apply_all(device_models(namespace))
        kube.apply_all(device_manifest(caps, index=i, namespace=namespace, gateway_url=gateway_url, fleet=fleet_name,
                                       identity=identities.public_base64(caps.name))
                       for i, caps in enumerate(fleet_devices))
        click.echo(f"registered {count} KubeEdge Devices in {namespace} (kubectl get devices)")
    simulator = FleetSimulator(
        fleet_devices, identities=identities, namespace=namespace, fleet=fleet_name, gateway_url=gateway_url,
        publisher_key=load_public_key(pubkey.read_bytes()), samples=samples, poll_interval_s=poll_interval(count),
        twin_sink=twin_sink(kube, namespace) if kube is not None else None,
        ca_file=str(ca_file) if ca_file is not None else None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    loop = LoopThread("devices").start()
    loop.call(simulator.start())
    click.echo(f"{count} devices following {namespace}/{fleet_name} through {gateway_url}; Ctrl-C stops them")
    try:
        while not stop.wait(5.0):
            phases = dict(sorted(simulator.phases().items()))
            revisions = {f"r{r}": n for r, n in sorted(simulator.by_revision().items())}
            click.echo(f"phases {phases}  revisions {revisions}  variants {dict(simulator.by_variant())}")
    finally:
        loop.call(simulator.stop())
        loop.stop()
        if kube is not None:
            kube.close()
