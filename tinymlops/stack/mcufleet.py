"""Far-edge microcontrollers in the default demo's fleet: KubeEdge Devices behind one edge node.

When the Arm toolchain, qemu and TVM are present, the demo adds `cortex-m4` to
the EdgeModel's targets and to the DeviceFleet's architectures, registers a few
Cortex-M4 boards as KubeEdge Device objects (capability labels, identity key,
`spec.nodeName` naming the edge node that manages them) and starts that edge
node (`tinymlops.faredge.fleetnode`) on its own thread: each board follows the
fleet's signed plan and canary cohorts like any device, and its reports reach
the gateway, the fleet's status and the metrics.  Without the tools the demo
says why in one line and runs without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from tinymlops.devices import LABEL_ARCH, DeviceCapabilities
from tinymlops.errors import ToolchainMissingError
from tinymlops.faredge.fleetnode import McuEdgeNode
from tinymlops.fleet.identities import FleetIdentities
from tinymlops.fleet.kubeedge import device_manifest, device_model_manifest
from tinymlops.fleet.profiles import FLEET_LABEL, FLEET_LABEL_VALUE
from tinymlops.stack.kube import Kube
from tinymlops.stack.threads import LoopThread

TARGET = "cortex-m4"
MCU_CLASS = "mcu"
EDGE_NODE = "edge-node-mcu-0"
# Cortex-M4F boards by their datasheets: flash (all of it for the model's firmware) and RAM.
BOARDS = (
    DeviceCapabilities("mcu-nucleo-l4r5zi-0", TARGET, MCU_CLASS, 0, 2048, ("c",), ram_kb=640),
    DeviceCapabilities("mcu-nucleo-f411re-0", TARGET, MCU_CLASS, 0, 512, ("c",), ram_kb=128),
    DeviceCapabilities("mcu-nucleo-f446re-0", TARGET, MCU_CLASS, 0, 512, ("c",), ram_kb=128),
)


def unavailable() -> str | None:
    """Why this machine cannot run far-edge devices (the missing tool, named with its package), or None."""
    import importlib.util

    from tinymlops.variants.mcu.firmware import find_toolchain

    try:
        find_toolchain()
    except ToolchainMissingError as exc:
        return str(exc)
    if importlib.util.find_spec("tvm") is None:
        return "the cortex-m4 variant needs apache-tvm (pip install 'tinymlops[tvm]')"
    return None


def boards(count: int) -> list[DeviceCapabilities]:
    if not 0 <= count <= len(BOARDS):
        raise ValueError(f"far-edge devices: {count} is not in 0..{len(BOARDS)}")
    return list(BOARDS[:count])


def with_target(model: Mapping[str, Any]) -> dict[str, Any]:
    """The EdgeModel with `cortex-m4` among its variant targets (the firmware is measured in qemu)."""
    spec = dict(model["spec"])
    variants = dict(spec.get("variants") or {})
    variants["targets"] = [*(t for t in variants.get("targets") or () if t != TARGET), TARGET]
    return {**model, "spec": {**spec, "variants": variants}}


def with_arch(fleet: Mapping[str, Any]) -> dict[str, Any]:
    """The DeviceFleet with `cortex-m4` among the architectures its selector's `In` expression lists."""
    spec = dict(fleet["spec"])
    selector = dict(spec.get("selector") or {})
    expressions = []
    for expression in selector.get("matchExpressions") or ():
        if expression.get("key") == LABEL_ARCH and expression.get("operator") == "In":
            expression = {**expression, "values": [*expression["values"], TARGET]}
        expressions.append(expression)
    if expressions:
        selector["matchExpressions"] = expressions
    return {**fleet, "spec": {**spec, "selector": selector}}


def manifests(mcus: Sequence[DeviceCapabilities], *, namespace: str, gateway_url: str, fleet: str,
              identities: FleetIdentities) -> list[dict[str, Any]]:
    """The microcontrollers' DeviceModel and Devices: managed by EDGE_NODE, each registering its identity key
    (which that node holds for it and signs its reports with)."""
    objects = [device_model_manifest(MCU_CLASS, namespace)]
    for index, caps in enumerate(mcus):
        device = device_manifest(caps, index=index, namespace=namespace, gateway_url=gateway_url, fleet=fleet,
                                 identity=identities.public_base64(caps.name))
        device["spec"]["nodeName"] = EDGE_NODE
        device["spec"]["protocol"]["configData"]["board"] = "mps2-an386 (qemu-system-arm)"
        objects.append(device)
    return objects


@dataclass
class RunningNode:
    node: McuEdgeNode
    loop: LoopThread

    def stop(self) -> None:
        self.loop.call(self.node.stop())
        self.loop.stop()


def register(kube: Kube, mcus: Sequence[DeviceCapabilities], *, namespace: str, fleet: str, gateway_url: str,
             identities: FleetIdentities) -> None:
    """The boards' KubeEdge objects, as whoever provisions them would create them."""
    kube.apply_all(manifests(mcus, namespace=namespace, gateway_url=gateway_url, fleet=fleet, identities=identities))


def start(mcus: Sequence[DeviceCapabilities], *, namespace: str, fleet: str, gateway_url: str,
          publisher_key: Ed25519PublicKey, identities: FleetIdentities, device_key: X25519PrivateKey | None,
          samples: NDArray[np.float32], workdir: Path, poll_interval_s: float,
          firmware_cache: Path | None = None) -> RunningNode:
    """The boards' edge node, on a thread of its own (each MCU run is a blocking qemu boot).  `firmware_cache`:
    the factory's, on one machine (content-keyed: the node reuses the firmware the factory measured)."""
    node = McuEdgeNode(EDGE_NODE, mcus, namespace=namespace, fleet=fleet, gateway_url=gateway_url,
                       publisher_key=publisher_key, signers={c.name: identities.signer(c.name) for c in mcus},
                       samples=samples, workdir=workdir, labels={FLEET_LABEL: FLEET_LABEL_VALUE},
                       device_key=device_key, poll_interval_s=poll_interval_s, firmware_cache=firmware_cache)
    loop = LoopThread("far-edge").start()
    loop.call(node.start())
    return RunningNode(node, loop)


def summary(running: RunningNode | None, skipped: str | None, gateway_url: str) -> dict[str, Any]:
    """The report's `fleet.far_edge`: each board's variant and figures, or why there were none; and what the
    gateway's metrics counted for the microcontroller class (their reports reached it, signed and accepted)."""
    if running is None:
        return {"devices": [], "skipped": skipped or "no far-edge devices asked for"}
    return {"edge_node": running.node.name, "reports_relayed": running.node.reports_sent,
            "gateway_metrics": gateway_counts(gateway_url), "devices": running.node.summary()}


def gateway_counts(gateway_url: str) -> dict[str, float]:
    """The microcontroller class's inferences and instructions in the gateway's /metrics (what Prometheus
    scrapes), summed over variants and revisions."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{gateway_url.rstrip('/')}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = {"tinymlops_device_inferences_total": "inferences", "tinymlops_device_instructions_total": "instructions"}
    counts = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and sample.labels.get("device_class") == MCU_CLASS:
                counts[wanted[sample.name]] += sample.value
    return counts
