"""A device's Flower node key, bound to its identity key so the operator registers only the fleet's own devices.

Flower 1.42 authenticates a SuperNode by an ECDSA signature with a NIST-curve EC key (the SuperLink refuses any
other type), while a device's identity is its Ed25519 key (`identity.pem`), which Flower cannot take.  So each
device makes one EC P-384 node key of its own, kept beside its identity in the state directory (OpenSSH format,
as `flower-supernode --auth-supernode-private-key` reads it), and signs the node key's public half with its
identity key.  The binding (`flower-node.json`) is public: it rides in the device's `tinymlops.io/flower-node-key`
annotation, and the operator registers a node key with the SuperLink only when the binding verifies under the
identity key the same Device registers (`tinymlops.io/identity-public-key`).  A stolen binding is useless without
the node key, which never leaves the device.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.errors import SignatureError
from tinymlops.store import atomic_write

NODE_KEY_FILE = "flower-node.key"
BINDING_FILE = "flower-node.json"
NODE_KEY_ANNOTATION = "tinymlops.io/flower-node-key"
FORMAT = "tinymlops.flower-node-key/v1"
_DOMAIN = b"tinymlops flower node key v1\n"  # the signature can never be mistaken for one over a report or menu


@dataclass(frozen=True)
class NodeKey:
    private_key_path: Path  # for flower-supernode --auth-supernode-private-key
    public_key_pem: bytes  # what the SuperLink registers
    binding: dict[str, Any]  # the public binding, for the Device annotation


def _message(public_key_pem: bytes) -> bytes:
    return _DOMAIN + public_key_pem


def bind(identity: Ed25519PrivateKey, public_key_pem: bytes) -> dict[str, Any]:
    """The binding of a Flower node public key (PEM) to the identity key that signs it."""
    return {"format": FORMAT, "flowerPublicKey": public_key_pem.decode("ascii"),
            "signature": base64.b64encode(identity.sign(_message(public_key_pem))).decode("ascii")}


def ensure_node_key(state_dir: Path, identity: Ed25519PrivateKey) -> NodeKey:
    """The device's node key, made once (owner-only file) and bound to `identity`; kept across runs, never replaced."""
    key_path, binding_path = state_dir / NODE_KEY_FILE, state_dir / BINDING_FILE
    if key_path.exists():
        try:
            key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{key_path}: not an OpenSSH private key ({exc}); move it away to make a new "
                                 "one") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SignatureError(f"{key_path}: not an EC key ({type(key).__name__}); Flower takes NIST-curve EC keys")
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                 serialization.NoEncryption()))
        key_path.chmod(0o600)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    binding = bind(identity, public_pem)  # Ed25519 is deterministic: the same key gives the same binding
    atomic_write(binding_path, json.dumps(binding, indent=2).encode() + b"\n")
    return NodeKey(key_path, public_pem, binding)


def annotation_value(binding: Mapping[str, Any]) -> str:
    """The binding as the Device annotation carries it (compact JSON)."""
    return json.dumps(dict(binding), separators=(",", ":"), sort_keys=True)


def verified_node_key(binding: Mapping[str, Any] | str, identity: Ed25519PublicKey, *, source: str) -> bytes:
    """The Flower public key (PEM) `binding` binds to `identity`; SignatureError naming what fails."""
    try:
        document = json.loads(binding) if isinstance(binding, str) else dict(binding)
    except ValueError as exc:
        raise SignatureError(f"{source}: the node key binding is not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SignatureError(f"{source}: not a {FORMAT} binding")
    try:
        public_pem = str(document["flowerPublicKey"]).encode("ascii")
        signature = base64.b64decode(str(document["signature"]), validate=True)
    except (KeyError, UnicodeError, binascii.Error) as exc:
        raise SignatureError(f"{source}: the node key binding lacks a readable flowerPublicKey or signature") from exc
    try:
        identity.verify(signature, _message(public_pem))
    except InvalidSignature as exc:
        raise SignatureError(f"{source}: the node key is not signed by the device's identity key") from exc
    try:
        key = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{source}: the bound node key is not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)):
        raise SignatureError(f"{source}: the bound node key is not a NIST-curve EC key, which Flower requires")
    return public_pem
