"""Ed25519 signing of menus and plans, and of device reports (the `cryptography` library does the maths).

Two kinds of key pair: the publisher's signing key (`signing-key.pem`), which signs
menus and plans, and each device's identity key (`identity.pem`, made by
`tinymlops keys device`), which signs the device's reports.

Signatures travel as base64 text next to the exact bytes they sign, so a
verifier never re-serialises JSON before checking it.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.errors import SignatureError

PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub.pem"
IDENTITY_KEY_FILE = "identity.pem"
IDENTITY_PUBLIC_KEY_FILE = "identity.pub.pem"
# The annotation of a device's KubeEdge `Device` that registers its identity public key: the raw
# 32-byte Ed25519 key in base64 (44 characters; `public_key_base64`), from which the operator
# builds the gateway's device registry.
IDENTITY_ANNOTATION = "tinymlops.io/identity-public-key"
RAW_PUBLIC_KEY_BYTES = 32


def generate_key_pair(out_dir: Path) -> tuple[Path, Path]:
    """Write a new PEM key pair into `out_dir`; the private key is readable by its owner only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    private_path.write_bytes(private_key_pem(key))
    private_path.chmod(0o600)
    public_path.write_bytes(public_key_pem(key.public_key()))
    return private_path, public_path


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes, *, source: str = "private key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{source}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{source}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def load_public_key(pem: bytes, *, source: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{source}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{source}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def public_key_base64(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key in base64: short enough for an annotation or a label-free field."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_public_key_base64(text: str, *, source: str = "public key") -> Ed25519PublicKey:
    """The Ed25519 public key whose raw 32 bytes `text` holds in base64; SignatureError names `source`."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{source}: not base64 ({exc})") from exc
    if len(raw) != RAW_PUBLIC_KEY_BYTES:
        raise SignatureError(f"{source}: {len(raw)} bytes, an Ed25519 public key has {RAW_PUBLIC_KEY_BYTES} "
                             "(the raw key in base64, not its PEM)")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SignatureError(f"{source}: not an Ed25519 public key ({exc})") from exc


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    """Return the base64 signature of `payload`."""
    return base64.b64encode(key.sign(payload)).decode("ascii")


def verify(key: Ed25519PublicKey, payload: bytes, signature_b64: str | bytes, *, what: str) -> None:
    """Raise SignatureError naming `what` unless `signature_b64` signs `payload` under `key`."""
    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what}: signature is not valid base64") from exc
    try:
        key.verify(raw, payload)
    except InvalidSignature as exc:
        raise SignatureError(f"{what}: signature does not match (edited, or signed by another key)") from exc
