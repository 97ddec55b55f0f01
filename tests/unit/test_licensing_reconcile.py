"""Reconciling: every listed kind of tampering is named, and usage is counted once."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.licensing import chain
from tinymlops.licensing.checkpoint import Checkpoint, parse, seal
from tinymlops.licensing.reconcile import (
    BAD_SIGNATURE,
    CLOCK_SET_BACK,
    EDITED_RECEIPT,
    FORK,
    GAP,
    OVER_QUOTA,
    REPLAYED,
    ROLLED_BACK,
    UNLICENSED,
    Receipts,
    reconcile,
)

TOKEN = bytes(range(16))


class Device:
    """A honest device's chain, sealed every `every` receipts."""

    def __init__(self, every: int = 10) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.receipts = b""
        self.head = chain.GENESIS
        self.sealed_head = chain.GENESIS
        self.sealed = 0
        self.clock = 1_800_000_000
        self.every = every

    def serve(self, n: int) -> list[Checkpoint]:
        out = []
        for _ in range(n):
            r = chain.receipt(os.urandom(8), os.urandom(4))
            counter = len(self.receipts) // 32 + 1
            self.receipts += r
            self.head = chain.extend(self.head, counter, r, TOKEN)
            if counter - self.sealed == self.every:
                out.append(self.seal())
        return out

    def seal(self) -> Checkpoint:
        end = len(self.receipts) // 32
        self.clock += 60
        cp = seal(self.key, token_id=TOKEN, start=self.sealed, end=end, sealed_at=self.clock,
                  prev_head=self.sealed_head, head=self.head,
                  root=chain.interval_root(self.sealed + 1, self.receipts[self.sealed * 32:]))
        self.sealed, self.sealed_head = end, self.head
        return cp

    def restore(self, counter: int, head: bytes) -> None:
        self.receipts, self.sealed, self.head, self.sealed_head = self.receipts[:counter * 32], counter, head, head

    @property
    def pub(self):  # type: ignore[no-untyped-def]
        return self.key.public_key()


def test_an_honest_device_reconciles_clean_in_one_go_and_in_steps() -> None:
    device = Device()
    cps = device.serve(50)
    whole = reconcile(cps, device.pub, receipts=Receipts(0, device.receipts), quotas={TOKEN.hex(): 50})
    assert whole.clean and whole.usage == 50 and whole.receipts_verified == 50 and whole.last == cps[-1]
    first = reconcile(cps[:2], device.pub)
    second = reconcile(cps[2:], device.pub, last=first.last, used_before=first.per_token)
    assert first.clean and second.clean and first.usage + second.usage == 50
    assert second.per_token == {TOKEN.hex(): 50}


def test_replayed_checkpoints_count_once() -> None:
    device = Device()
    cps = device.serve(30)
    first = reconcile(cps, device.pub)
    again = reconcile([cps[-1], cps[0]], device.pub, last=first.last)
    assert again.kinds() == [REPLAYED] and len(again.anomalies) == 2 and again.usage == 0


def test_a_restored_backup_is_a_rolled_back_counter() -> None:
    device = Device()
    early = device.serve(20)
    backup = (device.sealed, device.head)
    later = device.serve(20)
    accepted = reconcile(early + later, device.pub)
    device.restore(*backup)  # the state from after 20 inferences comes back, quota "refunded"
    reused = device.serve(20)
    result = reconcile(reused, device.pub, last=accepted.last)
    assert ROLLED_BACK in result.kinds() and result.usage == 20  # re-used counters billed, not forgiven


def test_a_gap_and_a_fork_are_named() -> None:
    device = Device()
    cps = device.serve(40)
    gap = reconcile([cps[0], cps[2], cps[3]], device.pub)
    assert gap.kinds() == [GAP] and gap.usage == 40  # the withheld interval's counters still count
    other = Device()
    other.key = device.key  # same identity, another history from counter 10
    other.receipts = device.receipts[:10 * 32]
    other.sealed = 10
    other.sealed_head = other.head = os.urandom(32)
    forked = reconcile([cps[0], *other.serve(10)], device.pub)
    assert forked.kinds() == [FORK]


def test_edited_receipts_and_forged_checkpoints_are_named() -> None:
    device = Device()
    cps = device.serve(30)
    edited = bytearray(device.receipts)
    edited[15 * 32] ^= 0xFF
    result = reconcile(cps, device.pub, receipts=Receipts(0, bytes(edited)))
    assert result.kinds() == [EDITED_RECEIPT] and result.anomalies[0].start == 10
    raw = bytearray(cps[1].to_bytes())
    raw[20] ^= 1  # the counters of an interval, edited after signing
    forged = reconcile([cps[0], parse(bytes(raw)), cps[2]], device.pub)
    assert BAD_SIGNATURE in forged.kinds()
    stranger = reconcile(cps, Ed25519PrivateKey.generate().public_key())
    assert stranger.kinds() == [BAD_SIGNATURE] and stranger.usage == 0


def test_a_clock_set_back_over_quota_and_unknown_tokens_are_named() -> None:
    device = Device()
    first = device.serve(10)
    device.clock -= 3600
    later = device.serve(10)
    result = reconcile(first + later, device.pub, quotas={TOKEN.hex(): 15})
    assert result.kinds() == [CLOCK_SET_BACK, OVER_QUOTA]
    assert reconcile(first, device.pub, quotas={"00" * 16: 5}).kinds() == [UNLICENSED]


@pytest.mark.parametrize("every", [1, 7])
def test_voided_receipts_are_counted_and_reported(every: int) -> None:
    device = Device(every)
    device.receipts = chain.VOID * 7
    for c in range(1, 8):
        device.head = chain.extend(device.head, c, chain.VOID, TOKEN)
    cps = [device.seal()]
    result = reconcile(cps, device.pub, receipts=Receipts(0, device.receipts))
    assert result.clean and result.voided == 7 and result.usage == 7
