"""The gateway's device registry, built from the identity keys on the KubeEdge `Device` objects (pure).

Whoever provisions a device annotates its `Device` with the device's identity
public key (`tinymlops.io/identity-public-key`: the raw 32-byte Ed25519 key in
base64, `signing.IDENTITY_ANNOTATION`).  The operator turns every well-formed
one into an entry of the registry the gateway reads (`gateway/registry.py`, in
`gateway/authn.py`'s format); a malformed one is left out with a message naming
the device, and every other device is registered as usual.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tinymlops.errors import SignatureError
from tinymlops.signing import IDENTITY_ANNOTATION, load_public_key_base64, public_key_pem


@dataclass(frozen=True)
class DeviceIdentity:
    """One Device's registered key as PEM, or why it cannot be registered (`problem`)."""

    namespace: str
    name: str
    public_key_pem: str | None
    problem: str | None = None


def device_identity(namespace: str, name: str, annotations: Mapping[str, str]) -> DeviceIdentity | None:
    """The identity a Device's annotation registers; None when it has none (the device stays unregistered)."""
    value = annotations.get(IDENTITY_ANNOTATION)
    if value is None:
        return None
    try:
        key = load_public_key_base64(value, source=f"Device {namespace}/{name}: annotation {IDENTITY_ANNOTATION}")
    except SignatureError as exc:
        return DeviceIdentity(namespace, name, None, f"{exc}; the device's reports are refused until it is fixed")
    return DeviceIdentity(namespace, name, public_key_pem(key).decode("ascii"))


def registry_bytes(identities: Iterable[DeviceIdentity]) -> bytes:
    """The registry document: the well-formed identities, sorted, so equal registries are equal bytes."""
    devices = sorted(({"namespace": i.namespace, "name": i.name, "public_key": i.public_key_pem}
                      for i in identities if i.public_key_pem is not None),
                     key=lambda entry: (entry["namespace"], entry["name"]))
    return json.dumps({"devices": devices}, sort_keys=True, separators=(",", ":")).encode("ascii")
