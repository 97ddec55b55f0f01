"""Checkpoints: a device's signed seal over an interval of its usage chain, 196 bytes on the wire.

    token_id 16 | start u64 | end u64 | sealed_at u32 | prev_head 32 | head 32 | root 32 | signature 64

The interval is the receipts numbered start+1..end; `prev_head` is the chain head
after `start` (so the checkpoint says which history it extends), `head` the head
after `end`, `root` the RFC 6962 Merkle root of the interval's receipts, and
`sealed_at` the device's clock in Unix seconds.  The Ed25519 signature (device
identity key) covers a domain prefix and the 132 bytes before it.

Fixed binary, not JSON, because checkpoints are all a device uploads between
audits: one per 1,000 inferences is 196 bytes (the budget is 200).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.errors import ReceiptsError

_BODY = struct.Struct(">16sQQI32s32s32s")
BODY_BYTES = _BODY.size  # 132
SIGNATURE_BYTES = 64
CHECKPOINT_BYTES = BODY_BYTES + SIGNATURE_BYTES  # 196
_DOMAIN = b"tinymlops checkpoint v1\x00"


@dataclass(frozen=True)
class Checkpoint:
    token_id: bytes
    start: int
    end: int
    sealed_at: int
    prev_head: bytes
    head: bytes
    root: bytes
    signature: bytes = b""

    @property
    def count(self) -> int:
        return self.end - self.start

    def body(self) -> bytes:
        return _BODY.pack(self.token_id, self.start, self.end, self.sealed_at, self.prev_head, self.head, self.root)

    def to_bytes(self) -> bytes:
        if len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("an unsigned checkpoint has no wire form; sign it first")
        return self.body() + self.signature

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    def to_base64(self) -> str:
        return base64.b64encode(self.to_bytes()).decode("ascii")

    def describe(self) -> str:
        return f"checkpoint {self.start}..{self.end} (token {self.token_id.hex()[:8]})"


def seal(key: Ed25519PrivateKey, *, token_id: bytes, start: int, end: int, sealed_at: int, prev_head: bytes,
         head: bytes, root: bytes) -> Checkpoint:
    """The signed checkpoint of receipts start+1..end."""
    if not 0 <= start < end:
        raise ValueError(f"a checkpoint seals at least one receipt: start {start}, end {end}")
    unsigned = Checkpoint(token_id, start, end, sealed_at, prev_head, head, root)
    return Checkpoint(token_id, start, end, sealed_at, prev_head, head, root, key.sign(_DOMAIN + unsigned.body()))


def signature_holds(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(checkpoint.signature, _DOMAIN + checkpoint.body())
    except InvalidSignature:
        return False
    return True


def parse(record: bytes, *, where: str = "checkpoint") -> Checkpoint:
    """One checkpoint from its 196 bytes; ReceiptsError naming `where` for any other length."""
    if len(record) != CHECKPOINT_BYTES:
        raise ReceiptsError(f"{where}: {len(record)} bytes, a checkpoint has {CHECKPOINT_BYTES}")
    token_id, start, end, sealed_at, prev_head, head, root = _BODY.unpack(record[:BODY_BYTES])
    return Checkpoint(token_id, start, end, sealed_at, prev_head, head, root, bytes(record[BODY_BYTES:]))


def parse_many(records: bytes, *, where: str = "checkpoints") -> list[Checkpoint]:
    if len(records) % CHECKPOINT_BYTES:
        raise ReceiptsError(f"{where}: {len(records)} bytes is not a whole number of {CHECKPOINT_BYTES}-byte "
                            "checkpoints (truncated or padded)")
    return [parse(records[i:i + CHECKPOINT_BYTES], where=f"{where}[{i // CHECKPOINT_BYTES}]")
            for i in range(0, len(records), CHECKPOINT_BYTES)]


def from_base64(text: str, *, where: str = "checkpoint") -> Checkpoint:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReceiptsError(f"{where}: not base64 ({exc})") from exc
    return parse(raw, where=where)
