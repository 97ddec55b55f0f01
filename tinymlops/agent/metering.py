"""The device's meter: every licensed inference is counted, receipted and chained, crash-safely, on disk.

State-directory files (beside those `slots.py` lists):

    meter.json        the licence tokens (current last), the counter the current one started at, the highest
                      counter reserved on disk and the latest time seen (atomic write, fsync)
    receipts.bin      32 bytes per inference ever metered, in counter order (append-only)
    checkpoints.bin   196 bytes per sealed interval (append-only, fsync'd)

Why it survives a power cut without an fsync (or even a write) per inference: before
counter c is served, meter.json must already reserve it (up to RESERVE counters
ahead, renewed every RESERVE/2 inferences: one fsync per 128), and receipts reach the
file at each renewal.  The disk waits are kept off the inference path by one
background writer thread: the next block is reserved when half of the current one is
used (the reservation counts only once its fsync returned, so no counter is ever
served unreserved; an inference waits only if the disk is slower than half a block of
inferences), and a checkpoint is signed in line but fsync'd behind the receipts it
seals by the same writer, in order.  `close` (every command) waits for the writer.

On the next start, receipts a crash of the process or the
power lost (at most RESERVE) are filled in as VOID receipts up to the
reservation: they count as used, because the device may have served them, and the
chain is rebuilt from the last checkpoint over what is on disk, so it is never
corrupt, only padded.  A torn last record of either file is cut off; a checkpoint
is written only after the receipts it seals are fsync'd.

The install record (active.json, `slots.record_licence`) holds the licence tokens too,
so a licensed device whose meter.json is gone refuses to serve (MeterStateMissingError)
instead of serving unmetered; installing a licence again rebuilds the meter from the
files on disk (`rebuilt_state`).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.agent.slots import ACTIVE, recorded_licence
from tinymlops.errors import LicenseError, LicenseRefusedError, MeterStateMissingError, ReceiptsError
from tinymlops.licensing import chain
from tinymlops.licensing.checkpoint import CHECKPOINT_BYTES, Checkpoint, parse, parse_many, seal
from tinymlops.licensing.quota import clock_set_back, effective_now, refusal
from tinymlops.store import atomic_write

if TYPE_CHECKING:  # pyseto (the licensing extra) is imported only by a device that has a licence
    from tinymlops.licensing.token import License

METER, RECEIPTS, CHECKPOINTS = "meter.json", "receipts.bin", "checkpoints.bin"
RESERVE = 256  # counters reserved per meter.json write: what a crash can cost the licensee, at most
SEAL_EVERY = 1000  # receipts per checkpoint: 196 bytes of uplink per 1,000 inferences


def read_meter(state_dir: Path) -> dict[str, Any] | None:
    """meter.json, checked; None when no licence was ever installed (MeterStateMissingError when the install
    record says one was)."""
    path = state_dir / METER
    try:
        saved = json.loads(path.read_bytes())
    except FileNotFoundError:
        if recorded_licence(state_dir):
            raise MeterStateMissingError(
                f"{path} is missing, but this device was installed with a licence ({ACTIVE} records it): it does "
                "not serve unmetered; inferences refused until a licence is installed again "
                f"(`tinymlops agent install DIR --state-dir {state_dir} --license TOKEN`)") from None
        return None
    except ValueError as exc:
        raise ReceiptsError(f"{path}: not JSON ({exc})") from exc
    if not (isinstance(saved, dict) and isinstance(saved.get("tokens"), list) and saved["tokens"]
            and all(isinstance(saved.get(k), int | float) for k in ("token_base", "reserved", "latest_seen"))):
        raise ReceiptsError(f"{path}: not a meter state (tokens, token_base, reserved, latest_seen)")
    return saved


class Meter:
    """Counts one device's licensed inferences; `admit` before serving, `record` each, `close` when done."""

    def __init__(self, state_dir: Path, identity: Ed25519PrivateKey, license: License, saved: dict[str, Any], *,
                 now: float, reserve: int = RESERVE, seal_every: int = SEAL_EVERY) -> None:
        self.state_dir, self.identity, self.license = state_dir, identity, license
        self.tokens: list[str] = list(saved["tokens"])
        self.token_base, self.reserved = int(saved["token_base"]), int(saved["reserved"])
        self.latest_seen = max(float(saved["latest_seen"]), now)
        self.reserve, self.seal_every = reserve, seal_every
        self.problem: str | None = None  # why the licence serves nothing at all (set by `open_meter`)
        self.sealed, self.sealed_head = _last_checkpoint(state_dir / CHECKPOINTS)
        self.count, self.pending = self._recover()
        self.written = self.count  # receipts handed to the OS; the rest are in `pending` only
        self.head = chain.fold(self.sealed_head, self.sealed + 1, bytes(self.pending), license.token_id_bytes)
        self._receipts = os.open(state_dir / RECEIPTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._writer: ThreadPoolExecutor | None = None  # one thread: the disk's work, in the order it was asked
        self._reserving: Future[None] | None = None  # the next block's reservation, while its fsync runs
        self._work: list[Future[None]] = []  # what the writer was handed and nobody has waited for

    def _recover(self) -> tuple[int, bytearray]:
        path = self.state_dir / RECEIPTS
        data = path.read_bytes() if path.is_file() else b""
        whole = len(data) - len(data) % chain.RECEIPT_BYTES
        count = whole // chain.RECEIPT_BYTES
        if count < self.sealed:
            raise ReceiptsError(f"{path}: {count} receipts, but checkpoints.bin sealed {self.sealed} (receipts lost "
                                "or the files come from different states)")
        lost = max(self.reserved - count, 0)  # reserved, maybe served, receipt lost in a crash: counted
        if whole != len(data) or lost:
            with path.open("r+b" if path.exists() else "wb") as handle:
                handle.truncate(whole)
                handle.seek(whole)
                handle.write(chain.VOID * lost)
                handle.flush()
                os.fsync(handle.fileno())
            data = data[:whole] + chain.VOID * lost
            count += lost
        self.reserved = count
        return count, bytearray(data[self.sealed * chain.RECEIPT_BYTES:])

    @property
    def used(self) -> int:
        return self.count - self.token_base

    def refusal(self, wanted: int, now: float) -> str | None:
        if self.problem:
            return self.problem
        return refusal(self.license, self.used, wanted, effective_now(now, self.latest_seen))

    def admit(self, wanted: int, now: float) -> None:
        """LicenseRefusedError (with the reason) unless `wanted` more inferences may be served."""
        reason = self.refusal(wanted, now)
        if reason:
            raise LicenseRefusedError(reason)

    def record(self, input_bytes: bytes | memoryview, output_bytes: bytes | memoryview, now: float) -> None:
        """Count one served inference: its counter reserved on disk first, then receipt and chain it."""
        counter = self.count + 1
        if counter > self.reserved:  # wait for the reservation in flight; none (or too short): reserve now
            self._drain()
            if counter > self.reserved:
                self._flush()
                self.latest_seen = max(self.latest_seen, now)
                self._save(self._next_reservation(counter))
        elif (self.reserved - counter < self.reserve // 2 and self._next_reservation(counter) > self.reserved
              and (self._reserving is None or self._reserving.done())):
            if self._reserving is not None:
                self._reserving.result()  # raises what the writer raised
            self._flush()  # half the block is used: reserve the next one behind this inference's back
            self.latest_seen = max(self.latest_seen, now)
            reserved = self._next_reservation(counter)
            self._reserving = self._in_background(self._commit, self._meter_bytes(reserved), reserved)
        receipt = chain.receipt(input_bytes, output_bytes)
        self.pending += receipt
        self.head = chain.extend(self.head, counter, receipt, self.license.token_id_bytes)
        self.count = counter
        if counter - self.sealed >= self.seal_every:
            self.seal(now)

    def seal(self, now: float) -> Checkpoint | None:
        """Seal the receipts since the last checkpoint (None when there are none); on disk once `close` returns."""
        if self.count == self.sealed:
            return None
        self._flush()
        checkpoint = seal(self.identity, token_id=self.license.token_id_bytes, start=self.sealed, end=self.count,
                          sealed_at=int(effective_now(now, self.latest_seen)), prev_head=self.sealed_head,
                          head=self.head, root=chain.interval_root(self.sealed + 1, bytes(self.pending)))
        self._in_background(self._write_checkpoint, checkpoint.to_bytes())
        self.sealed, self.sealed_head, self.pending = self.count, self.head, bytearray()
        return checkpoint

    def _write_checkpoint(self, record: bytes) -> None:
        os.fsync(self._receipts)  # what a checkpoint seals is on disk before the checkpoint is
        with (self.state_dir / CHECKPOINTS).open("ab") as handle:
            handle.write(record)
            handle.flush()
            os.fsync(handle.fileno())

    def _next_reservation(self, counter: int) -> int:
        return min(counter - 1 + self.reserve, self.token_base + self.license.quota)

    def _in_background(self, work: Any, *args: Any) -> Future[None]:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meter-writer")
        future: Future[None] = self._writer.submit(work, *args)
        self._work = [f for f in self._work if not f.done() or f.exception() is not None] + [future]
        return future

    def _drain(self) -> None:
        """Wait until everything handed to the writer is on disk (raising the first thing it raised)."""
        work, self._work, self._reserving = self._work, [], None
        for future in work:
            future.result()

    def switch(self, token: str, license: License, now: float) -> None:
        """Serve under `license` from now on: the old licence's receipts are sealed first."""
        self.seal(now)
        self._drain()
        self.tokens.append(token)
        self.license, self.token_base, self.problem = license, self.count, None
        self._save(self.count)

    def close(self, now: float) -> None:
        """Everything served is on disk and the reservation ends at it (no VOID on the next start)."""
        self._flush()
        self._drain()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        os.fsync(self._receipts)
        os.close(self._receipts)
        self.latest_seen = max(self.latest_seen, now)
        self._save(self.count)

    def _flush(self) -> None:
        """Hand the receipts not yet written to the OS (one write per reservation block, not per inference)."""
        unwritten = self.count - self.written
        if unwritten:
            os.write(self._receipts, self.pending[len(self.pending) - unwritten * chain.RECEIPT_BYTES:])
            self.written = self.count

    def _save(self, reserved: int) -> None:
        self._commit(self._meter_bytes(reserved), reserved)

    def _meter_bytes(self, reserved: int) -> bytes:
        return json.dumps({"tokens": self.tokens, "token_base": self.token_base, "reserved": reserved,
                           "latest_seen": self.latest_seen}).encode()

    def _commit(self, data: bytes, reserved: int) -> None:
        """Write meter.json; its reservation counts (`self.reserved`) only once it is on disk."""
        atomic_write(self.state_dir / METER, data)
        self.reserved = reserved

    def status(self, now: float) -> dict[str, Any]:
        lic = self.license
        return {"licensee": lic.licensee, "token_id": lic.token_id, "epoch": lic.epoch, "models": list(lic.models),
                "quota": lic.quota, "used": self.used, "remaining": max(lic.quota - self.used, 0),
                "not_before": lic.claims()["nbf"], "expires": lic.claims()["exp"], "counter": self.count,
                "sealed": self.sealed, "pending": self.count - self.sealed, "refusal": self.refusal(1, now),
                "clock_set_back_seconds": clock_set_back(now, self.latest_seen)}


def rebuilt_state(state_dir: Path, tokens: list[str], current: License, now: float) -> dict[str, Any]:
    """meter.json as far as the files on disk tell, for a licensed device that lost it (`tokens`: the install
    record's; `current`: the last of them, read).

    Where the current licence's counters start is where its first checkpoint starts, or else where the last
    checkpoint ends (a licence change seals first).  How many counters were reserved is unknown, so a whole
    block beyond the receipts on disk counts as possibly served (VOID), as after a crash; the latest time seen
    is at least the last checkpoint's."""
    path = state_dir / CHECKPOINTS
    data = path.read_bytes() if path.is_file() else b""
    records = parse_many(data[:len(data) - len(data) % CHECKPOINT_BYTES], where=str(path))  # a torn tail: cut
    ours = [c.start for c in records if c.token_id == current.token_id_bytes]
    base = ours[0] if ours else (records[-1].end if records else 0)
    receipts = state_dir / RECEIPTS
    on_disk = (receipts.stat().st_size if receipts.is_file() else 0) // chain.RECEIPT_BYTES
    latest = max([now, *(float(c.sealed_at) for c in records)])
    return {"tokens": tokens, "token_base": base, "latest_seen": latest,
            "reserved": max(min(on_disk + RESERVE, base + current.quota), on_disk)}


def _last_checkpoint(path: Path) -> tuple[int, bytes]:
    """(end, head) of the last whole checkpoint in `path`, cutting off a torn last record."""
    data = path.read_bytes() if path.is_file() else b""
    whole = len(data) - len(data) % CHECKPOINT_BYTES
    if whole != len(data):
        with path.open("r+b") as handle:
            handle.truncate(whole)
            os.fsync(handle.fileno())
    if not whole:
        return 0, chain.GENESIS
    last = parse(data[whole - CHECKPOINT_BYTES:whole], where=f"{path}: last checkpoint")
    return last.end, last.head


def verified(token: str, publisher: Ed25519PublicKey, identity: Ed25519PrivateKey, menu_sha256: str | None,
             now: float) -> License:
    """The licence `token` holds for this device and menu at `now` (LicenseError naming what does not)."""
    from tinymlops.licensing.token import verify_license

    if menu_sha256 is None:
        raise LicenseError("no variant installed, so no menu a licence could be bound to; install one first")
    return verify_license(token, publisher, device=identity.public_key(), model=menu_sha256, now=now)
