"""The gateway's side of pay-per-query: reconcile the checkpoints devices upload, count usage once, name anomalies.

A device uploads the checkpoints it sealed since the last one the gateway accepted
(`POST /v1/usage/{namespace}/{fleet}/{device}`, 196 bytes each).  They are verified
with the identity key the registry holds for that device (never a key the upload
brings) and placed after the device's last accepted checkpoint by
`tinymlops.licensing.reconcile`: a replay counts nothing, a rolled-back counter, a
gap, a fork or a clock set back is recorded against the device by name, and the
usage counted moves `tinymlops_license_inferences_total{namespace, fleet}`.
Anomalies count in `tinymlops_license_anomalies_total{namespace, fleet, kind}`: no
device id in a label; the device is named in the fleet's usage summary
(`GET /v1/fleets/{namespace}/{fleet}/usage`), which the licence issuer reads to
decide refills.

State is in memory and bounded by the registry (only registered devices upload):
per device its last accepted checkpoint, usage per licence token, anomaly counts
and the last few anomalies.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from tinymlops.errors import ReceiptsError
from tinymlops.licensing.checkpoint import CHECKPOINT_BYTES, Checkpoint, parse_many
from tinymlops.licensing.reconcile import ANOMALIES, Anomaly, Reconciliation, reconcile

MAX_CHECKPOINTS_PER_UPLOAD = 4096  # 784 KiB: four million inferences sealed offline
RECENT_ANOMALIES = 16


@dataclass
class DeviceUsage:
    fleet: str
    last: Checkpoint | None = None
    per_token: dict[str, int] = field(default_factory=dict)
    counted: int = 0
    uploads: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    recent: deque[Anomaly] = field(default_factory=lambda: deque(maxlen=RECENT_ANOMALIES))

    def to_json(self) -> dict[str, Any]:
        return {"fleet": self.fleet, "counted": self.counted, "uploads": self.uploads, "per_token": self.per_token,
                "last_end": self.last.end if self.last else 0,
                "last_checkpoint": self.last.to_base64() if self.last else None,
                "anomalies": dict(self.anomalies), "recent": [a.to_json() for a in self.recent]}


def decode_upload(body: Any) -> list[Checkpoint]:
    """The checkpoints of an upload `{"checkpoints": <base64 of 196-byte records>}`; ReceiptsError names why not."""
    if not isinstance(body, dict) or not isinstance(body.get("checkpoints"), str):
        raise ReceiptsError('body: expected {"checkpoints": "<base64>"}')
    try:
        raw = base64.b64decode(body["checkpoints"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReceiptsError(f"checkpoints: not base64 ({exc})") from exc
    if len(raw) > MAX_CHECKPOINTS_PER_UPLOAD * CHECKPOINT_BYTES:
        raise ReceiptsError(f"checkpoints: more than {MAX_CHECKPOINTS_PER_UPLOAD} in one upload")
    return parse_many(raw, where="checkpoints")


class UsageBook:
    """Usage per registered device, reconciled upload by upload, with Prometheus counters beside it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.devices: dict[tuple[str, str], DeviceUsage] = {}
        self.inferences = PromCounter("tinymlops_license_inferences", "Licensed inferences counted from devices' "
                                      "reconciled checkpoints (each counter once).", ("namespace", "fleet"),
                                      registry=registry)
        self.anomalies = PromCounter("tinymlops_license_anomalies", "Anomalies named when reconciling devices' "
                                     "checkpoints, by kind.", ("namespace", "fleet", "kind"), registry=registry)

    def apply(self, namespace: str, fleet: str, device: str, key: Ed25519PublicKey,
              checkpoints: list[Checkpoint]) -> Reconciliation:
        usage = self.devices.setdefault((namespace, device), DeviceUsage(fleet))
        result = reconcile(checkpoints, key, last=usage.last, used_before=usage.per_token)
        usage.last, usage.per_token = result.last, result.per_token
        usage.counted += result.usage
        usage.uploads += 1
        for anomaly in result.anomalies:
            usage.anomalies[anomaly.kind] += 1
            usage.recent.append(anomaly)
            self.anomalies.labels(namespace, fleet, anomaly.kind if anomaly.kind in ANOMALIES else "other").inc()
        if result.usage:
            self.inferences.labels(namespace, fleet).inc(result.usage)
        return result

    def fleet(self, namespace: str, fleet: str) -> dict[str, Any]:
        devices = {name: usage.to_json() for (ns, name), usage in sorted(self.devices.items())
                   if ns == namespace and usage.fleet == fleet}
        anomalies: Counter[str] = Counter()
        for usage in devices.values():
            anomalies.update(usage["anomalies"])
        return {"inferences": sum(u["counted"] for u in devices.values()), "anomalies": dict(anomalies),
                "devices": devices}
