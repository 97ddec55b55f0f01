"""Telemetry kept on the device and sent only when the fleet's policy and the user allow (pure).

A device measures all the time but may upload only on Wi-Fi, on any network, or
never, and some fleets need the user's consent first.  Until then reports wait in
a bounded buffer: when it is full the oldest are dropped and counted, so a device
that stays offline for a month neither runs out of memory nor pretends nothing
was lost.  Policy lives in the signed plan: `plan["policy"]["telemetry"]`; its `drift` part (which drift
histograms ride with the reports) is read by `tinymlops.drift.policy`, and the upload rules here
apply to those reports as to any other.

Latency is reported apart for the first WARMUP_INFERENCES after a switch: a new
session's first runs pay one-time costs (allocation, kernel selection, cold
caches), and a canary's devices have all just switched while the stable ones
have not, so mixing them in would make every canary look slower than it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.drift.policy import DriftPolicy
from tinymlops.errors import SpecError
from tinymlops.report import MAX_LATENCIES, MAX_REASON_CHARS

UPLOAD_MODES = ("wifi-only", "any", "never")
DEFAULT_BUFFER = 64  # reports, each a distinct state; repeated states merge into one (see ReportBuffer.add)
# Inferences after a switch whose latency is reported as warm-up (`warmup_latencies_ms`), not steady state:
# a session's first run pays allocation and kernel set-up, the next one or two the cold caches.  Kept small:
# a simulated device runs 5 inferences per poll, and a canary's first report must carry steady samples, or the
# analysis of a 10,000-device fleet (20 s polls) waits a whole poll for its first latency.
WARMUP_INFERENCES = 3
# A report merges into the previous one while none of these changed: the state is the same, only counts grow.
STATE_FIELDS = ("phase", "menu_version", "variant", "variant_sha256", "reason", "load_ms")


@dataclass
class Telemetry:
    """What happened since the last report; bounded so a device that cannot upload never runs out of memory."""

    inferences: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # steady state
    warmup_latencies_ms: list[float] = field(default_factory=list)  # the first inferences after a switch
    dropped_latencies: int = 0
    load_ms: float | None = None
    # Inferences a pre/post module failed, by `WasmCallError.reason` (trap, fuel, outputs, inputs); also in `errors`
    module_failures: dict[str, int] = field(default_factory=dict)

    def record(self, latency_ms: float, *, warmup: bool = False) -> None:
        self.inferences += 1
        kept = self.warmup_latencies_ms if warmup else self.latencies_ms
        if len(kept) < MAX_LATENCIES:
            kept.append(latency_ms)
        else:
            self.dropped_latencies += 1


@dataclass(frozen=True)
class TelemetryPolicy:
    upload: str = "any"
    consent_required: bool = False
    drift: DriftPolicy = DriftPolicy()  # what drift histograms ride with the reports (tinymlops/drift/policy.py)

    @classmethod
    def from_plan(cls, policy: Mapping[str, Any] | None) -> TelemetryPolicy:
        telemetry = (policy or {}).get("telemetry") or {}
        upload = str(telemetry.get("upload", "any"))
        if upload not in UPLOAD_MODES:
            raise SpecError(f"policy.telemetry.upload: {upload!r} is not one of {', '.join(UPLOAD_MODES)}")
        try:
            drift = DriftPolicy.from_policy(policy)
        except SpecError:  # a drift policy this agent cannot use sends no drift; it never loosens the upload rules
            drift = DriftPolicy()
        return cls(upload=upload, consent_required=bool(telemetry.get("consentRequired", False)), drift=drift)


def may_upload(policy: TelemetryPolicy, *, network: str, consent: bool) -> tuple[bool, str]:
    """Whether reports may leave the device now, and why not when they may not."""
    if policy.upload == "never":
        return False, "the fleet's policy never uploads telemetry"
    if policy.consent_required and not consent:
        return False, "the user has not consented to telemetry upload"
    if network == "offline":
        return False, "offline"
    if policy.upload == "wifi-only" and network != "wifi":
        return False, f"on a {network} network and the fleet uploads on Wi-Fi only"
    return True, ""


class ReportBuffer:
    """The device's outbox of reports in their wire form (`Report.to_json()`, as they will be uploaded):
    bounded, oldest dropped first, drops counted and reported."""

    def __init__(self, capacity: int = DEFAULT_BUFFER) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self._reports: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._reports)

    def add(self, report: dict[str, Any]) -> None:
        """Queue `report`, merged into the newest one when the device's state has not changed since."""
        last = self._reports[-1] if self._reports else None
        # Two drift windows never merge into one report (each is its own release): the second waits in its own.
        both_drift = last is not None and "drift" in last and "drift" in report
        if last is not None and not both_drift and all(last.get(f) == report.get(f) for f in STATE_FIELDS):
            last["inferences"] = last.get("inferences", 0) + report.get("inferences", 0)
            last["errors"] = last.get("errors", 0) + report.get("errors", 0)
            last["energy_mj"] = round(last.get("energy_mj", 0.0) + report.get("energy_mj", 0.0), 6)
            if report.get("instructions"):  # a microcontroller's counted instructions (absent elsewhere)
                last["instructions"] = last.get("instructions", 0) + report["instructions"]
            for key in ("latencies_ms", "warmup_latencies_ms"):
                room = MAX_LATENCIES - len(last.get(key, []))
                last.setdefault(key, []).extend(report.get(key, [])[:max(room, 0)])
            last["sent_at"] = report.get("sent_at", last.get("sent_at"))
            if "drift" in report:
                last["drift"] = report["drift"]
            if report.get("drift_withheld"):
                last["drift_withheld"] = "; ".join(filter(None, (last.get("drift_withheld"),
                                                                  report["drift_withheld"])))[:MAX_REASON_CHARS]
            return
        if len(self._reports) == self._reports.maxlen:
            self.dropped += 1
        self._reports.append(report)

    def drain(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Take up to `limit` reports, oldest first (the uplink that sends them keeps them if an upload fails)."""
        count = len(self._reports) if limit is None else min(limit, len(self._reports))
        return [self._reports.popleft() for _ in range(count)]
