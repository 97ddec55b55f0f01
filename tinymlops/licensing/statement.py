"""The usage statement: per licensee and period, inferences, refills and anomalies (pure).

Built from reconciliations (each device's, with the licences it served under), so
what it bills has passed every check `reconcile` makes: a replayed checkpoint is
in no row, a rolled-back device's re-used counters are, and each anomaly is
counted against the licensee of the checkpoint it concerns.  A refill is every
licence of a device after its first, counted in the period it was issued.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tinymlops.licensing.reconcile import Reconciliation
from tinymlops.licensing.token import License

PERIODS = ("day", "month")
UNLICENSED = "(unlicensed)"  # checkpoints under a token that is none of the device's verified licences
CSV_COLUMNS = ("licensee", "period", "devices", "inferences", "refills", "anomalies")


def period_of(timestamp: float, period: str) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


@dataclass
class Row:
    licensee: str
    period: str
    devices: set[str] = field(default_factory=set)
    inferences: int = 0
    refills: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"licensee": self.licensee, "period": self.period, "devices": len(self.devices),
                "inferences": self.inferences, "refills": self.refills, "anomalies": dict(sorted(
                    self.anomalies.items()))}

    def csv_values(self) -> list[str]:
        anomalies = ";".join(f"{k}={v}" for k, v in sorted(self.anomalies.items()))
        return [self.licensee, self.period, str(len(self.devices)), str(self.inferences), str(self.refills),
                anomalies]


@dataclass(frozen=True)
class DeviceUsage:
    device: str  # identity public key, base64
    licenses: Sequence[License]  # verified, in the order the device received them
    reconciliation: Reconciliation


def statement(usages: Iterable[DeviceUsage], period: str = "month") -> list[Row]:
    """Rows sorted by licensee then period."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
    rows: dict[tuple[str, str], Row] = {}

    def row(licensee: str, when: float) -> Row:
        key = (licensee, period_of(when, period))
        return rows.setdefault(key, Row(*key))

    for usage in usages:
        owner = {lic.token_id: lic.licensee for lic in usage.licenses}
        for refill in usage.licenses[1:]:
            row(refill.licensee, refill.issued_at).refills += 1
        for checkpoint, counted in zip(usage.reconciliation.accepted, usage.reconciliation.counted, strict=True):
            entry = row(owner.get(checkpoint.token_id.hex(), UNLICENSED), checkpoint.sealed_at)
            entry.inferences += counted
            entry.devices.add(usage.device)
        for anomaly in usage.reconciliation.anomalies:
            entry = row(owner.get(anomaly.token, UNLICENSED), anomaly.sealed_at)
            entry.anomalies[anomaly.kind] = entry.anomalies.get(anomaly.kind, 0) + 1
    return [rows[k] for k in sorted(rows)]
