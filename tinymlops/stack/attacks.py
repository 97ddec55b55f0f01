"""The demo's hostile traffic: a forged report and a replayed one, which the gateway must refuse.

An observer on the network (the simulator's uplink `tap`) captures one device's
signed report.  Then, once the fleet has converged, two reports arrive at the
gateway in that device's name:

- forged: the captured report's content with a fresh sequence number and a
  story to tell (every inference an error, which would sway a canary verdict),
  signed with a key that is not the device's: refused as `bad-signature`;
- replayed: the captured envelope byte for byte, once the device has moved on:
  refused as `replay`.

Neither reaches a metric or the analysis; the demo report shows the gateway's
refusals by reason (`tinymlops_gateway_reports_rejected_total`) and the fleet
summary's record of the device they named.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from tinymlops.errors import DemoError, InvalidReportError
from tinymlops.fleet.simulator import FleetSimulator
from tinymlops.report import MAX_SEQ, SignedReport, sign_report

REJECTED_METRIC = "tinymlops_gateway_reports_rejected"
TIMEOUT_S = 10.0


class Eavesdropper:
    """Keeps the first signed report it sees on the simulator's uplink."""

    def __init__(self, simulator: FleetSimulator) -> None:
        self.captured: dict[str, Any] | None = None
        simulator.tap = self._see

    def _see(self, batch: list[dict[str, Any]]) -> None:
        if self.captured is None:
            self.captured = next((dict(item) for item in batch if SignedReport.is_envelope(item)), None)


def forge(envelope: Mapping[str, Any]) -> dict[str, str]:
    """The captured report, made to claim that every inference failed, under a fresh seq and another key."""
    report = SignedReport.from_json(envelope).open()
    lie = dataclasses.replace(report, inferences=report.inferences + 100, errors=report.inferences + 100)
    return sign_report(lie, Ed25519PrivateKey.generate(), min(report.seq + 1_000_000, MAX_SEQ)).to_json()


def inject(gateway_url: str, eavesdropper: Eavesdropper) -> dict[str, Any]:
    """Send the forged and the replayed report; what the gateway answered, and its refusals by reason."""
    if eavesdropper.captured is None:
        raise DemoError("no signed report was seen on the uplink to forge or replay")
    try:
        device = SignedReport.from_json(eavesdropper.captured).open()
    except InvalidReportError as exc:
        raise DemoError(f"the captured report does not open: {exc}") from exc
    sent = [("forged", forge(eavesdropper.captured)), ("replayed", eavesdropper.captured)]
    answer = _post(f"{gateway_url}/v1/reports", {"reports": [envelope for _, envelope in sent]})
    refusals = {int(item["index"]): item for item in answer.get("rejected", ())}
    summary = _get(f"{gateway_url}/v1/fleets/{device.namespace}/{device.fleet}/summary")
    return {
        "device": f"{device.namespace}/{device.device}",
        "injected": [{"kind": kind, "refused": index in refusals,
                      "reason": refusals.get(index, {}).get("reason"), "error": refusals.get(index, {}).get("error")}
                     for index, (kind, _) in enumerate(sent)],
        "accepted": int(answer.get("accepted", 0)),
        "rejected_by_reason": rejected_by_reason(gateway_url),
        "fleet_rejected": summary.get("rejected", {}),
    }


def rejected_by_reason(gateway_url: str) -> dict[str, int]:
    """The gateway's refusals so far, by reason, as Prometheus scrapes them."""
    with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=TIMEOUT_S) as response:
        text = response.read().decode()
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name == REJECTED_METRIC:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["reason"]] = int(sample.value)
    return dict(sorted(counts.items()))


def _post(url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer
