"""DeviceFleet IO: run the rollout, publish the signed plan, read device reports and metrics, write status.

Per reconcile: read the state from status → maybe one analysis run through
Prometheus → `logic.rollout.decide` → publish the plan for the decided step
(only when it changed) → one status patch when something significant changed.
Devices are never listed to them: the API writes per rollout depend on its
steps, not on the fleet's size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import kopf

from tinymlops import signing
from tinymlops.errors import MetricsUnavailableError, SpecError
from tinymlops.layout import kept_menu, menu_key, model_prefix, plan_key, plan_prefix, signature_key
from tinymlops.plan import build_plan, menu_ref, plan_bytes, same_plan
from tinymlops.store import digest_matches, sha256_bytes
from tinymlops.timestamps import seconds
from tinymlops_operator.logic import analysis as analysis_logic
from tinymlops_operator.logic import devicefleet as logic
from tinymlops_operator.logic import rollout
from tinymlops_operator.logic.strategy import Strategy, parse_strategy
from tinymlops_operator.prometheus import MetricSource, PrometheusSource
from tinymlops_operator.runtime import Runtime

DeviceEntry = tuple[str, Mapping[str, str]]
ANNOTATION = rollout.ANNOTATION


def _load_menu(runtime: Runtime, namespace: str, model: str, menu_sha256: str) -> dict[str, Any]:
    path, _ = kept_menu(namespace, model, menu_sha256)
    if path not in runtime.menus:  # kept by digest: immutable, so parsed once
        runtime.menus[path] = json.loads(runtime.store.get(path))
    return runtime.menus[path]


def _keep_menu(runtime: Runtime, namespace: str, model: str, menu_sha256: str) -> bool:
    """Copy the model's current menu to its content-addressed name, which plans point at: menu.json moves on
    with the next build, and a rollback must still find the stable revision's menu.  False: not available."""
    path, signature_path = kept_menu(namespace, model, menu_sha256)
    if runtime.store.exists(path) and runtime.store.exists(signature_path):
        return True
    current_path = menu_key(model_prefix(namespace, model))
    try:
        current = runtime.store.get(current_path)
        signature = runtime.store.get(signature_key(current_path))
    except FileNotFoundError:
        return False
    if not digest_matches(current, menu_sha256):
        return False
    runtime.store.put(signature_path, signature)  # the signature first: readers fetch the menu first
    runtime.store.put(path, current)
    return True


def _publish_plan(runtime: Runtime, namespace: str, fleet: str, plan: dict[str, Any]) -> tuple[str, bool]:
    """Write plan.json + plan.sig unless an equal plan is already published (restart-safe).

    The serial only grows, even across a deleted and re-created fleet: it starts from the clock."""
    path = plan_key(plan_prefix(namespace, fleet))
    previous: dict[str, Any] | None = None
    try:
        raw = runtime.store.get(path)
        previous = json.loads(raw)
    except (FileNotFoundError, ValueError):
        raw = b""
    if previous is not None and same_plan(previous, plan):
        return sha256_bytes(raw), False
    serial = max(int((previous or {}).get("serial") or 0) + 1, int(time.time() * 1000))
    data = plan_bytes({**plan, "serial": serial})
    # Two atomic writes, not one: a device polling in between sees a signature mismatch,
    # rejects that plan and simply takes the new one at its next poll.
    runtime.store.put(signature_key(path), signing.sign(runtime.signing_key, data).encode())
    runtime.store.put(path, data)
    return sha256_bytes(data), True


def _plan_for(namespace: str, fleet: str, state: rollout.RolloutState, selector: Mapping[str, Any]) -> dict[str, Any]:
    stable = state.stable
    assert stable is not None

    def ref(revision: rollout.Revision) -> dict[str, Any]:
        return menu_ref(namespace=namespace, model=revision.model, menu_sha256=revision.menu_sha256,
                        menu_version=revision.menu_version, revision=revision.number)

    canary = None
    if state.canary is not None and state.weight > 0:
        canary = {"rollout": state.rollout_id, "weight": state.weight, "menu": ref(state.canary),
                  "policy": dict(state.canary.policy)}
    return build_plan(namespace=namespace, fleet=fleet, model=stable.model, menu=ref(stable),
                      policy=stable.policy, selector=selector, canary=canary)


