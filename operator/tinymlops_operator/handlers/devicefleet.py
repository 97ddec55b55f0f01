"""DeviceFleet IO: run the rollout, publish the signed plan, write status.

`reconcile` reads as the steps of one pass, each a function below (the
observe step is `handlers/observe.py`; the decisions are pure, in `logic/`).
A plan is published only when the decided step changed it, or re-signed with a
new expiry when half of its lifetime has passed (a refresh: a store write, never
an API write), and status is patched only when something significant changed.  Devices are never listed to
them: the API writes per rollout depend on its steps, not on the fleet's size.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from tinymlops import signing
from tinymlops.errors import SpecError
from tinymlops.freshness import expires_after
from tinymlops.layout import kept_menu, menu_key, menu_prefix, plan_key, plan_prefix, signature_key
from tinymlops.merge_patch import merge_patch
from tinymlops.plan import content_sha256, plan_bytes, same_plan
from tinymlops.selection.hybrid import HybridPolicy
from tinymlops.store import digest_matches
from tinymlops_operator.handlers.observe import observe
from tinymlops_operator.logic import devicefleet as logic
from tinymlops_operator.logic import rollout
from tinymlops_operator.logic.analysis import AnalysisRun
from tinymlops_operator.logic.plan import plan_for, plan_message, plan_ttl, published_at, refresh_due
from tinymlops_operator.logic.rejections import rejection_event
from tinymlops_operator.logic.strategy import Strategy, parse_strategy
from tinymlops_operator.logic.upgrade import upgraded_status
from tinymlops_operator.runtime import Runtime

DeviceEntry = tuple[str, Mapping[str, str]]


def _load_menu(runtime: Runtime, namespace: str, model: str, menu_sha256: str, licensee: str = "") -> dict[str, Any]:
    path, _ = kept_menu(namespace, model, menu_sha256, licensee)
    if path not in runtime.menus:  # kept by digest: immutable, so parsed once
        runtime.menus[path] = json.loads(runtime.store.get(path))
    return runtime.menus[path]


def _keep_menu(runtime: Runtime, namespace: str, model: str, menu_sha256: str, licensee: str = "") -> bool:
    """Copy the model's current menu (or `licensee`'s) to its content-addressed name, which plans point at:
    menu.json moves on with the next build, and a rollback must still find the stable revision's menu.
    False: not available."""
    path, signature_path = kept_menu(namespace, model, menu_sha256, licensee)
    if runtime.store.exists(path) and runtime.store.exists(signature_path):
        return True
    current_path = menu_key(menu_prefix(namespace, model, licensee))
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


def _publish_plan(runtime: Runtime, namespace: str, fleet: str, plan: dict[str, Any], *, ttl_s: float,
                  now: float) -> tuple[str, bool]:
    """Write plan.json + plan.sig unless an equal plan is already published and not yet due for a refresh
    (restart-safe).  Returns the plan's `content_sha256` and whether its content is new (a refresh is not).

    The serial only grows, even across a deleted and re-created fleet: it starts from the clock."""
    path = plan_key(plan_prefix(namespace, fleet))
    previous: dict[str, Any] | None = None
    try:
        previous = json.loads(runtime.store.get(path))
    except (FileNotFoundError, ValueError):
        previous = None
    new = previous is None or not isinstance(previous, dict) or not same_plan(previous, plan)
    if not new and previous is not None and not refresh_due(previous, now, ttl_s):
        return content_sha256(plan), False
    serial = max(int((previous or {}).get("serial") or 0) + 1, int(now * 1000))
    data = plan_bytes({**plan, "serial": serial, "expires": expires_after(now, ttl_s)})
    # Two atomic writes, not one: a device polling in between sees a signature mismatch,
    # rejects that plan and simply takes the new one at its next poll.
    runtime.store.put(signature_key(path), signing.sign(runtime.signing_key, data).encode())
    runtime.store.put(path, data)
    return content_sha256(plan), new


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
    """One pass over the fleet: upgrade an earlier status layout → resolve the target → read the user's
    commands → observe (gateway, analysis) → decide → publish the plan → report (events, metrics, annotations,
    status)."""
    now = time.time()
    status = _upgrade(status, patch)
    try:
        strategy = parse_strategy(spec)
        HybridPolicy.from_policy(spec.get("policy"))  # a wrong hybrid field is named before any device sees it
    except SpecError as exc:
        # The plan already published keeps serving; nothing new goes out until the spec makes sense.
        _write(status, logic.invalid_status(status, generation=generation, message=str(exc)), body, patch)
        return
    state = rollout.RolloutState.from_status(status)
    model_name = spec["modelRef"]["name"]
    model = next(iter(models.get((namespace, model_name), ())), None)
    unknown = logic.unknown_licensee(spec, model, namespace)
    if unknown is not None:
        # The plan already published keeps serving; no menu of another licensee is ever offered instead.
        desired = logic.invalid_status(status, generation=generation, message=unknown, reason="UnknownLicensee")
        if logic.significant_change(status, desired):
            kopf.warn(body, reason="UnknownLicensee", message=unknown)  # once, as the condition appears
        _write(status, desired, body, patch)
        return
    target = _resolve_target(runtime, namespace, spec, model, state)
    if target is None:  # nothing published yet: wait for the model
        _write(status, logic.model_not_ready_status(status, generation=generation, namespace=namespace,
                                                    model=model_name, exists=model is not None,
                                                    licensee=str(spec.get("licensee") or "")), body, patch)
        return
    commands, problems = _read_commands(runtime, namespace, spec, annotations, state)
    observed = await observe(runtime, namespace, name, strategy=strategy, state=state, target=target, now=now)
    decision = rollout.decide(state, strategy=strategy, target=target, now=now, commands=commands, run=observed.run)
    plan_sha, published = _publish_plan(runtime, namespace, name,
                                        plan_for(namespace, name, decision.state, spec.get("selector") or {}),
                                        ttl_s=plan_ttl(spec, runtime.settings.plan_ttl_s), now=now)
    desired = _desired_status(runtime, namespace, spec, status, devices, generation=generation, strategy=strategy,
                              decision=decision, summary=observed.summary, plan_sha=plan_sha, now=now)
    _announce(body, logic.fleet_events(
        decision, problems, plan_message=plan_message(decision.state, plan_sha) if published else None,
        phase_before=status.get("phase"), desired=desired, drifted_before=status.get("drifted")))
    _announce(body, _rejections(runtime, namespace, name, observed.summary, now))
    _count(runtime, namespace, name, state, decision, observed.run, now)
    for key in rollout.consumed_annotations(annotations, commands, problems):
        patch.metadata.annotations[key] = None
    _write(status, desired, body, patch, force=commands.any_annotation or bool(decision.events) or published)


def _upgrade(status: Mapping[str, Any], patch: kopf.Patch) -> Mapping[str, Any]:
    """The status as this pass reads it: in the current layout (`logic/upgrade.py`).  The move rides in this
    pass's own status patch, so a fleet that needs none costs nothing and one that does costs no extra write."""
    upgrade = upgraded_status(status)
    if upgrade is None:
        return status
    patch.status.update(upgrade)
    upgraded: Mapping[str, Any] = merge_patch(status, upgrade)
    return upgraded


