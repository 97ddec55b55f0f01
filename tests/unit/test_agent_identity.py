"""The agent's report identity (agent/identity.py): sequence numbers never reused, reports signed as sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.agent.identity import SEQUENCE_FILE, MemorySequence, ReportSigner, SequenceFile
from tinymlops.errors import IntegrityError
from tinymlops.report import Report


def test_memory_sequence_counts_from_one() -> None:
    sequence = MemorySequence()
    assert [sequence.next() for _ in range(3)] == [1, 2, 3]


def test_a_sequence_file_reserves_before_handing_out_and_a_restart_continues_above(tmp_path: Path) -> None:
    path = tmp_path / SEQUENCE_FILE
    first = SequenceFile(path, reserve=4)
    assert [first.next() for _ in range(3)] == [1, 2, 3]
    assert path.read_text() == "4\n"  # on disk before 1 was used
    assert [first.next() for _ in range(2)] == [4, 5] and path.read_text() == "8\n"
    # A crash here (5 used, 8 reserved): the next process starts above the reservation, never at 6.
    restarted = SequenceFile(path, reserve=4)
    assert restarted.next() == 9 and path.read_text() == "12\n"


def test_a_sequence_file_writes_once_per_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    monkeypatch.setattr("tinymlops.agent.identity.atomic_write", lambda path, data: writes.append(data))
    sequence = SequenceFile(tmp_path / SEQUENCE_FILE, reserve=100)
    numbers = [sequence.next() for _ in range(250)]
    assert numbers == list(range(1, 251)) and writes == [b"100\n", b"200\n", b"300\n"]


@pytest.mark.parametrize("text", ["seven", "-1", ""])
def test_a_damaged_sequence_file_is_refused_not_restarted_from_zero(tmp_path: Path, text: str) -> None:
    path = tmp_path / SEQUENCE_FILE
    path.write_text(text)
    with pytest.raises(IntegrityError, match=SEQUENCE_FILE):
        SequenceFile(path).next()


def test_the_signer_numbers_each_report_and_signs_its_exact_bytes() -> None:
    key = Ed25519PrivateKey.generate()
    signer = ReportSigner(key, MemorySequence())
    report = Report(device="d", namespace="edge", fleet="cams", device_class="rpi4", arch="aarch64",
                    phase="Running", menu_version=1, sent_at=5.0)
    first, second = signer.sign(report), signer.sign(report)
    for signed in (first, second):
        signed.verify(key.public_key())
    assert (first.open().seq, second.open().seq) == (1, 2)
