"""The KubeEdge objects (devices.kubeedge.io/v1beta1) that stand for simulated devices (pure).

A real KubeEdge installation has the same objects, created by whoever
provisions the device; TinyMLOps reads capabilities from the tinymlops.io/*
labels and fleets select devices with ordinary label selectors.  The device's
identity public key rides in the `tinymlops.io/identity-public-key` annotation
(`signing.IDENTITY_ANNOTATION`), from which the operator builds the gateway's
device registry.
"""

from __future__ import annotations

from typing import Any

from tinymlops.devices import DeviceCapabilities
from tinymlops.fleet.profiles import DEVICE_CLASSES, FLEET_LABEL, FLEET_LABEL_VALUE
from tinymlops.signing import IDENTITY_ANNOTATION

KUBEEDGE_API = "devices.kubeedge.io/v1beta1"
PROTOCOL = "tinymlops-agent"
DEVICES_PER_EDGE_NODE = 50


def device_model_name(device_class: str) -> str:
    return f"{device_class}-inference"


def device_model_manifest(device_class: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": KUBEEDGE_API,
        "kind": "DeviceModel",
        "metadata": {"name": device_model_name(device_class), "namespace": namespace,
                     "labels": {FLEET_LABEL: FLEET_LABEL_VALUE}},
        "spec": {
            "protocol": PROTOCOL,
            "properties": [
                {"name": "active-variant", "type": "STRING", "accessMode": "ReadOnly",
                 "description": "Id of the model variant the agent serves."},
                {"name": "inference-latency", "type": "FLOAT", "accessMode": "ReadOnly", "minimum": "0",
                 "unit": "ms", "description": "Median on-device inference latency."},
            ],
        },
    }


def device_models(namespace: str) -> list[dict[str, Any]]:
    return [device_model_manifest(cls.name, namespace) for cls in DEVICE_CLASSES]


def device_manifest(
    caps: DeviceCapabilities, *, index: int, namespace: str, gateway_url: str, fleet: str,
    identity: str | None = None,
) -> dict[str, Any]:
    """One Device bound to a simulated edge node; the agent's configuration rides in the protocol block.

    `identity`: the device's identity public key (raw, base64: `FleetIdentities.public_base64`), registered
    in the annotation; None leaves the device unregistered (a gateway with a registry refuses its reports)."""
    metadata: dict[str, Any] = {
        "name": caps.name,
        "namespace": namespace,
        "labels": {FLEET_LABEL: FLEET_LABEL_VALUE, **caps.labels()},
    }
    if identity is not None:
        metadata["annotations"] = {IDENTITY_ANNOTATION: identity}
    return {
        "apiVersion": KUBEEDGE_API,
        "kind": "Device",
        "metadata": metadata,
        "spec": {
            "deviceModelRef": {"name": device_model_name(caps.device_class)},
            "nodeName": f"edge-node-{index // DEVICES_PER_EDGE_NODE:03d}",
            "protocol": {"protocolName": PROTOCOL, "configData": {"gatewayURL": gateway_url, "fleet": fleet}},
            "properties": [
                {"name": "active-variant", "reportToCloud": True, "reportCycle": 10000, "collectCycle": 10000,
                 "visitors": {"protocolName": PROTOCOL, "configData": {"source": "agent-status"}}},
            ],
        },
    }
