"""The fleet's protection policy, read in one place: `policy.protection` of the signed plan (camelCase).

    {"watchClients": true | false,
     "outputPolicy": {"mode": "full" | "top1" | "rounded" | "perturbed", "decimals": 2,
                      "applyTo": "all" | "alarmed"}}

`watchClients` (default true): whether devices watch each client's queries for extraction (`prada.Monitor`);
false drops the monitor and what it held (its earlier queries and alarms), so no client is alarmed.

`full` (the default) returns the model's output as it is.  `applyTo: alarmed` applies the mode only to
clients whose extraction alarm is raised (`prada.Monitor`); `all` to every client.  The DeviceFleet CRD
validates the same fields (crds/devicefleets.tinymlops.io.yaml); an agent that reads a policy it cannot use
raises SpecError naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.protection.outputs import MODES

APPLY_TO = ("all", "alarmed")
MAX_DECIMALS = 6


@dataclass(frozen=True)
class OutputPolicy:
    mode: str = "full"
    decimals: int = 2
    apply_to: str = "all"

    def mode_for(self, alarmed: bool) -> str:
        """The mode a client gets: the policy's for everyone, or only for a client under alarm."""
        return self.mode if self.apply_to == "all" or alarmed else "full"

    @classmethod
    def from_policy(cls, policy: Mapping[str, Any] | None) -> OutputPolicy:
        raw = ((policy or {}).get("protection") or {}).get("outputPolicy") or {}
        where = "policy.protection.outputPolicy"
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: is not an object")
        mode = raw.get("mode", "full")
        if mode not in MODES:
            raise SpecError(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}")
        decimals = raw.get("decimals", cls.decimals)
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= MAX_DECIMALS:
            raise SpecError(f"{where}.decimals: {decimals!r} is not an integer in 0..{MAX_DECIMALS}")
        apply_to = raw.get("applyTo", "all")
        if apply_to not in APPLY_TO:
            raise SpecError(f"{where}.applyTo: {apply_to!r} is not one of {', '.join(APPLY_TO)}")
        return cls(mode=str(mode), decimals=decimals, apply_to=str(apply_to))


def watch_clients(policy: Mapping[str, Any] | None) -> bool:
    """`policy.protection.watchClients`: whether devices watch their clients for extraction (default true)."""
    value = ((policy or {}).get("protection") or {}).get("watchClients", True)
    if not isinstance(value, bool):
        raise SpecError(f"policy.protection.watchClients: {value!r} is not true or false")
    return value
