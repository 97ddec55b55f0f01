"""Envelope encryption of model artifacts: one data key per model, wrapped for each device.

An artifact is encrypted once, with AES-256-GCM under the model's data key; the
data key is then wrapped for every device (or device group) with X25519 + HKDF.
Adding a device, or rotating a device's key, only adds a wrap: the variants and
their digests stay as they are.  Everything here is a pure function over bytes;
the decrypted model is returned in memory and never written by this module.

Envelope layout:  b"TMLE" | version (1 byte) | nonce (12 bytes) | ciphertext || tag (16 bytes).
The header is authenticated together with the caller's `aad`, so neither can be swapped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tinymlops.errors import IntegrityError

ALGORITHM = "AES-256-GCM"
WRAP_ALGORITHM = "X25519-HKDF-SHA256-AES-256-GCM"

MAGIC = b"TMLE"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = len(HEADER) + NONCE_SIZE + TAG_SIZE

WRAP_FIELDS = ("alg", "recipient", "key_id", "ephemeral_public", "nonce", "wrapped_key")
_KEY_ID_PREFIX = b"tinymlops data key id v1|"
_WRAP_INFO_PREFIX = b"tinymlops key wrap v1|"


def new_data_key() -> bytes:
    return os.urandom(KEY_SIZE)


def data_key_id(data_key: bytes) -> str:
    """A short stable name for a data key, safe to publish (a domain-separated hash, not the key)."""
    return hashlib.sha256(_KEY_ID_PREFIX + data_key).hexdigest()[:16]


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != KEY_SIZE:
        raise IntegrityError(f"data key must be {KEY_SIZE} bytes for {ALGORITHM}, got {len(data_key)}")


def encrypt_artifact(plaintext: bytes, data_key: bytes, *, aad: bytes) -> bytes:
    """Encrypt `plaintext` under a fresh random nonce; `aad` (e.g. b"variant:<id>") must be given again to decrypt."""
    _check_data_key(data_key)
    nonce = os.urandom(NONCE_SIZE)
    return HEADER + nonce + AESGCM(data_key).encrypt(nonce, plaintext, HEADER + aad)


def is_envelope(data: bytes) -> bool:
    """True when `data` starts like an envelope (any version), i.e. it is not a plaintext artifact."""
    return data[: len(MAGIC)] == MAGIC


def decrypt_artifact(envelope: bytes, data_key: bytes, *, aad: bytes) -> bytes:
    what = f"encrypted artifact ({aad.decode('utf-8', 'replace')})"
    if not is_envelope(envelope):
        raise IntegrityError(f"{what}: not an envelope (does not start with {MAGIC!r})")
    if len(envelope) <= len(MAGIC) or envelope[len(MAGIC)] != VERSION:
        version = envelope[len(MAGIC)] if len(envelope) > len(MAGIC) else "missing"
        raise IntegrityError(f"{what}: unknown envelope version {version} (this build reads {VERSION})")
    if len(envelope) < OVERHEAD:
        raise IntegrityError(f"{what}: truncated, {len(envelope)} bytes where an envelope has at least {OVERHEAD}")
    _check_data_key(data_key)
    nonce = envelope[len(HEADER) : len(HEADER) + NONCE_SIZE]
    # A memoryview, not a slice: slicing copies the whole artifact, which costs four times the decryption.
    sealed = memoryview(envelope)[len(HEADER) + NONCE_SIZE :]
    try:
        return AESGCM(data_key).decrypt(nonce, sealed, HEADER + aad)
    except InvalidTag as exc:
        raise IntegrityError(
            f"{what}: authentication failed: tampered or truncated, wrong data key "
            f"(tried {data_key_id(data_key)}), or encrypted for another artifact (aad)"
        ) from exc


def generate_device_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def device_key_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def device_public_pem(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_device_key(pem: bytes, *, source: str) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IntegrityError(f"{source}: not a PEM private key ({exc})") from exc
    if not isinstance(key, X25519PrivateKey):
        raise IntegrityError(f"{source}: expected an X25519 device key, got {type(key).__name__}")
    return key


def load_device_public(pem: bytes, *, source: str) -> X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IntegrityError(f"{source}: not a PEM public key ({exc})") from exc
    if not isinstance(key, X25519PublicKey):
        raise IntegrityError(f"{source}: expected an X25519 device key, got {type(key).__name__}")
    return key


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: X25519PublicKey) -> str:
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def _kek(shared: bytes, ephemeral_raw: bytes, recipient_raw: bytes, context: bytes) -> bytes:
    # Both public keys in the salt tie the wrapping key to this exact exchange.
    hkdf = HKDF(hashes.SHA256(), KEY_SIZE, salt=ephemeral_raw + recipient_raw, info=_WRAP_INFO_PREFIX + context)
    return hkdf.derive(shared)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def wrap_data_key(data_key: bytes, recipient: X25519PublicKey, *, context: bytes) -> dict[str, str]:
    """Wrap `data_key` for one device; the result is JSON-ready and safe to publish.

    `context` (e.g. b"models/<namespace>/<name>") binds the wrap to one model.
    """
    _check_data_key(data_key)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw, recipient_raw = _raw(ephemeral.public_key()), _raw(recipient)
    kek = _kek(ephemeral.exchange(recipient), ephemeral_raw, recipient_raw, context)
    nonce = os.urandom(NONCE_SIZE)
    return {
        "alg": WRAP_ALGORITHM,
        "recipient": fingerprint(recipient),
        "key_id": data_key_id(data_key),
        "ephemeral_public": _b64(ephemeral_raw),
        "nonce": _b64(nonce),
        "wrapped_key": _b64(AESGCM(kek).encrypt(nonce, data_key, context)),
    }


def _field(wrapped: Mapping[str, Any], name: str) -> str:
    value = wrapped.get(name)
    if not isinstance(value, str):
        problem = "missing" if value is None else f"must be a string, got {type(value).__name__}"
        raise IntegrityError(f"wrapped data key: field {name!r} {problem}")
    return value


def _b64_field(wrapped: Mapping[str, Any], name: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(_field(wrapped, name), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IntegrityError(f"wrapped data key: field {name!r} is not valid base64") from exc
    if len(raw) != size:
        raise IntegrityError(f"wrapped data key: field {name!r} is {len(raw)} bytes, expected {size}")
    return raw


def unwrap_data_key(wrapped: Mapping[str, Any], device_key: X25519PrivateKey, *, context: bytes) -> bytes:
    """Recover the data key wrapped for this device under `context`; IntegrityError names what is wrong."""
    fields = {name: _field(wrapped, name) for name in WRAP_FIELDS}
    if fields["alg"] != WRAP_ALGORITHM:
        raise IntegrityError(f"wrapped data key: unknown alg {fields['alg']!r} (expected {WRAP_ALGORITHM})")
    mine = fingerprint(device_key.public_key())
    if fields["recipient"] != mine:
        raise IntegrityError(
            f"wrapped data key: wrapped for another device: wrapped for device {fields['recipient'][:16]}, "
            f"this device is {mine}"
        )
    ephemeral_raw = _b64_field(wrapped, "ephemeral_public", KEY_SIZE)
    nonce = _b64_field(wrapped, "nonce", NONCE_SIZE)
    ciphertext = _b64_field(wrapped, "wrapped_key", KEY_SIZE + TAG_SIZE)
    try:
        shared = device_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    except ValueError as exc:  # a low-order point gives an all-zero secret, which cryptography refuses
        raise IntegrityError(f"wrapped data key: field 'ephemeral_public' is not a usable X25519 key ({exc})") from exc
    kek = _kek(shared, ephemeral_raw, _raw(device_key.public_key()), context)
    try:
        data_key = AESGCM(kek).decrypt(nonce, ciphertext, context)
    except InvalidTag as exc:
        raise IntegrityError(
            f"wrapped data key {fields['key_id'][:16]}: unwrap failed: tampered, or wrapped for another model "
            f"(context {context.decode('utf-8', 'replace')})"
        ) from exc
    if data_key_id(data_key) != fields["key_id"]:
        raise IntegrityError(
            f"wrapped data key: key_id says {fields['key_id'][:16]}, the unwrapped key is {data_key_id(data_key)}"
        )
    return data_key
