"""The usage chain and checkpoints: receipts, heads, RFC 6962 roots (held against pymerkle's), the wire form."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymerkle import InmemoryTree

from tinymlops.errors import ReceiptsError
from tinymlops.licensing import chain
from tinymlops.licensing.checkpoint import CHECKPOINT_BYTES, from_base64, parse, parse_many, seal, signature_holds


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 13, 64, 1000])
def test_the_merkle_root_is_pymerkles(n: int) -> None:
    data = [os.urandom(40) for _ in range(n)]
    assert chain.merkle_root(data) == InmemoryTree.init_from_entries(data, algorithm="sha256").get_root()


def test_the_head_commits_to_every_receipt_its_order_and_the_token() -> None:
    receipts = b"".join(chain.receipt(os.urandom(20), os.urandom(8)) for _ in range(10))
    token = os.urandom(16)
    head = chain.fold(chain.GENESIS, 1, receipts, token)
    stepwise = chain.GENESIS
    for i, r in enumerate(chain.split(receipts)):
        stepwise = chain.extend(stepwise, i + 1, r, token)
    assert head == stepwise
    swapped = receipts[32:64] + receipts[:32] + receipts[64:]
    assert chain.fold(chain.GENESIS, 1, swapped, token) != head
    assert chain.fold(chain.GENESIS, 1, receipts, os.urandom(16)) != head
    assert chain.fold(chain.GENESIS, 2, receipts, token) != head


def test_a_receipt_is_32_bytes_of_hashes() -> None:
    r = chain.receipt(b"input", b"output")
    assert len(r) == chain.RECEIPT_BYTES == 32 and r != chain.VOID


def test_a_checkpoint_is_196_signed_bytes() -> None:
    key = Ed25519PrivateKey.generate()
    cp = seal(key, token_id=os.urandom(16), start=0, end=1000, sealed_at=1_800_000_000, prev_head=chain.GENESIS,
              head=os.urandom(32), root=os.urandom(32))
    raw = cp.to_bytes()
    assert len(raw) == CHECKPOINT_BYTES == 196
    assert parse(raw) == cp and from_base64(cp.to_base64()) == cp and parse_many(raw * 2) == [cp, cp]
    assert signature_holds(cp, key.public_key())
    assert not signature_holds(cp, Ed25519PrivateKey.generate().public_key())
    edited = parse(raw[:20] + bytes([raw[20] ^ 1]) + raw[21:])
    assert not signature_holds(edited, key.public_key())


def test_truncated_checkpoint_records_are_named() -> None:
    with pytest.raises(ReceiptsError, match="195 bytes"):
        parse(bytes(195))
    with pytest.raises(ReceiptsError, match="not a whole number"):
        parse_many(bytes(300))
    with pytest.raises(ReceiptsError, match="not base64"):
        from_base64("***")
