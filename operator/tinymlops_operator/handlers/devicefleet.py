"""DeviceFleet IO: publish the signed plan, read device reports, write status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import kopf

from tinymlops import signing
from tinymlops.plan import build_plan, plan_bytes
from tinymlops.store import model_prefix, plan_prefix, sha256_bytes
from tinymlops_operator.logic import devicefleet as logic
from tinymlops_operator.runtime import Runtime

DeviceEntry = tuple[str, Mapping[str, str]]


def _load_menu(runtime: Runtime, namespace: str, model: str, menu_sha256: str) -> dict[str, Any]:
    key = f"{namespace}/{model}"
    cached = runtime.menus.get(key)
    if cached and cached[0] == menu_sha256:
        return cached[1]
    menu: dict[str, Any] = json.loads(runtime.store.get(f"{model_prefix(namespace, model)}/menu.json"))
    runtime.menus[key] = (menu_sha256, menu)
    return menu


def _publish_plan(runtime: Runtime, namespace: str, fleet: str, plan: Mapping[str, Any]) -> tuple[str, bool]:
    """Write plan.json + plan.sig unless identical bytes are already published (restart-safe)."""
    data = plan_bytes(plan)
    digest = sha256_bytes(data)
    prefix = plan_prefix(namespace, fleet)
    try:
        if runtime.store.get(f"{prefix}/plan.json") == data:
            return digest, False
    except FileNotFoundError:
        pass
    # Two atomic writes, not one: a device polling in between sees a signature mismatch,
    # rejects that plan and simply takes the new one at its next poll.
    runtime.store.put(f"{prefix}/plan.sig", signing.sign(runtime.signing_key, data).encode())
    runtime.store.put(f"{prefix}/plan.json", data)
    return digest, True


async def _gateway_summary(runtime: Runtime, namespace: str, fleet: str, menu_version: int) -> dict[str, Any] | None:
    if not runtime.settings.gateway_url:
        return None
    if runtime.http is None:
        runtime.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    url = f"{runtime.settings.gateway_url}/v1/fleets/{namespace}/{fleet}/summary"
    try:
        async with runtime.http.get(url, params={"menu_version": str(menu_version)}) as response:
            response.raise_for_status()
            summary: dict[str, Any] = await response.json()
            return summary
    except (aiohttp.ClientError, TimeoutError):
        return None


async def reconcile(
    *,
    runtime: Runtime,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    name: str,
    namespace: str,
    generation: int,
    body: kopf.Body,
    patch: kopf.Patch,
    models: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
    devices: Iterable[DeviceEntry],
) -> None:
    model_name = spec["modelRef"]["name"]
    model = next(iter(models.get((namespace, model_name), ())), None)
    model_status: Mapping[str, Any] = (model or {}).get("status") or {}
    if model is None or not model_status.get("menuSha256"):
        desired = logic.waiting_status(
            status,
            generation=generation,
            reason="ModelNotReady",
            message=f"spec.modelRef.name: EdgeModel {namespace}/{model_name} "
            + ("does not exist" if model is None else "has no published menu yet"),
        )
        if logic.status_changed(status, desired):
            patch.status.update(desired)
        return

    menu_sha, menu_version = str(model_status["menuSha256"]), int(model_status["menuVersion"])
    menu = _load_menu(runtime, namespace, model_name, menu_sha)
    policy = dict(spec.get("policy") or {})
    plan = build_plan(
        namespace=namespace, fleet=name, generation=generation, model=model_name,
        menu_sha256=menu_sha, menu_version=menu_version, policy=policy,
        selector=spec.get("selector") or {},
    )
    plan_sha, published = _publish_plan(runtime, namespace, name, plan)
    current = dict(status)
    if published or status.get("planSha256") != plan_sha:
        # A new plan starts a new convergence: forget the previous timing.
        current.pop("secondsToConverge", None)
        current["planPublishedAt"] = time.time()
        kopf.info(body, reason="PlanPublished", message=f"plan for {model_name} menu v{menu_version} ({plan_sha[:12]})")
    selected = logic.select_devices(spec.get("selector") or {}, devices)
    assignment = logic.assign(menu["variants"], selected, policy)
    summary = await _gateway_summary(runtime, namespace, name, menu_version)
    desired = logic.fleet_status(
        current,
        generation=generation,
        assignment=assignment,
        menu_version=menu_version,
        plan_sha256=plan_sha,
        plan_published_at=float(current.get("planPublishedAt") or time.time()),
        summary=summary,
    )
    if desired["phase"] != status.get("phase"):
        converged = next(c for c in desired["conditions"] if c["type"] == "Converged")
        kopf.info(body, reason=desired["phase"], message=converged["message"])
    if "secondsToConverge" not in desired and status.get("secondsToConverge") is not None:
        desired["secondsToConverge"] = None  # merge-patch null deletes the stale timing
    if logic.status_changed(status, desired):
        patch.status.update(desired)


def delete_plan(*, runtime: Runtime, name: str, namespace: str) -> None:
    """Removing the fleet withdraws its plan, so devices stop following it."""
    for suffix in ("plan.json", "plan.sig"):
        path = runtime.store.path(f"{plan_prefix(namespace, name)}/{suffix}")
        path.unlink(missing_ok=True)