async def _gateway_summary(runtime: Runtime, namespace: str, fleet: str, menu_version: int) -> dict[str, Any] | None:
    if not runtime.settings.gateway_url:
        return None
    url = f"{runtime.settings.gateway_url}/v1/fleets/{namespace}/{fleet}/summary"
    try:
        async with _http(runtime).get(url, params={"menu_version": str(menu_version)}) as response:
            response.raise_for_status()
            summary: dict[str, Any] = await response.json()
            return summary
    except (aiohttp.ClientError, TimeoutError):
        return None


def _http(runtime: Runtime) -> aiohttp.ClientSession:
    if runtime.http is None:
        runtime.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    return runtime.http


async def _analyse(
    runtime: Runtime, strategy: Strategy, state: rollout.RolloutState, namespace: str, fleet: str, now: float,
    stable_has_data: bool,
) -> analysis_logic.AnalysisRun:
    """One analysis run of the canary against Prometheus; unreachable means inconclusive, never a pass."""
    spec = strategy.analysis
    assert spec is not None and state.canary is not None
    texts = analysis_logic.queries(spec, namespace=namespace, fleet=fleet, canary=state.canary.number,
                                   stable=state.stable.number if state.stable else None)
    url = spec.address or runtime.settings.prometheus_url
    if not url:
        return analysis_logic.unavailable(
            spec, texts, "no Prometheus to ask: set spec.strategy.canary.analysis.prometheus.address or the "
            "operator's TINYMLOPS_PROMETHEUS_URL", at=now)
    source: MetricSource = PrometheusSource(url, session=_http(runtime))
    values: dict[str, analysis_logic.Answer] = {}
    try:
        for name, text in texts.items():
            # A statistical check compares histograms: it needs the series, not one number.
            values[name] = await (source.samples if name in analysis_logic.VECTOR_METRICS else source.query)(text)
    except MetricsUnavailableError as exc:
        return analysis_logic.unavailable(spec, texts, str(exc), at=now)
    return analysis_logic.evaluate(spec, texts, values, at=now, stable_has_data=stable_has_data,
                                   canary=state.canary.number, stable=state.stable.number if state.stable else None)