def _resolve_target(
    runtime: Runtime, namespace: str, spec: Mapping[str, Any], model: Mapping[str, Any] | None,
    state: rollout.RolloutState,
) -> rollout.Target | None:
    """What the fleet should run: the model's latest menu (its spec.licensee's watermarked one, when it names
    a licensee) with spec.policy, once that menu is kept in the store.  While the model is being rebuilt or
    went away, the stable revision; None before there is one."""
    model_name = spec["modelRef"]["name"]
    licensee = str(spec.get("licensee") or "")
    menu = logic.licensee_menu((model or {}).get("status") or {}, licensee)
    if model is not None and menu is not None and _keep_menu(runtime, namespace, model_name, menu[0], licensee):
        return rollout.Target(model_name, menu[0], menu[1], dict(spec.get("policy") or {}), licensee)
    return state.stable.target if state.stable is not None else None


def _read_commands(
    runtime: Runtime, namespace: str, spec: Mapping[str, Any], annotations: Mapping[str, str],
    state: rollout.RolloutState,
) -> tuple[rollout.Commands, list[str]]:
    """The user's commands, and a problem per annotation not followed: a rollback to a revision whose
    menu has left the store is refused."""
    commands, problems = rollout.read_commands(spec, annotations)
    entry = next((e for e in state.history if e.get("revision") == commands.rollback_to), None)
    if entry is not None and not _keep_menu(runtime, namespace, str(entry["model"]), str(entry["menuSha256"]),
                                            str(entry.get("licensee") or "")):
        problems.append(f"annotation {rollout.ANNOTATION}rollback-to: the menu of revision {commands.rollback_to} "
                        "is no longer in the store")
        commands = dataclasses.replace(commands, rollback_to=None)
    return commands, problems


def _desired_status(
    runtime: Runtime, namespace: str, spec: Mapping[str, Any], status: Mapping[str, Any],
    devices: Iterable[DeviceEntry], *, generation: int, strategy: Strategy, decision: rollout.Decision,
    summary: Mapping[str, Any] | None, plan_sha: str, now: float,
) -> dict[str, Any]:
    """The fleet's status after this pass, with the variants its devices should choose from the stable menu."""
    stable = decision.state.stable
    assert stable is not None
    menu = _load_menu(runtime, namespace, stable.model, stable.menu_sha256, stable.licensee)
    selected = logic.select_devices(spec.get("selector") or {}, devices)
    return logic.fleet_status(
        status, generation=generation, assignment=logic.assign(menu["variants"], selected, stable.policy),
        menu_version=stable.menu_version, plan_sha256=plan_sha, plan_published_at=published_at(status, plan_sha, now),
        summary=summary, decision=decision, strategy=strategy,
    )


def _announce(body: kopf.Body, events: Iterable[rollout.Event]) -> None:
    for event in events:
        (kopf.warn if event.type == "Warning" else kopf.info)(body, reason=event.reason, message=event.message)


def _rejections(runtime: Runtime, namespace: str, fleet: str, summary: Mapping[str, Any] | None,
                now: float) -> list[rollout.Event]:
    """A ReportsRejected Warning when a device keeps sending reports the gateway refuses (none otherwise)."""
    key = (namespace, fleet)
    event, runtime.rejections_announced[key] = rejection_event(
        (summary or {}).get("rejected"), runtime.rejections_announced.get(key, {}), now=now)
    return [event] if event is not None else []


def _count(runtime: Runtime, namespace: str, fleet: str, before: rollout.RolloutState,
           decision: rollout.Decision, run: AnalysisRun | None, now: float) -> None:
    metrics = runtime.metrics
    if run is not None:
        metrics.analysis.labels(namespace, fleet, run.verdict).inc()
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
    runtime.rejections_announced.pop((namespace, name), None)
