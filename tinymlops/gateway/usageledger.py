"""The gateway's usage ledgers in the store, so a restart forgets no device's last accepted checkpoint.

Reconciling places each upload after the last checkpoint accepted from that device;
kept only in memory, that checkpoint would be gone after a restart, and a device that
restored an old state meanwhile would be placed against nothing: its re-used counters
counted as new, the rollback not named.  So each device's ledger (`DeviceUsage`: last
checkpoint, usage per token, anomaly counts, the last few anomalies) is written to the
store under registry/ (never served, `layout.usage_ledger_key`) before the upload is
acknowledged, and read back the first time the device, or its fleet's summary, is
asked for.  A per-fleet index (`layout.usage_fleet_key`) lists the devices with a
ledger, because a store has no listing.  Nothing here is written from a device's own
word: only what reconciling accepted.
"""

from __future__ import annotations

import json
from typing import Any

from tinymlops.errors import ReceiptsError
from tinymlops.gateway.usage import DeviceUsage
from tinymlops.layout import usage_fleet_key, usage_ledger_key
from tinymlops.store import ArtifactStore


class UsageLedger:
    """Device ledgers and fleet indexes in `store` (IO only; `usage.UsageBook` decides what they hold)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def load(self, namespace: str, device: str) -> DeviceUsage | None:
        """The device's ledger as last saved; None when it never uploaded; ReceiptsError when it is damaged."""
        key = usage_ledger_key(namespace, device)
        try:
            record = json.loads(self.store.get(key))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ReceiptsError(f"{key}: not JSON ({exc})") from exc
        return DeviceUsage.from_json(record, where=key)

    def save(self, namespace: str, device: str, usage: DeviceUsage) -> None:
        self.store.put(usage_ledger_key(namespace, device), json.dumps(usage.to_json(), sort_keys=True).encode())

    def fleet_devices(self, namespace: str, fleet: str) -> list[str]:
        try:
            names: Any = json.loads(self.store.get(usage_fleet_key(namespace, fleet)))
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise ReceiptsError(f"{usage_fleet_key(namespace, fleet)}: not JSON ({exc})") from exc
        return [str(n) for n in names] if isinstance(names, list) else []

    def add_to_fleet(self, namespace: str, fleet: str, device: str) -> None:
        names = self.fleet_devices(namespace, fleet)
        if device not in names:
            self.store.put(usage_fleet_key(namespace, fleet), json.dumps(sorted([*names, device])).encode())
