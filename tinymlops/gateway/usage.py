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

State per device (bounded by the registry: only registered devices upload): its
last accepted checkpoint, usage per licence token, anomaly counts and the last few
anomalies.  With a `UsageLedger` (the app always gives one) it is saved in the store
before an upload is acknowledged and read back after a restart (`usageledger.py`),
so a rollback across a gateway restart is still caught.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from tinymlops.errors import ReceiptsError
from tinymlops.licensing.checkpoint import CHECKPOINT_BYTES, Checkpoint, from_base64, parse_many
from tinymlops.licensing.reconcile import ANOMALIES, Anomaly, Reconciliation, reconcile

if TYPE_CHECKING:
    from tinymlops.gateway.usageledger import UsageLedger

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

    @classmethod
    def from_json(cls, record: Any, *, where: str) -> DeviceUsage:
        """The ledger `to_json` wrote; ReceiptsError naming `where` when it is not one."""
        try:
            raw_last = record.get("last_checkpoint")
            last = from_base64(raw_last, where=f"{where}: last_checkpoint") if raw_last else None
            recent = [Anomaly(str(a["kind"]), int(a["start"]), int(a["end"]), str(a["message"]), str(a["token"]),
                              int(a["sealed_at"])) for a in record["recent"]]
            return cls(str(record["fleet"]), last, {str(k): int(v) for k, v in record["per_token"].items()},
                       int(record["counted"]), int(record["uploads"]),
                       Counter({str(k): int(v) for k, v in record["anomalies"].items()}),
                       deque(recent, maxlen=RECENT_ANOMALIES))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReceiptsError(f"{where}: not a usage ledger ({exc!r})") from exc


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

    def __init__(self, registry: CollectorRegistry | None = None, ledger: UsageLedger | None = None) -> None:
        self.devices: dict[tuple[str, str], DeviceUsage] = {}
        self.ledger = ledger  # None: in memory only
        self.loaded_fleets: set[tuple[str, str]] = set()
        self.inferences = PromCounter("tinymlops_license_inferences", "Licensed inferences counted from devices' "
                                      "reconciled checkpoints (each counter once).", ("namespace", "fleet"),
                                      registry=registry)
        self.anomalies = PromCounter("tinymlops_license_anomalies", "Anomalies named when reconciling devices' "
                                     "checkpoints, by kind.", ("namespace", "fleet", "kind"), registry=registry)

    def apply(self, namespace: str, fleet: str, device: str, key: Ed25519PublicKey,
              checkpoints: list[Checkpoint]) -> Reconciliation:
        usage = self._device(namespace, fleet, device)
        result = reconcile(checkpoints, key, last=usage.last, used_before=usage.per_token)
        updated = replace(usage, last=result.last, per_token=result.per_token, counted=usage.counted + result.usage,
                          uploads=usage.uploads + 1, anomalies=usage.anomalies + Counter(a.kind for a in
                                                                                        result.anomalies),
                          recent=deque([*usage.recent, *result.anomalies], maxlen=RECENT_ANOMALIES))
        if self.ledger is not None:  # saved before it is acknowledged: a restart forgets nothing accepted
            self.ledger.save(namespace, device, updated)
            self.ledger.add_to_fleet(namespace, updated.fleet, device)
        self.devices[(namespace, device)] = updated
        for anomaly in result.anomalies:
            self.anomalies.labels(namespace, fleet, anomaly.kind if anomaly.kind in ANOMALIES else "other").inc()
        if result.usage:
            self.inferences.labels(namespace, fleet).inc(result.usage)
        return result

    def _device(self, namespace: str, fleet: str, device: str) -> DeviceUsage:
        usage = self.devices.get((namespace, device))
        if usage is None:
            saved = self.ledger.load(namespace, device) if self.ledger is not None else None
            usage = self.devices[(namespace, device)] = saved or DeviceUsage(fleet)
        return usage

    def fleet(self, namespace: str, fleet: str) -> dict[str, Any]:
        if self.ledger is not None and (namespace, fleet) not in self.loaded_fleets:
            for name in self.ledger.fleet_devices(namespace, fleet):
                self._device(namespace, fleet, name)
            self.loaded_fleets.add((namespace, fleet))
        devices = {name: usage.to_json() for (ns, name), usage in sorted(self.devices.items())
                   if ns == namespace and usage.fleet == fleet}
        anomalies: Counter[str] = Counter()
        for usage in devices.values():
            anomalies.update(usage["anomalies"])
        return {"inferences": sum(u["counted"] for u in devices.values()), "anomalies": dict(anomalies),
                "devices": devices}
