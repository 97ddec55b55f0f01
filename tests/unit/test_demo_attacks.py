"""The demo's forged and replayed reports are refused, with their reasons, and never counted
(tinymlops/stack/attacks.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.gateway.app import Gateway
from tinymlops.gateway.authn import ReportGuard
from tinymlops.report import Report, sign_report
from tinymlops.stack.attacks import Eavesdropper, inject
from tinymlops.store import DirectoryStore

KEY = Ed25519PrivateKey.generate()


def signed(seq: int, inferences: int = 5) -> dict[str, str]:
    report = Report(device="cam-1", namespace="edge", fleet="cams", device_class="rpi4", arch="aarch64",
                    phase="Running", menu_version=1, sent_at=float(seq), inferences=inferences)
    return sign_report(report, KEY, seq).to_json()


def test_the_eavesdropper_keeps_the_first_signed_report_it_sees() -> None:
    simulator: Any = SimpleNamespace(tap=None)
    spy = Eavesdropper(simulator)
    simulator.tap([{"plain": "report"}])
    simulator.tap([signed(1), signed(2)])
    simulator.tap([signed(3)])
    assert spy.captured == signed(1)


async def test_a_forged_and_a_replayed_report_are_refused_and_move_no_count(tmp_path: Path) -> None:
    guard = ReportGuard({("edge", "cam-1"): KEY.public_key()})
    async with Gateway(DirectoryStore(tmp_path), guard=guard) as gateway:
        simulator: Any = SimpleNamespace(tap=None)
        spy = Eavesdropper(simulator)
        simulator.tap([signed(1)])
        for seq in (1, 2):  # the device's real reports: the captured one, then a newer one
            await asyncio.to_thread(_post, gateway.url, [signed(seq)])
        result = await asyncio.to_thread(inject, gateway.url, spy)
        inferences = {name: state.report.inferences for name, state in gateway.state.devices("edge", "cams")}
    assert result["device"] == "edge/cam-1" and result["accepted"] == 0
    assert [(i["kind"], i["refused"], i["reason"]) for i in result["injected"]] == [
        ("forged", True, "bad-signature"), ("replayed", True, "replay")]
    assert result["rejected_by_reason"]["bad-signature"] == 1 and result["rejected_by_reason"]["replay"] == 1
    assert result["fleet_rejected"]["devices"][0]["device"] == "cam-1"
    assert inferences == {"cam-1": 5}  # the forged report's 100 errors reached nothing


def _post(url: str, reports: list[dict[str, str]]) -> None:
    import json
    import urllib.request

    request = urllib.request.Request(f"{url}/v1/reports", data=json.dumps({"reports": reports}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["accepted"] == 1
