"""A tail request: a device sends the intermediate tensor of a split variant, the gateway runs the tail.

The one contract between the agent's split mode and the gateway's tail service
(`gateway/tails.py`), as `report.py` is for reports:

    POST /v1/tails/<namespace>/<model>/<tail sha256>
    body: float32 little-endian, one or more samples of the split point's tensor, batch first
    X-TinyMLOps-Device: <namespace>/<name>      the device, as the gateway's registry knows it
    X-TinyMLOps-Time: <unix seconds>           when it was signed
    X-TinyMLOps-Signature: <base64 Ed25519>    by the device's identity key, over `signed_bytes`

The signature covers the path, the time and the body's sha256, so a request is
good for that tail, those values and MAX_SKEW_S around its time only.  The
answer is JSON: `{"outputs": [[...], ...]}`, the tail's scores per sample.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.signing import sign
from tinymlops.store import sha256_bytes

DEVICE_HEADER, TIME_HEADER, SIGNATURE_HEADER = "X-TinyMLOps-Device", "X-TinyMLOps-Time", "X-TinyMLOps-Signature"
MAX_SKEW_S = 120.0  # a signed request older or newer than this is refused (clock skew allowed for)
DOMAIN = b"tinymlops-tail-request/v1"


def tail_path(namespace: str, model: str, tail_sha256: str) -> str:
    return f"/v1/tails/{namespace}/{model}/{tail_sha256}"


def signed_bytes(path: str, timestamp: str, body: bytes) -> bytes:
    """What the device signs: a domain tag (a signature over a report never verifies here), the path, the time
    and the body's sha256."""
    return b"\n".join((DOMAIN, path.encode(), timestamp.encode(), sha256_bytes(body).encode()))


def sign_request(key: Ed25519PrivateKey, device: tuple[str, str], path: str, body: bytes,
                 now: float) -> dict[str, str]:
    """The headers of a tail request from `device` (namespace, name), signed with its identity key."""
    timestamp = f"{now:.3f}"
    return {DEVICE_HEADER: f"{device[0]}/{device[1]}", TIME_HEADER: timestamp,
            SIGNATURE_HEADER: sign(key, signed_bytes(path, timestamp, body))}
