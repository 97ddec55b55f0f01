"""Signed reports (tinymlops/report.py): the exact bytes a device signs, and an envelope a relay cannot alter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.errors import InvalidReportError, SignatureError
from tinymlops.report import MAX_SEQ, Report, SignedReport, canonical_json, sign_report

KEY = Ed25519PrivateKey.generate()


def report(**overrides: Any) -> Report:
    fields: dict[str, Any] = {
        "device": "dev-1", "namespace": "edge", "fleet": "cams", "device_class": "rpi4", "arch": "aarch64",
        "phase": "Running", "menu_version": 2, "sent_at": 1000.25, "variant": "int8", "reason": "kept int8 é",
        "latencies_ms": (1.5, 2.0), "inferences": 2,
    }
    fields.update(overrides)
    return Report(**fields)


def test_canonical_json_is_sorted_compact_ascii_and_reads_back() -> None:
    payload = canonical_json(report(seq=3))
    text = payload.decode("ascii")
    assert " " not in text.replace("kept int8 ", "") and "\\u00e9" in text
    raw = json.loads(payload)
    assert list(raw) == sorted(raw) and Report.from_json(raw) == report(seq=3)


def test_a_signed_report_carries_its_seq_and_verifies_after_a_json_round_trip() -> None:
    signed = sign_report(report(), KEY, 7)
    # What a relay does: decode the batch and encode it again, in its own style.
    relayed = json.loads(json.dumps({"reports": [signed.to_json()]}, indent=2, ensure_ascii=False))["reports"][0]
    received = SignedReport.from_json(relayed)
    received.verify(KEY.public_key())
    assert received == signed and received.open() == report(seq=7)


def test_a_changed_byte_or_another_key_fails_verification() -> None:
    signed = sign_report(report(), KEY, 1)
    tampered = SignedReport(signed.payload.replace(b'"inferences":2', b'"inferences":9'), signed.signature)
    assert tampered.payload != signed.payload
    with pytest.raises(SignatureError, match="does not match"):
        tampered.verify(KEY.public_key())
    with pytest.raises(SignatureError, match="does not match"):
        signed.verify(Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize("seq", [0, -1, MAX_SEQ + 1])
def test_seq_must_be_in_range_to_sign(seq: int) -> None:
    with pytest.raises(ValueError, match="seq must be in"):
        sign_report(report(), KEY, seq)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("nope", r"^reports\[0\]: is not a JSON object"),
        ({"signature": "c2ln"}, r"^reports\[0\]\.report: must be the signed report's JSON text"),
        ({"report": {"device": "d"}, "signature": "c2ln"}, r"^reports\[0\]\.report: must be the signed"),
        ({"report": "{}", "signature": 5}, r"^reports\[0\]\.signature: must be a base64"),
        ({"report": "{\"device\": \"d\u00e9\"}", "signature": "c2ln"}, r"^reports\[0\]\.report: is not ASCII"),
    ],
)
def test_a_malformed_envelope_is_refused_naming_the_part(raw: Any, error: str) -> None:
    with pytest.raises(InvalidReportError, match=error):
        SignedReport.from_json(raw, where="reports[0]")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"{not json", r"^r\.report: not valid JSON"),
        (b'{"phase": "Running"}', r"^r\.sent_at: is required"),
        (canonical_json(report()).replace(b'"seq":0', b'"seq":-4'), r"^r\.seq: -4 is not an integer"),
    ],
)
def test_opening_validates_the_report_inside(payload: bytes, error: str) -> None:
    with pytest.raises(InvalidReportError, match=error):
        SignedReport(payload, "c2ln").open(where="r")


def test_envelopes_and_plain_reports_are_told_apart() -> None:
    assert SignedReport.is_envelope(sign_report(report(), KEY, 1).to_json())
    assert not SignedReport.is_envelope(report().to_json())
    assert not SignedReport.is_envelope(["report"])
