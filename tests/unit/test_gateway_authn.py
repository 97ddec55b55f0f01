"""Authenticated reports at the gateway (gateway/authn.py, ratelimit.py): who is believed, and why not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.commands.gateway import gateway
from tinymlops.errors import ConfigError
from tinymlops.gateway.app import create_app
from tinymlops.gateway.authn import (
    BAD_SIGNATURE,
    MALFORMED,
    RATE_LIMITED,
    REPLAY,
    UNKNOWN_DEVICE,
    Refusal,
    ReportGuard,
    authenticate,
    parse_registry,
)
from tinymlops.gateway.ratelimit import RateLimiter
from tinymlops.gateway.reports import Rejection, parse_batch
from tinymlops.report import Report, SignedReport, canonical_json, sign_report
from tinymlops.signing import public_key_pem
from tinymlops.store import DirectoryStore

KEY, OTHER = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
REGISTRY = {("edge", "dev-1"): KEY.public_key(), ("edge", "dev-2"): OTHER.public_key()}


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def report(device: str = "dev-1", **overrides: Any) -> Report:
    fields: dict[str, Any] = {
        "device": device, "namespace": "edge", "fleet": "cams", "device_class": "rpi4", "arch": "aarch64",
        "phase": "Running", "menu_version": 2, "sent_at": 1000.0, "inferences": 3,
    }
    fields.update(overrides)
    return Report(**fields)


def signed(seq: int, key: Ed25519PrivateKey = KEY, **overrides: Any) -> dict[str, str]:
    return sign_report(report(**overrides), key, seq).to_json()


def check(raw: Any, last_seq: dict[tuple[str, str], int] | None = None) -> Report | Refusal:
    return authenticate(raw, REGISTRY, last_seq or {}, where="reports[0]")


def test_a_registered_device_signing_a_new_seq_is_believed() -> None:
    verdict = check(signed(5), {("edge", "dev-1"): 4})
    assert verdict == report(seq=5)


def test_a_report_signed_by_another_key_is_a_forgery() -> None:
    verdict = check(signed(1, key=OTHER))  # dev-2's key, claiming to be dev-1
    assert isinstance(verdict, Refusal) and verdict.reason == BAD_SIGNATURE
    assert verdict.error == "reports[0] from edge/dev-1: signature does not match (edited, or signed by another key)"


def test_one_changed_byte_breaks_the_signature() -> None:
    envelope = signed(1)
    envelope["report"] = envelope["report"].replace('"inferences":3', '"inferences":4')
    verdict = check(envelope)
    assert isinstance(verdict, Refusal) and verdict.reason == BAD_SIGNATURE


@pytest.mark.parametrize("signature", ["not base64!", ""])
def test_a_garbled_signature_is_a_bad_signature(signature: str) -> None:
    verdict = check({**signed(1), "signature": signature})
    assert isinstance(verdict, Refusal) and verdict.reason == BAD_SIGNATURE


def test_an_unsigned_report_is_a_bad_signature_once_the_gateway_has_a_registry() -> None:
    verdict = check(report().to_json())
    assert verdict == Refusal(BAD_SIGNATURE, "reports[0]: unsigned; this gateway takes signed reports only "
                                             "(from edge/dev-1)", ("edge", "dev-1"), "cams")
    assert check({"phase": "Running"}) == Refusal(
        BAD_SIGNATURE, "reports[0]: unsigned; this gateway takes signed reports only")


def test_a_device_not_in_the_registry_is_unknown_even_with_a_valid_signature() -> None:
    stranger = Ed25519PrivateKey.generate()
    verdict = check(signed(1, key=stranger, device="dev-9"))
    assert verdict == Refusal(UNKNOWN_DEVICE, "reports[0]: device edge/dev-9 has no registered identity key",
                              ("edge", "dev-9"), "cams")
    # The same name in another namespace is another device.
    moved = check(signed(1, namespace="lab"))
    assert isinstance(moved, Refusal) and moved.reason == UNKNOWN_DEVICE


@pytest.mark.parametrize("seq", [4, 3])
def test_a_seq_at_or_below_the_last_accepted_is_a_replay(seq: int) -> None:
    verdict = check(signed(seq), {("edge", "dev-1"): 4})
    assert isinstance(verdict, Refusal) and verdict.reason == REPLAY
    assert verdict.error.startswith(f"reports[0].seq: {seq} is not above 4, the last accepted from edge/dev-1")


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        {"report": 5, "signature": "c2ln"},
        {"report": "{oops", "signature": "c2ln"},
        {"report": canonical_json(report(phase="Runing")).decode(), "signature": "c2ln"},
    ],
)
def test_malformed_envelopes_and_reports_are_malformed(raw: Any) -> None:
    verdict = check(raw)
    assert isinstance(verdict, Refusal) and verdict.reason == MALFORMED


def test_a_signed_report_without_a_seq_is_malformed() -> None:
    payload = canonical_json(report())  # seq 0: what an agent would never sign
    envelope = SignedReport(payload, sign_report(report(), KEY, 1).signature).to_json()
    assert check(envelope) == Refusal(MALFORMED, "reports[0].seq: a signed report needs a sequence number >= 1")


def test_the_guard_remembers_seq_so_a_resent_report_and_a_reordered_one_are_replays() -> None:
    guard = ReportGuard(REGISTRY)
    first, second, third = signed(1), signed(2), signed(3)
    assert guard.admit(first, where="r") == report(seq=1)
    # An edge node relays 3 before 2 (store and forward, reordered): 3 is taken, 2 is then a replay.
    assert guard.admit(third, where="r") == report(seq=3)
    late = guard.admit(second, where="r")
    assert isinstance(late, Refusal) and late.reason == REPLAY
    again = guard.admit(first, where="r")
    assert isinstance(again, Refusal) and again.reason == REPLAY
    assert guard.last_seq == {("edge", "dev-1"): 3}
    # Sequences are per device: dev-2 starts from its own zero.
    assert guard.admit(signed(1, key=OTHER, device="dev-2"), where="r") == report("dev-2", seq=1)


def test_refused_reports_leave_no_trace_in_the_guard() -> None:
    guard = ReportGuard(REGISTRY)
    for raw in (signed(9, key=OTHER), signed(9, device="dev-9"), "nope"):
        assert isinstance(guard.admit(raw, where="r"), Refusal)
    assert guard.last_seq == {}


def test_the_rate_limit_is_per_device_and_refills_with_the_clock() -> None:
    clock = Clock()
    guard = ReportGuard(REGISTRY, limiter=RateLimiter(rate=0.5, burst=2, clock=clock))
    assert all(isinstance(guard.admit(signed(seq), where="r"), Report) for seq in (1, 2))
    limited = guard.admit(signed(3), where="r")
    assert limited == Refusal(RATE_LIMITED, "r: device edge/dev-1 sends more than 0.5 reports per second (burst 2)",
                              ("edge", "dev-1"), "cams")
    assert guard.last_seq[("edge", "dev-1")] == 2  # not accepted, so not remembered
    assert isinstance(guard.admit(signed(1, key=OTHER, device="dev-2"), where="r"), Report)  # a neighbour is not held
    clock.now += 2.0  # one token back
    assert guard.admit(signed(3), where="r") == report(seq=3)
    assert isinstance(guard.admit(signed(4), where="r"), Refusal)


def test_a_bucket_refills_up_to_its_burst_and_a_clock_stepping_back_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=3, clock=clock)
    assert [limiter.allow("d") for _ in range(4)] == [True, True, True, False]
    clock.now += 3600
    assert [limiter.allow("d") for _ in range(4)] == [True, True, True, False]
    clock.now -= 50
    assert not limiter.allow("d")
    clock.now += 51  # one second after the newest time seen
    assert limiter.allow("d") and not limiter.allow("d")


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 5.0), (1.0, 0.5)])
def test_a_rate_limit_needs_a_rate_and_a_burst(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        RateLimiter(rate=rate, burst=burst)


def test_a_batch_is_split_by_the_guard_each_rejection_with_its_reason() -> None:
    body = json.loads(json.dumps({"reports": [signed(1), signed(1), report().to_json(), signed(2, key=OTHER)]}))
    accepted, rejected = parse_batch(body, guard=ReportGuard(REGISTRY))
    assert accepted == [report(seq=1)]
    assert [(r.index, r.reason) for r in rejected] == [(1, REPLAY), (2, BAD_SIGNATURE), (3, BAD_SIGNATURE)]


def test_without_a_guard_signed_and_plain_reports_are_both_taken_unchecked() -> None:
    forged = signed(3, key=OTHER)
    accepted, rejected = parse_batch({"reports": [forged, report().to_json(), {"report": "{", "signature": ""}]})
    assert accepted == [report(seq=3), report()]
    assert [(r.index, r.reason) for r in rejected] == [(2, MALFORMED)]
    assert rejected[0] == Rejection(index=2, error=rejected[0].error, reason=MALFORMED)


async def test_the_gateway_with_a_registry_takes_only_authentic_reports_and_counts_the_rest(tmp_path: Path) -> None:
    guard = ReportGuard(REGISTRY)
    app = create_app(DirectoryStore(tmp_path / "store"), clock=Clock(), guard=guard)
    async with TestClient(TestServer(app)) as client:
        batch = [signed(1), signed(1), signed(2, key=OTHER), signed(1, device="dev-9"), {"report": 1},
                 signed(2, sent_at=1010.0)]
        response = await client.post("/v1/reports", json={"reports": batch})
        assert response.status == 200
        body = await response.json()
        assert body["accepted"] == 2 and [r["index"] for r in body["rejected"]] == [1, 2, 3, 4]
        summary = await (await client.get("/v1/fleets/edge/cams/summary")).json()
        assert summary["devices_reporting"] == 1  # refused reports reach neither the fleet state nor the device metrics
        text = await (await client.get("/metrics")).text()
    assert 'tinymlops_gateway_reports_total{result="accepted"} 2.0' in text
    assert 'tinymlops_gateway_reports_total{result="rejected"} 4.0' in text
    for reason, count in ((REPLAY, 1), (BAD_SIGNATURE, 1), (UNKNOWN_DEVICE, 1), (MALFORMED, 1), (RATE_LIMITED, 0)):
        assert f'tinymlops_gateway_reports_rejected_total{{reason="{reason}"}} {count}.0' in text
    assert 'tinymlops_device_inferences_total{device_class="rpi4",fleet="cams",namespace="edge",revision="0",' \
           'variant="none"} 6.0' in text


def registry_json(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"devices": list(entries)}).encode()


def entry(name: str, key: Ed25519PrivateKey, namespace: str = "edge") -> dict[str, Any]:
    return {"namespace": namespace, "name": name, "public_key": public_key_pem(key.public_key()).decode()}


def test_the_registry_file_names_each_device_and_its_identity_key() -> None:
    registry = parse_registry(registry_json(entry("dev-1", KEY), entry("dev-1", OTHER, namespace="lab")))
    assert registry == {("edge", "dev-1"): KEY.public_key(), ("lab", "dev-1"): OTHER.public_key()}
    assert parse_registry(registry_json()) == {}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"{", r"^reg\.json: not JSON"),
        (b'{"devices": {}}', r"^reg\.json: must be an object with a 'devices' list"),
        (registry_json({"name": "d", "public_key": "x"}), r"devices\[0\]: needs a namespace and a name"),
        (registry_json({"namespace": "edge", "name": "d"}), r"devices\[0\]\.public_key: must be the device's"),
        (registry_json({"namespace": "edge", "name": "d", "public_key": "nope"}), r"not a PEM public key"),
        (registry_json(entry("d", KEY), entry("d", OTHER)), r"devices\[1\]: edge/d is listed twice"),
    ],
)
def test_a_bad_registry_is_refused_naming_the_entry(data: bytes, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_registry(data, source="reg.json")


def test_gateway_run_refuses_a_bad_registry_before_serving(tmp_path: Path) -> None:
    bad = tmp_path / "registry.json"
    bad.write_bytes(registry_json({"namespace": "edge"}))
    result = CliRunner().invoke(gateway, ["run", "--store", str(tmp_path / "s"), "--registry", str(bad)])
    assert result.exit_code == 2 and "needs a namespace and a name" in result.output
