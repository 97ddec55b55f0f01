"""The usage chain: one 32-byte receipt per inference, a SHA-256 hash chain over them, RFC 6962 Merkle roots.

A receipt is what the device keeps per inference: the first 16 bytes of SHA-256
of the input's bytes and of the output's bytes (128 bits each: a second preimage
still costs 2^128 work; 32 bytes of state per inference instead of 64 keeps it
under the 48-byte budget).  Its counter is its position (receipt `c` is the c-th
inference the device ever metered, from 1), so it is not stored.

The chain head after inference `c` is

    head_c = SHA-256(head_{c-1} || u64be(c) || receipt_c || token_id)

from `GENESIS`, so the last head commits to every receipt, its order and the
licence it was served under: editing, dropping or reordering one changes every
later head.  A sealed interval's receipts are also the leaves of a Merkle tree
(`u64be(c) || receipt_c`, hashed as RFC 6962 §2.1 does: 0x00 before a leaf, 0x01
before a node), whose root lets an auditor check one receipt with log2(n) hashes
(`audit.py`).  The root is computed here with hashlib: pymerkle (which the audit
proofs use, and whose root tests hold this one against) takes ~6x longer, more
than the per-inference budget allows at seal time.

A receipt of all zero bytes is `VOID`: a counter that was reserved on disk but
whose inference a crash lost (`tinymlops.agent.metering`); it is counted, as the
device may have served it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

RECEIPT_BYTES = 32
HASH_BYTES = 16  # of each of the input's and the output's SHA-256 kept in a receipt
TOKEN_ID_BYTES = 16
VOID = bytes(RECEIPT_BYTES)
GENESIS = hashlib.sha256(b"tinymlops usage chain v1").digest()
_U64 = struct.Struct(">Q")


def receipt(input_bytes: bytes | memoryview, output_bytes: bytes | memoryview) -> bytes:
    """The 32-byte receipt of one inference: truncated SHA-256 of its input and of its output."""
    return hashlib.sha256(input_bytes).digest()[:HASH_BYTES] + hashlib.sha256(output_bytes).digest()[:HASH_BYTES]


def extend(head: bytes, counter: int, receipt_bytes: bytes, token_id: bytes) -> bytes:
    """The chain head after the receipt numbered `counter`."""
    return hashlib.sha256(head + _U64.pack(counter) + receipt_bytes + token_id).digest()


def fold(head: bytes, first_counter: int, receipts: bytes, token_id: bytes) -> bytes:
    """The head after extending `head` with the concatenated `receipts`, the first numbered `first_counter`."""
    sha256, pack = hashlib.sha256, _U64.pack
    for i in range(0, len(receipts), RECEIPT_BYTES):
        head = sha256(head + pack(first_counter + i // RECEIPT_BYTES) + receipts[i:i + RECEIPT_BYTES]
                      + token_id).digest()
    return head


def split(receipts: bytes) -> list[bytes]:
    """The concatenated receipts as a list of 32-byte receipts (ValueError when the length is not a multiple)."""
    if len(receipts) % RECEIPT_BYTES:
        raise ValueError(f"{len(receipts)} bytes of receipts is not a multiple of {RECEIPT_BYTES}")
    return [receipts[i:i + RECEIPT_BYTES] for i in range(0, len(receipts), RECEIPT_BYTES)]


def leaf(counter: int, receipt_bytes: bytes) -> bytes:
    """The Merkle leaf (its data, before hashing) of the receipt numbered `counter`."""
    return _U64.pack(counter) + receipt_bytes


def leaves(first_counter: int, receipts: bytes) -> list[bytes]:
    return [leaf(first_counter + i, r) for i, r in enumerate(split(receipts))]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def merkle_root(leaf_data: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of `leaf_data` (SHA-256 of the empty string for none).

    Bottom-up: pairs within each level, an odd last node carried up unchanged, which gives
    RFC 6962's split at the largest power of two below n (the same root as pymerkle's)."""
    if not leaf_data:
        return hashlib.sha256(b"").digest()
    sha256 = hashlib.sha256
    level = [sha256(b"\x00" + d).digest() for d in leaf_data]
    while len(level) > 1:
        paired = [sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def interval_root(first_counter: int, receipts: bytes) -> bytes:
    """The Merkle root over the receipts numbered from `first_counter`."""
    return merkle_root(leaves(first_counter, receipts))


def count_void(receipts: Iterable[bytes]) -> int:
    return sum(1 for r in receipts if r == VOID)
