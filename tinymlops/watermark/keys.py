"""The owner's watermark key and every secret derived from it.

Nothing derived here is stored: the projection matrix, the payload and the trigger set are recomputed from the
key at each embed and verify.  Each is a SHAKE-256 stream seeded by HMAC-SHA256(key, purpose and context), so it
depends on the key and on what it is for (licensee, trigger seed), and never changes with a numpy or platform
version (numpy's Generator streams are not promised to stay the same across releases; a registry outlives them).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import WatermarkKeyError

KEY_MIN_BYTES = 32
DOMAIN = b"tinymlops-watermark/v1"
PEM_HEADER = b"-----BEGIN"


def key_from_file(path: Path) -> bytes:
    """The key bytes in `path`: a PEM private key (as `tinymlops keys generate` writes: its raw private bytes)
    or any file of at least 32 bytes, used as it is."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WatermarkKeyError(f"watermark key {path}: cannot be read ({exc.strerror or exc})") from exc
    if data.lstrip().startswith(PEM_HEADER):
        data = _pem_private_bytes(data, path)
    if len(data) < KEY_MIN_BYTES:
        raise WatermarkKeyError(f"watermark key {path}: {len(data)} bytes; a key needs at least {KEY_MIN_BYTES} "
                                "random bytes (e.g. `head -c 32 /dev/urandom > owner.key`)")
    return data


def _pem_private_bytes(pem: bytes, path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise WatermarkKeyError(f"watermark key {path}: a PEM file but not an unencrypted private key ({exc})") \
            from exc
    if isinstance(key, Ed25519PrivateKey | X25519PrivateKey):
        return key.private_bytes_raw()
    # Other key types have no raw form; their PKCS#8 DER encoding is just as secret and just as stable.
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def derived_bytes(key: bytes, purpose: str, *context: str | int, size: int) -> bytes:
    """`size` bytes that only the holder of `key` can compute, distinct for each purpose and context."""
    label = b"\0".join([DOMAIN, purpose.encode(), *(str(part).encode() for part in context)])
    seed = hmac.new(key, label, hashlib.sha256).digest()
    return hashlib.shake_256(seed).digest(size)


def signs(key: bytes, shape: tuple[int, int], purpose: str, *context: str | int) -> NDArray[np.float32]:
    """A key-derived matrix of +1/-1 entries, each an independent fair coin."""
    count = shape[0] * shape[1]
    bits = np.unpackbits(np.frombuffer(derived_bytes(key, purpose, *context, size=(count + 7) // 8), np.uint8))
    return (bits[:count].astype(np.float32) * 2.0 - 1.0).reshape(shape)


def uniforms(key: bytes, count: int, purpose: str, *context: str | int) -> NDArray[np.float64]:
    """`count` key-derived numbers uniform in [0, 1), 53 bits each."""
    words = np.frombuffer(derived_bytes(key, purpose, *context, size=8 * count), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def choices(key: bytes, count: int, classes: int, purpose: str, *context: str | int) -> NDArray[np.int64]:
    """`count` key-derived integers in [0, classes); a 64-bit word modulo `classes` is uniform to within
    classes / 2**64 (below 1e-17 for any classifier), which no test here can tell from exact."""
    words = np.frombuffer(derived_bytes(key, purpose, *context, size=8 * count), dtype="<u8")
    return (words % np.uint64(classes)).astype(np.int64)


def payload_bits(key: bytes, licensee: str, bits: int) -> NDArray[np.uint8]:
    """The licensee's payload: `bits` bits of HMAC(key, licensee), which nobody without the key can forge."""
    raw = np.unpackbits(np.frombuffer(derived_bytes(key, "payload", licensee, size=(bits + 7) // 8), np.uint8))
    return raw[:bits].astype(np.uint8)
