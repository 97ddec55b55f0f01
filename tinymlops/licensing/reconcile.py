"""Reconciling a device's checkpoints (and receipts, when exported) against the last one accepted (pure).

Every checkpoint is first checked for the device's identity signature, then placed
against the last checkpoint accepted from the device:

- `replayed-checkpoint`: one already accepted, sent again (the same bytes, or an
  interval wholly before the last accepted one and sealed before it): counted once;
- `rolled-back-counter`: it starts below the last accepted end, sealed later: the
  device went back to an older state (a restored backup) and re-used counters;
- `gap`: it starts above the last accepted end: intervals are missing;
- `fork`: it starts where the last ended but extends another chain head;
- `clock-set-back`: sealed before the checkpoint it follows;
- `bad-signature`: not signed by the device's identity key (forged or edited);
- `edited-receipt`: the exported receipts of its interval do not give its head and root;
- `over-quota`: a licence's counted usage exceeds its quota;
- `unlicensed`: its token id is none of the licences known for the device.

Usage is what the device's counters consumed: every counter of a non-replayed,
signed checkpoint (a gap's counters too: the device spent them), so re-used
counters of a rollback are billed again and a replay never is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tinymlops.licensing.chain import RECEIPT_BYTES, VOID, fold, interval_root, split
from tinymlops.licensing.checkpoint import Checkpoint, signature_holds

BAD_SIGNATURE, REPLAYED, ROLLED_BACK, GAP, FORK = (
    "bad-signature", "replayed-checkpoint", "rolled-back-counter", "gap", "fork")
CLOCK_SET_BACK, EDITED_RECEIPT, OVER_QUOTA, UNLICENSED = (
    "clock-set-back", "edited-receipt", "over-quota", "unlicensed")
ANOMALIES = (BAD_SIGNATURE, REPLAYED, ROLLED_BACK, GAP, FORK, CLOCK_SET_BACK, EDITED_RECEIPT, OVER_QUOTA, UNLICENSED)


@dataclass(frozen=True)
class Anomaly:
    kind: str  # one of ANOMALIES
    start: int  # the interval it concerns
    end: int
    message: str
    token: str = ""  # the token id (hex) of the checkpoint it concerns
    sealed_at: int = 0  # when that checkpoint says it was sealed

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "token": self.token,
                "sealed_at": self.sealed_at, "message": self.message}


@dataclass(frozen=True)
class Receipts:
    """Exported receipts: those numbered first+1 .. first+len(data)/32."""

    first: int
    data: bytes

    def covers(self, start: int, end: int) -> bool:
        return self.first <= start and end <= self.first + len(self.data) // RECEIPT_BYTES

    def between(self, start: int, end: int) -> bytes:
        return self.data[(start - self.first) * RECEIPT_BYTES:(end - self.first) * RECEIPT_BYTES]


@dataclass
class Reconciliation:
    usage: int = 0  # counters consumed by the accepted checkpoints (and gaps)
    accepted: list[Checkpoint] = field(default_factory=list)
    counted: list[int] = field(default_factory=list)  # counters each accepted checkpoint consumed (a gap's too)
    anomalies: list[Anomaly] = field(default_factory=list)
    last: Checkpoint | None = None  # the last accepted: what the next reconcile starts from
    per_token: dict[str, int] = field(default_factory=dict)  # token id hex -> counters used under it
    voided: int = 0  # receipts lost to a crash (counted as used), among the verified receipts
    receipts_verified: int = 0

    @property
    def clean(self) -> bool:
        return not self.anomalies

    def kinds(self) -> list[str]:
        return sorted({a.kind for a in self.anomalies})

    def flag(self, kind: str, checkpoint: Checkpoint, message: str) -> None:
        self.anomalies.append(Anomaly(kind, checkpoint.start, checkpoint.end, f"{checkpoint.describe()}: {message}",
                                      checkpoint.token_id.hex(), checkpoint.sealed_at))


def reconcile(checkpoints: list[Checkpoint], device: Ed25519PublicKey, *, last: Checkpoint | None = None,
              receipts: Receipts | None = None, quotas: Mapping[str, int] | None = None,
              used_before: Mapping[str, int] | None = None) -> Reconciliation:
    """Place each checkpoint after `last` (the last accepted, None for a device's first reconcile).

    `quotas`: token id hex -> quota, for the licences known for the device (None: not checked);
    `used_before`: counters already counted per token by earlier reconciles."""
    result = Reconciliation(last=last, per_token=dict(used_before or {}))
    accepted_digests = {last.digest()} if last is not None else set()
    for checkpoint in checkpoints:
        if not signature_holds(checkpoint, device):
            result.flag(BAD_SIGNATURE, checkpoint, "not signed by the device's identity key (forged or edited)")
            continue
        digest = checkpoint.digest()
        if digest in accepted_digests:
            result.flag(REPLAYED, checkpoint, "already accepted; counted once")
            continue
        consumed = _place(result, checkpoint)
        if consumed is None:
            continue
        if receipts is not None and receipts.covers(checkpoint.start, checkpoint.end):
            _check_receipts(result, checkpoint, receipts.between(checkpoint.start, checkpoint.end))
        token = checkpoint.token_id.hex()
        if quotas is not None and token not in quotas:
            result.flag(UNLICENSED, checkpoint, f"token {token[:8]} is none of the device's licences")
        result.usage += consumed
        result.per_token[token] = result.per_token.get(token, 0) + checkpoint.count
        result.accepted.append(checkpoint)
        result.counted.append(consumed)
        accepted_digests.add(digest)
        result.last = checkpoint
    for token, used in sorted(result.per_token.items()):
        quota = (quotas or {}).get(token)
        of_token = [c for c in result.accepted if c.token_id.hex() == token]
        if quota is not None and used > quota and of_token:  # flagged once, when this batch adds to it
            result.flag(OVER_QUOTA, of_token[-1], f"token {token[:8]}: {used:,} inferences counted, the licence "
                                                  f"allows {quota:,}")
    return result


def after(checkpoints: list[Checkpoint], last: Checkpoint | None) -> list[Checkpoint]:
    """What of a device's full export is new since `last`: the checkpoints after it when the export holds it,
    else all but those wholly before its interval (history already counted).  An uplink sends only new ones
    and is reconciled whole, so a re-sent old one there is a replay."""
    if last is None:
        return list(checkpoints)
    digests = [c.digest() for c in checkpoints]
    if last.digest() in digests:
        return list(checkpoints[digests.index(last.digest()) + 1:])
    return [c for c in checkpoints if c.end > last.start]


def _place(result: Reconciliation, checkpoint: Checkpoint) -> int | None:
    """Flag how `checkpoint` follows the last accepted one; the counters it consumes, None when not counted."""
    last = result.last
    if last is None:
        return checkpoint.count
    if checkpoint.end <= last.start and checkpoint.sealed_at < last.sealed_at:
        result.flag(REPLAYED, checkpoint, f"an interval before the last accepted ({last.describe()}), sealed "
                                          "before it, sent again; counted once")
        return None
    if checkpoint.sealed_at < last.sealed_at:
        result.flag(CLOCK_SET_BACK, checkpoint, f"sealed at {checkpoint.sealed_at}, before the checkpoint it "
                                                f"follows ({last.sealed_at})")
    if checkpoint.start < last.end:
        result.flag(ROLLED_BACK, checkpoint, f"starts at counter {checkpoint.start}, below the {last.end} already "
                                             "accepted: state restored from an older copy, counters re-used")
        return checkpoint.count
    if checkpoint.start > last.end:
        result.flag(GAP, checkpoint, f"counters {last.end + 1}..{checkpoint.start} were never sealed or are "
                                     "withheld (counted as used)")
        return checkpoint.end - last.end
    if checkpoint.prev_head != last.head:
        result.flag(FORK, checkpoint, f"extends chain head {checkpoint.prev_head.hex()[:12]}…, but the last "
                                      f"accepted ended at {last.head.hex()[:12]}…")
    return checkpoint.count


def _check_receipts(result: Reconciliation, checkpoint: Checkpoint, receipts: bytes) -> None:
    head = fold(checkpoint.prev_head, checkpoint.start + 1, receipts, checkpoint.token_id)
    root = interval_root(checkpoint.start + 1, receipts)
    if head != checkpoint.head or root != checkpoint.root:
        result.flag(EDITED_RECEIPT, checkpoint, "its receipts do not give its signed chain head and Merkle root "
                                                "(a receipt was edited, dropped or reordered)")
        return
    result.receipts_verified += checkpoint.count
    result.voided += sum(1 for r in split(receipts) if r == VOID)
