"""The device's identity on the uplink: it numbers its reports and signs them with its Ed25519 key.

The gateway refuses a report whose sequence number is not above the last one it
accepted from the device (a replay), so a number must never be used twice, even
across a crash or a reboot.  `SequenceFile` keeps that promise without a disk
write per report: it reserves a block of numbers on disk (atomic write, fsync)
before handing out the first of them, and a restart continues above the
reservation.  A crash loses at most the rest of a block, which only leaves a gap,
and gaps are harmless: the gateway asks for "higher", not "next".  The simulator's
devices, which never restart, count in memory (`MemorySequence`).

Reports are signed when they leave the outbox, not when they are made: the outbox
merges reports of an unchanged state (`ReportBuffer.add`), and what is signed must
be what is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.errors import IntegrityError
from tinymlops.report import MAX_SEQ, Report, SignedReport, sign_report
from tinymlops.store import atomic_write

SEQUENCE_FILE = "report-seq"  # in the agent's state directory, beside active.json
RESERVE = 1024  # numbers reserved per disk write: a report every 10 s writes about once every 3 hours


class Sequence(Protocol):
    def next(self) -> int:
        """A number above every number handed out before."""
        ...


class MemorySequence:
    """Counts from 1 in memory: for devices whose state ends with the process (the simulator, tests)."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


class SequenceFile:
    """Sequence numbers that survive restarts: the file holds the highest number reserved so far."""

    def __init__(self, path: Path, *, reserve: int = RESERVE) -> None:
        if reserve < 1:
            raise ValueError(f"reserve must be >= 1, got {reserve}")
        self.path = path
        self.reserve = reserve
        self._last: int | None = None  # the last number handed out; None: the file is not read yet
        self._reserved = 0

    def next(self) -> int:
        if self._last is None:
            self._last = self._reserved = self._read()
        if self._last >= self._reserved:
            # On disk before it is used: a crash after this line restarts above every number handed out.
            self._reserved = min(self._last + self.reserve, MAX_SEQ)
            if self._reserved == self._last:
                raise IntegrityError(f"{self.path}: report sequence numbers are exhausted")
            atomic_write(self.path, f"{self._reserved}\n".encode())
        self._last += 1
        return self._last

    def _read(self) -> int:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            value = int(text.strip())
        except ValueError as exc:
            raise IntegrityError(f"{self.path}: not a report sequence number ({text[:40]!r})") from exc
        if not 0 <= value <= MAX_SEQ:
            raise IntegrityError(f"{self.path}: report sequence number {value} out of 0..{MAX_SEQ}")
        return value


class ReportSigner:
    """Numbers and signs one device's reports with its identity key."""

    def __init__(self, key: Ed25519PrivateKey, sequence: Sequence) -> None:
        self.key = key
        self.sequence = sequence

    def sign(self, report: Report) -> SignedReport:
        return sign_report(report, self.key, self.sequence.next())
