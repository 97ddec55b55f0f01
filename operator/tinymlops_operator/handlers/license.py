"""A `License`'s reconcile (IO): issue and refill device tokens into the store, count usage from the gateway.

Tokens are PASETO v4.public, signed with the operator's signing key (the publisher key devices pinned), one per
device at `layout.license_key`; beside each, the issuer's record of it (`<device>.json`: token id, quota, epoch,
period, menus), which is what the next reconcile decides refills from.  The gateway hands a device its token
(`GET /v1/licenses/...`) and reconciles what it uploads; the operator reads the gateway's fleet usage summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import kopf

from tinymlops.errors import SpecError
from tinymlops.layout import license_key
from tinymlops.licensing.issuer import Issued
from tinymlops.licensing.statement import period_of
from tinymlops.licensing.token import issue_token, new_license
from tinymlops.signing import load_public_key
from tinymlops_operator.handlers.observe import http
from tinymlops_operator.logic import license as logic
from tinymlops_operator.logic.devicefleet import select_devices
from tinymlops_operator.runtime import Runtime


def _issued(runtime: Runtime, namespace: str, fleet: str, device: str) -> tuple[Issued, tuple[str, ...]] | None:
    try:
        record = json.loads(runtime.store.get(license_key(namespace, fleet, device) + ".json"))
        # a record written before tokens covered a set of menus names its one menu in "menu"
        menus = tuple(record["menus"]) if "menus" in record else (str(record["menu"]),)
        return Issued(str(record["token_id"]), int(record["quota"]), int(record["epoch"]), str(record["period"]),
                      int(record["period_used_before"])), menus
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return None


async def _usage(runtime: Runtime, namespace: str, fleet: str) -> dict[str, Any] | None:
    if not runtime.settings.gateway_url:
        return None
    url = f"{runtime.settings.gateway_url}/v1/fleets/{namespace}/{fleet}/usage"
    try:
        async with http(runtime).get(url) as response:
            response.raise_for_status()
            usage: dict[str, Any] = await response.json()
            return usage
    except (aiohttp.ClientError, TimeoutError):
        return None


async def reconcile(*, runtime: Runtime, spec: Mapping[str, Any], status: Mapping[str, Any], namespace: str,
                    name: str, generation: int, patch: kopf.Patch, fleets: Mapping[tuple[str, str], Any],
                    devices: Iterable[tuple[str, Mapping[str, str]]], identities: Mapping[tuple[str, str], Any],
                    logger: kopf.Logger) -> None:
    now = time.time()
    try:
        wanted = logic.license_spec(spec)
    except SpecError as exc:
        patch.status.update(logic.not_ready_status(status, generation=generation, reason="InvalidSpec",
                                                   message=str(exc)))
        return
    fleet_name = str((spec.get("fleetRef") or {}).get("name") or "")
    fleet = next(iter(fleets.get((namespace, fleet_name), ())), None)
    rollout = ((fleet or {}).get("status") or {}).get("rollout") or {}
    menu = str((rollout.get("stable") or {}).get("menuSha256") or "")
    menus = logic.fleet_menus(rollout)
    if fleet is None or not menu:
        reason = "FleetNotFound" if fleet is None else "NoStableRevision"
        patch.status.update(logic.not_ready_status(status, generation=generation, reason=reason, message=(
            f"spec.fleetRef.name: no DeviceFleet {namespace}/{fleet_name}" if fleet is None else
            f"DeviceFleet {namespace}/{fleet_name} has no stable revision yet, so no menu to bind tokens to")))
        return
    selected = [device for device, _ in select_devices(fleet.get("spec", {}).get("selector") or {}, devices)]
    keyed = {}
    for device in selected:
        identity = next(iter(identities.get((namespace, device), ())), None)
        if identity is not None and identity.public_key_pem:
            keyed[device] = identity.public_key_pem
    usage = await _usage(runtime, namespace, fleet_name)
    issued = {device: _issued(runtime, namespace, fleet_name, device) for device in keyed}
    todo = logic.grants(wanted, keyed, issued, usage, menus, now)
    for grant in todo:
        lic = new_license(licensee=wanted.licensee, device=load_public_key(keyed[grant.device].encode()),
                          models=menus, quota=grant.quota, not_before=now - 300, expires=now + wanted.validity_s,
                          epoch=grant.epoch, issued_at=now)
        key = license_key(namespace, fleet_name, grant.device)
        runtime.store.put(key, (issue_token(lic, runtime.signing_key) + "\n").encode())
        runtime.store.put(key + ".json", json.dumps({
            "token_id": lic.token_id, "quota": lic.quota, "epoch": lic.epoch,
            "period": period_of(now, wanted.period), "period_used_before": grant.period_used_before,
            "menus": list(menus)}).encode())
    refills = sum(1 for g in todo if g.refill)
    labels = (namespace, name, wanted.licensee)
    runtime.metrics.license_tokens.labels(*labels).inc(len(todo))
    runtime.metrics.license_refills.labels(*labels).inc(refills)
    if usage is not None:
        runtime.metrics.license_inferences.labels(*labels).set(int(usage.get("inferences", 0)))
    if todo:
        logger.info(f"issued {len(todo)} licence token(s) ({refills} refill(s)) for fleet {fleet_name}")
    unkeyed = len(selected) - len(keyed)
    message = (f"{len(keyed)} device(s) hold tokens bound to menu(s) {', '.join(m[:12] + '…' for m in menus)}"
               + (f"; {unkeyed} selected device(s) have no registered identity key, so no token" if unkeyed else ""))
    patch.status.update(logic.license_status(status, generation=generation, spec=wanted, devices=len(keyed),
                                             refills=refills, usage=usage, menus=menus, stable=menu,
                                             now=now,
                                             ready=bool(keyed), message=message))