async def reconcile(
    *,
    runtime: Runtime,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    annotations: Mapping[str, str],
    name: str,
    namespace: str,
    generation: int,
    body: kopf.Body,
    patch: kopf.Patch,
    models: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
    devices: Iterable[DeviceEntry],
) -> None:
    now = time.time()
    try:
        strategy = parse_strategy(spec)
    except SpecError as exc:
        # The plan already published keeps serving; nothing new goes out until the spec makes sense.
        _write(status, logic.invalid_status(status, generation=generation, message=str(exc)), body, patch)
        return

    model_name = spec["modelRef"]["name"]
    model = next(iter(models.get((namespace, model_name), ())), None)
    model_status: Mapping[str, Any] = (model or {}).get("status") or {}
    state = rollout.RolloutState.from_status(status)
    menu_sha = str(model_status.get("menuSha256") or "")
    if model is None or not menu_sha or not _keep_menu(runtime, namespace, model_name, menu_sha):
        if state.stable is None:  # nothing published yet: wait for the model
            desired = logic.waiting_status(
                status, generation=generation, reason="ModelNotReady",
                message=f"spec.modelRef.name: EdgeModel {namespace}/{model_name} "
                + ("does not exist" if model is None else "has no published menu yet"),
            )
            _write(status, desired, body, patch)
            return
        # The model is being rebuilt or went away: the fleet stays on what it runs.
        target = rollout.Target(state.stable.model, state.stable.menu_sha256, state.stable.menu_version,
                                state.stable.policy)
    else:
        target = rollout.Target(model_name, menu_sha, int(model_status.get("menuVersion") or 0),
                                dict(spec.get("policy") or {}))

    commands, problems = rollout.read_commands(spec, annotations)
    if commands.rollback_to is not None:
        entry = next((e for e in state.history if e.get("revision") == commands.rollback_to), None)
        if entry is not None and not _keep_menu(runtime, namespace, str(entry["model"]), str(entry["menuSha256"])):
            problems.append(f"annotation {ANNOTATION}rollback-to: the menu of revision {commands.rollback_to} "
                            "is no longer in the store")
            commands = rollout.Commands(paused=commands.paused, promote=commands.promote, abort=commands.abort,
                                        retry=commands.retry)

    # Convergence is counted against what the fleet runs: the stable revision (the target may be held back).
    summary = await _gateway_summary(runtime, namespace, name,
                                     state.stable.menu_version if state.stable else target.menu_version)
    run = None
    if rollout.analysis_due(state, strategy, now):
        stable_running = logic.running_on(summary, state.stable.number if state.stable else None)
        run = await _analyse(runtime, strategy, state, namespace, name, now, stable_has_data=stable_running > 0)
        runtime.metrics.analysis.labels(namespace, name, run.verdict).inc()
    decision = rollout.decide(state, strategy=strategy, target=target, now=now, commands=commands, run=run)

    plan = _plan_for(namespace, name, decision.state, spec.get("selector") or {})
    plan_sha, published = _publish_plan(runtime, namespace, name, plan)
    current = dict(status)
    published_at = seconds(status.get("planPublishedAt")) or now
    if published or status.get("planSha256") != plan_sha:
        current.pop("secondsToConverge", None)  # a new plan starts a new convergence
        published_at = now

    selected = logic.select_devices(spec.get("selector") or {}, devices)
    stable = decision.state.stable
    assert stable is not None
    menu = _load_menu(runtime, namespace, stable.model, stable.menu_sha256)
    assignment = logic.assign(menu["variants"], selected, stable.policy)
    desired = logic.fleet_status(
        current, generation=generation, assignment=assignment, menu_version=stable.menu_version,
        plan_sha256=plan_sha, plan_published_at=published_at,
        summary=summary, decision=decision, strategy=strategy,
    )
    if "secondsToConverge" not in desired and status.get("secondsToConverge") is not None:
        desired["secondsToConverge"] = None  # merge-patch null deletes the stale timing

    for event in decision.events:
        (kopf.warn if event.type == "Warning" else kopf.info)(body, reason=event.reason, message=event.message)
    for problem in problems:
        kopf.warn(body, reason="InvalidAnnotation", message=problem)
    if published:
        kopf.info(body, reason="PlanPublished", message=_plan_message(decision.state, plan_sha))
    if desired["phase"] != status.get("phase"):
        kopf.info(body, reason=desired["phase"], message=logic.phase_message(desired))
    _count(runtime, namespace, name, state, decision, now)
    if commands.any_annotation or problems:
        for key in ("promote", "abort", "retry", "rollback-to"):
            if ANNOTATION + key in annotations:
                patch.metadata.annotations[ANNOTATION + key] = None  # done: a command acts once
    _write(status, desired, body, patch, force=commands.any_annotation or bool(decision.events) or published)


def _plan_message(state: rollout.RolloutState, plan_sha: str) -> str:
    assert state.stable is not None
    text = f"stable revision {state.stable.number} (menu v{state.stable.menu_version})"
    if state.canary is not None and state.weight > 0:
        text += f", canary revision {state.canary.number} (menu v{state.canary.menu_version}) at {state.weight}%"
    return f"{text} ({plan_sha[:12]})"


def _count(runtime: Runtime, namespace: str, fleet: str, before: rollout.RolloutState,
           decision: rollout.Decision, now: float) -> None:
    metrics = runtime.metrics
    steps = sum(1 for event in decision.events if event.reason == "StepCompleted")
    if steps:
        metrics.steps.labels(namespace, fleet).inc(steps)
    started = before.started_at if before.canary is not None else now
    if decision.promoted:
        metrics.promotions.labels(namespace, fleet).inc()
        metrics.duration.labels("promoted").observe(max(0.0, now - started))
    if decision.rolled_back:
        reason = next((e.reason for e in decision.events if e.type == "Warning"), "RolledBack")
        metrics.rollbacks.labels(namespace, fleet, reason).inc()
        metrics.duration.labels("rolled_back").observe(max(0.0, now - started))
    metrics.canary_weight.labels(namespace, fleet).set(decision.state.weight / 100)  # a ratio, 0..1


def _write(status: Mapping[str, Any], desired: dict[str, Any], body: kopf.Body, patch: kopf.Patch,
           *, force: bool = False) -> None:
    """Patch status only on a significant change: status writes are API writes, kept O(steps) per rollout."""
    if force and logic.status_changed(status, desired) or logic.significant_change(status, desired):
        patch.status.update(desired)


def delete_plan(*, runtime: Runtime, name: str, namespace: str) -> None:
    """Removing the fleet withdraws its plan, so devices stop following it."""
    path = plan_key(plan_prefix(namespace, name))
    for key in (path, signature_key(path)):
        runtime.store.delete(key)
