"""Encrypted variants: what a publisher adds to a menu, and what a device does before loading.

Publisher: each blob is encrypted under the model's data key (AES-256-GCM, bound to its
variant id), the menu entry then describes the ciphertext (`sha256`, and `size_bytes` or,
for a microcontroller variant, `blob_bytes`: what is downloaded and verified) and carries
`encryption` (algorithm, data key id, and the plaintext's digest and size, recorded for
audit and lineage: devices do not check them).  The data key is wrapped for each device
or device group (X25519 + HKDF) into `keys/<recipient fingerprint>.json` beside the menu
(`layout.grant_key`).  Granting a new device, or rotating a device's key, writes one
more file: menu and blobs, and so their digests and signature, stay as they are.

Device: digest of the ciphertext (signed menu), unwrap its data key with its own
X25519 key, decrypt and authenticate in memory (AES-GCM); the plaintext is never
written anywhere.  No digest of the plaintext is computed: the signed ciphertext
digest and the GCM tag already bind it (see `open_artifact`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tinymlops import envelope
from tinymlops.errors import IntegrityError
from tinymlops.layout import grant_file, grant_key, model_prefix
from tinymlops.store import ArtifactStore, sha256_bytes


def model_context(namespace: str, name: str) -> bytes:
    """What a wrapped data key is bound to: one model (a wrap for another model does not open), named by
    its store prefix.  Existing wraps carry it: moving the model's folder means wrapping its keys again."""
    return model_prefix(namespace, name).encode()


def variant_aad(variant_id: str) -> bytes:
    """What an encrypted blob is bound to: its variant (a blob swapped for another variant's fails)."""
    return f"variant:{variant_id}".encode()


def encrypt_variants(
    entries: Sequence[Mapping[str, Any]], blobs: Mapping[str, bytes], data_key: bytes
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Menu entries and blobs with every artifact encrypted; entries then describe the ciphertext."""
    out_entries, out_blobs = [], {}
    for entry in entries:
        plaintext = blobs[str(entry["sha256"])]
        sealed = envelope.encrypt_artifact(plaintext, data_key, aad=variant_aad(str(entry["id"])))
        digest = sha256_bytes(sealed)
        out_blobs[digest] = sealed
        # A microcontroller variant's size_bytes is its flash, which encryption does not change.
        size_field = "blob_bytes" if "blob_bytes" in entry else "size_bytes"
        out_entries.append({
            **entry,
            "sha256": digest,
            size_field: len(sealed),
            "encryption": {
                "alg": envelope.ALGORITHM,
                "key_id": envelope.data_key_id(data_key),
                "plaintext_sha256": entry["sha256"],
                "plaintext_size": len(plaintext),
            },
        })
    return out_entries, out_blobs


def grant(data_key: bytes, recipients: Sequence[X25519PublicKey], *, context: bytes) -> dict[str, dict[str, str]]:
    """recipient fingerprint -> the data key wrapped for it."""
    return {envelope.fingerprint(r): envelope.wrap_data_key(data_key, r, context=context) for r in recipients}


def write_grants(store: ArtifactStore, prefix: str, grants: Mapping[str, Mapping[str, str]]) -> list[str]:
    """One file per recipient: adding a device later writes one more and leaves the menu as it is."""
    keys = []
    for recipient, wrapped in grants.items():
        key = grant_key(prefix, recipient)
        store.put(key, json.dumps(dict(wrapped), sort_keys=True, indent=2).encode())
        keys.append(key)
    return keys


def device_grant_file(device_key: X25519PrivateKey) -> str:
    """Where a device finds its wrapped data key, relative to the menu's folder."""
    return grant_file(envelope.fingerprint(device_key.public_key()))


def open_artifact(
    blob: bytes,
    variant: Mapping[str, Any],
    *,
    device_key: X25519PrivateKey | None,
    wrapped: Mapping[str, Any] | None,
    context: bytes,
) -> bytes:
    """The model bytes of a verified `blob`: itself when not encrypted, else decrypted in memory and checked."""
    sealed = variant.get("encryption")
    if not sealed:
        return blob
    what = f"variant {variant['id']}"
    if device_key is None:
        raise IntegrityError(f"{what} is encrypted and this device has no device key (provision one with --device-key)")
    if wrapped is None:
        raise IntegrityError(
            f"{what} is encrypted and no data key is wrapped for this device "
            f"({envelope.fingerprint(device_key.public_key())})"
        )
    data_key = envelope.unwrap_data_key(wrapped, device_key, context=context)
    if envelope.data_key_id(data_key) != sealed.get("key_id"):
        raise IntegrityError(f"{what}: encrypted under data key {sealed.get('key_id')}, "
                             f"this device holds {envelope.data_key_id(data_key)}")
    # No second digest over the plaintext: the ciphertext's digest is in the signed menu and GCM
    # authenticates every byte of it, so these bytes can only decrypt to what the publisher encrypted.
    return envelope.decrypt_artifact(blob, data_key, aad=variant_aad(str(variant["id"])))
