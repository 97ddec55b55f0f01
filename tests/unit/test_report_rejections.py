"""Refused reports reach the operator: the gateway's fleet summary names the devices that keep failing
(gateway/rejections.py) and the fleet gets a ReportsRejected Event (operator logic/rejections.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.gateway.app import create_app
from tinymlops.gateway.authn import ReportGuard
from tinymlops.gateway.rejections import RejectionLog
from tinymlops.gateway.reports import Rejection
from tinymlops.report import Report, sign_report
from tinymlops.store import DirectoryStore
from tinymlops_operator.logic.rejections import REPEAT_S, THRESHOLD, Announced, rejection_event

KEY, FORGER = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def report(device: str = "cam-1", fleet: str = "cams") -> Report:
    return Report(device=device, namespace="edge", fleet=fleet, device_class="rpi4", arch="aarch64",
                  phase="Running", menu_version=1, sent_at=1.0)


def refused(device: str, reason: str = "bad-signature", fleet: str = "cams") -> Rejection:
    return Rejection(index=0, error=f"{reason} from {device}", reason=reason, device=("edge", device), fleet=fleet)


def test_the_log_counts_by_reason_and_names_the_devices_with_the_most_first() -> None:
    log = RejectionLog(clock=lambda: 5.0, max_devices=2)
    for rejection in (refused("a"), refused("b", "replay"), refused("b"), refused("c"), refused("x", fleet="other")):
        log.record(rejection, attributable=True)
    log.record(refused("stranger", "unknown-device"), attributable=False)
    summary = log.for_fleet("edge", "cams")
    assert summary["total"] == 4 and summary["by_reason"] == {"bad-signature": 3, "replay": 1}
    # At most two devices kept: the least recently refused ("a") went first.
    assert [(d["device"], d["count"]) for d in summary["devices"]] == [("b", 2), ("c", 1)]
    assert summary["devices"][0]["by_reason"] == {"bad-signature": 1, "replay": 1}
    assert log.for_fleet("edge", "nobody") == {"total": 0, "by_reason": {}, "devices": []}


async def test_the_fleet_summary_carries_refusals_of_registered_devices_only(tmp_path: Path) -> None:
    guard = ReportGuard({("edge", "cam-1"): KEY.public_key()})
    async with TestClient(TestServer(create_app(DirectoryStore(tmp_path), guard=guard))) as client:
        good = sign_report(report(), KEY, 1).to_json()
        batch = [good, good, sign_report(report(), FORGER, 2).to_json(),
                 sign_report(report("ghost", fleet="ghosts"), FORGER, 1).to_json()]
        answer = await (await client.post("/v1/reports", json={"reports": batch})).json()
        assert answer["accepted"] == 1 and len(answer["rejected"]) == 3
        summary = await (await client.get("/v1/fleets/edge/cams/summary")).json()
        assert summary["rejected"]["by_reason"] == {"bad-signature": 1, "replay": 1}
        assert [d["device"] for d in summary["rejected"]["devices"]] == ["cam-1"]
        # A device nobody registered, claiming a fleet nobody knows, is counted by the metric alone.
        ghosts = await (await client.get("/v1/fleets/edge/ghosts/summary")).json()
        assert ghosts["rejected"]["total"] == 0
        metrics = await (await client.get("/metrics")).text()
        assert 'tinymlops_gateway_reports_rejected_total{reason="unknown-device"} 1.0' in metrics
        assert "cam-1" not in metrics  # no device id in any label


def summary(*devices: tuple[str, int]) -> dict[str, Any]:
    return {"devices": [{"device": name, "count": count, "by_reason": {"bad-signature": count},
                         "last_error": "signature does not match"} for name, count in devices]}


def test_a_device_that_keeps_failing_is_named_once_and_again_only_later_if_it_goes_on() -> None:
    quiet, announced = rejection_event(summary(("cam-1", THRESHOLD - 1)), {}, now=0.0)
    assert quiet is None and announced == {}
    event, announced = rejection_event(summary(("cam-1", THRESHOLD)), announced, now=1.0)
    assert event is not None and event.type == "Warning" and event.reason == "ReportsRejected"
    assert "cam-1 (bad-signature x3; last: signature does not match)" in event.message
    assert rejection_event(summary(("cam-1", THRESHOLD + 5)), announced, now=2.0)[0] is None  # too soon
    assert rejection_event(summary(("cam-1", THRESHOLD)), announced, now=1.0 + REPEAT_S)[0] is None  # stopped
    again, _ = rejection_event(summary(("cam-1", THRESHOLD + 5)), announced, now=1.0 + REPEAT_S)
    assert again is not None


def test_nothing_refused_posts_nothing_and_many_devices_share_one_event() -> None:
    assert rejection_event(None, {}, now=0.0) == (None, {})
    assert rejection_event({"total": 0, "by_reason": {}, "devices": []}, {}, now=0.0) == (None, {})
    many = summary(*((f"cam-{i}", 10) for i in range(8)))
    event, announced = rejection_event(many, {}, now=0.0)
    assert event is not None and event.message.startswith("8 device(s)") and "and 3 more" in event.message
    assert len(announced) == 5
    assert rejection_event(many, announced, now=1.0)[0] is not None  # the three not named yet


def test_a_gateway_restart_resets_what_was_announced() -> None:
    announced = {"cam-1": Announced(50, 0.0)}
    event, remembered = rejection_event(summary(("cam-1", 4)), announced, now=REPEAT_S + 1)
    assert event is None and remembered["cam-1"].count == 4
    later, _ = rejection_event(summary(("cam-1", 9)), remembered, now=REPEAT_S + 2)
    assert later is not None
