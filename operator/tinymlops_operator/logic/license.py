"""What a `License` asks of the operator now: which devices get a new token, and the status (pure).

The licensed devices are those the referenced DeviceFleet's selector matches that have
a registered identity key; the tokens are bound to the set of menus the fleet may run
now: its stable revision's and, during a rollout, its canary's, so a device moved to the
canary (or back) keeps serving on the same allowance.  A device gets a token when it has
none, when the fleet may run a menu its token does not cover (a canary started: the
allowance left is re-bound to the new set), or when `licensing.issuer.next_quota` says
its reconciled usage used the last one up (a refill).  Usage, refills and anomalies in the status come from the
gateway's reconciled checkpoints, never from what a device says on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.freshness import parse_duration
from tinymlops.licensing.issuer import Issued, LicenseSpec, next_quota, period_used
from tinymlops.licensing.statement import period_of
from tinymlops_operator.logic.conditions import set_condition

NAMED_DEVICES = 50  # devices with anomalies named in the status; the gateway's summary has them all


def license_spec(spec: Mapping[str, Any]) -> LicenseSpec:
    """The spec as the issuer takes it; SpecError names the field that makes no sense."""
    quota = spec.get("quota") or {}
    try:
        validity = parse_duration(str(spec.get("validity") or "7d"))
    except ValueError as exc:
        raise SpecError(f"spec.validity: {exc}") from exc
    try:
        return LicenseSpec(str(spec.get("licensee") or ""), int(quota.get("perPeriod") or 0),
                           int(quota.get("perToken") or 0), str(quota.get("period") or "month"), validity)
    except SpecError as exc:
        raise SpecError(f"spec.quota: {exc}") from exc


@dataclass(frozen=True)
class Grant:
    device: str
    quota: int
    epoch: int
    period_used_before: int
    refill: bool


def fleet_menus(rollout: Mapping[str, Any]) -> tuple[str, ...]:
    """The menus a fleet's devices may run now (status.rollout): stable's and the canary's, sorted."""
    menus = {str((rollout.get(role) or {}).get("menuSha256") or "") for role in ("stable", "canary")}
    return tuple(sorted(menus - {""}))


def grants(spec: LicenseSpec, devices: Iterable[str], issued: Mapping[str, tuple[Issued, tuple[str, ...]] | None],
           usage: Mapping[str, Any] | None, menus: tuple[str, ...], now: float) -> list[Grant]:
    """The tokens to issue now, bound to `menus`.  `issued`: per device, what was issued last and for which menus;
    `usage`: the gateway's fleet usage summary (None: unreachable, so no refill is decided)."""
    per_device = (usage or {}).get("devices") or {}
    out = []
    for device in sorted(devices):
        last = issued.get(device)
        if last is None:
            out.append(Grant(device, spec.per_token, 1, 0, refill=False))
            continue
        token, covered = last
        used = int((per_device.get(device) or {}).get("per_token", {}).get(token.token_id, 0))
        if not set(menus) <= set(covered):  # the fleet may run a menu the token misses: re-bind what is left
            left = token.quota - used
            if left > 0:
                out.append(Grant(device, left, token.epoch + 1, token.period_used_before + used, refill=False))
            continue
        if usage is None:
            continue
        quota = next_quota(spec, token, used, now)
        if quota is not None:
            out.append(Grant(device, quota, token.epoch + 1, period_used(token, used, now, spec), refill=True))
    return out


def license_status(status: Mapping[str, Any], *, generation: int, spec: LicenseSpec, devices: int, refills: int,
                   usage: Mapping[str, Any] | None, menus: tuple[str, ...], stable: str, now: float, ready: bool,
                   message: str) -> dict[str, Any]:
    per_device = (usage or {}).get("devices") or {}
    anomalies = dict((usage or {}).get("anomalies") or {})
    flagged = sorted(name for name, d in per_device.items() if d.get("anomalies"))
    previous = dict(status.get("usage") or {})
    return {
        "observedGeneration": generation, "period": period_of(now, spec.period), "menuSha256": stable,
        "menus": list(menus), "devices": devices,
        "usage": {"inferences": int((usage or {}).get("inferences", previous.get("inferences", 0))),
                  "refills": int(previous.get("refills", 0)) + refills,
                  "anomalyCount": sum(anomalies.values()), "anomalies": anomalies,
                  "devicesWithAnomalies": flagged[:NAMED_DEVICES]},
        "conditions": set_condition(status.get("conditions"), type="Ready", status=ready,
                                    reason="TokensIssued" if ready else "NotReady", message=message,
                                    generation=generation),
    }


def not_ready_status(status: Mapping[str, Any], *, generation: int, reason: str, message: str) -> dict[str, Any]:
    return {**dict(status), "observedGeneration": generation,
            "conditions": set_condition(status.get("conditions"), type="Ready", status=False, reason=reason,
                                        message=message, generation=generation)}
