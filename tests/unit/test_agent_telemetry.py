"""Telemetry on the device: upload policy, bounded outbox, merging of unchanged states."""

import pytest

from tinymlops.agent.telemetry import ReportBuffer, TelemetryPolicy, may_upload
from tinymlops.errors import SpecError
from tinymlops.report import MAX_LATENCIES


def report(phase: str = "Running", variant: str = "fp32", inferences: int = 1, latencies: int = 1) -> dict:
    return {"phase": phase, "variant": variant, "menu_version": 1, "inferences": inferences, "errors": 0,
            "latencies_ms": [0.1] * latencies, "reason": "", "sent_at": 1.0}


@pytest.mark.parametrize(("upload", "network", "consent", "required", "allowed"), [
    ("any", "metered", False, False, True),
    ("wifi-only", "metered", True, False, False),
    ("wifi-only", "wifi", True, False, True),
    ("never", "wifi", True, False, False),
    ("any", "wifi", False, True, False),
    ("any", "offline", True, False, False),
])
def test_upload_policy(upload: str, network: str, consent: bool, required: bool, allowed: bool) -> None:
    policy = TelemetryPolicy.from_plan({"telemetry": {"upload": upload, "consentRequired": required}})
    ok, why = may_upload(policy, network=network, consent=consent)
    assert ok is allowed and (ok or why)


def test_bad_policy_names_the_field() -> None:
    with pytest.raises(SpecError, match="policy.telemetry.upload: 'sometimes'"):
        TelemetryPolicy.from_plan({"telemetry": {"upload": "sometimes"}})


def test_unchanged_states_merge_and_latencies_stay_bounded() -> None:
    outbox = ReportBuffer()
    for _ in range(1000):
        outbox.add(report(latencies=5))
    assert len(outbox) == 1
    (merged,) = outbox.drain()
    assert merged["inferences"] == 1000 and len(merged["latencies_ms"]) == MAX_LATENCIES


def test_full_outbox_drops_the_oldest_and_counts() -> None:
    outbox = ReportBuffer(capacity=3)
    for index in range(5):
        outbox.add(report(variant=f"v{index}"))
    assert outbox.dropped == 2 and [r["variant"] for r in outbox.drain()] == ["v2", "v3", "v4"]

