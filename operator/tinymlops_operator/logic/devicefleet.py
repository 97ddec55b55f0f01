"""DeviceFleet decisions: which devices, which variant each gets, what status to show.

The operator predicts assignments with the same `tinymlops.selection.choose`
the agents run, so `status.byVariant` says what the fleet *should* run, and the gateway
summary says what it *does* run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinymlops.devices import capabilities_from_labels
from tinymlops.errors import NoCompatibleVariantError, SpecError
from tinymlops.labelselector import matches
from tinymlops.merge_patch import merge_patch
from tinymlops.report import OFFLINE  # the gateway's phase for devices silent too long
from tinymlops.selection import DeviceContext, SelectionPolicy, choose
from tinymlops.timestamps import rfc3339
from tinymlops_operator.logic.conditions import condition_status, set_condition
from tinymlops_operator.logic.drift import drift_verdict
from tinymlops_operator.logic.edgemodel import licensees_of
from tinymlops_operator.logic.rollout import Decision, Event
from tinymlops_operator.logic.strategy import Strategy

MAX_REPORTED_PROBLEMS = 5
NEUTRAL = DeviceContext()


@dataclass(frozen=True)
class Assignment:
    by_variant: dict[str, int]
    devices: int
    # device name -> why it cannot run anything (capped when reported)
    problems: dict[str, str] = field(default_factory=dict)


def select_devices(
    selector: Mapping[str, Any], devices: Iterable[tuple[str, Mapping[str, str]]]
) -> list[tuple[str, Mapping[str, str]]]:
    return [(name, labels) for name, labels in devices if matches(selector, labels)]


def assign(
    variants: list[Mapping[str, Any]], devices: Iterable[tuple[str, Mapping[str, str]]], policy: Mapping[str, Any]
) -> Assignment:
    """What each device would choose in a neutral context (mains power, Wi-Fi): the same function devices run,
    so the prediction matches them until their own context (battery, network) says otherwise."""
    selection = SelectionPolicy.from_plan(policy)
    counts: Counter[str] = Counter()
    problems: dict[str, str] = {}
    total = 0
    # Devices with the same capability labels choose alike: decide once per distinct set (a fleet of
    # 10,000 devices has a handful of hardware classes), and the reconcile stays cheap.  A device that
    # can run nothing is not remembered: each is checked under its own name, so its problem names it, and
    # that check stops at the labels or the hard filters, before any scoring.
    chosen: dict[frozenset[tuple[str, str]], str] = {}
    for name, labels in devices:
        total += 1
        key = frozenset(labels.items())
        if key not in chosen:
            try:
                caps = capabilities_from_labels(labels, name=name)
                chosen[key] = str(choose(variants, caps, selection, NEUTRAL).variant["id"])
            except (SpecError, NoCompatibleVariantError) as exc:
                problems[name] = str(exc)
                continue
        counts[chosen[key]] += 1
    return Assignment(by_variant=dict(sorted(counts.items())), devices=total, problems=problems)


def running_on(summary: Mapping[str, Any] | None, revision: int | None) -> int:
    """Devices the gateway saw Running on `revision` (and following it)."""
    if not summary or revision is None:
        return 0
    return int(((summary.get("by_revision") or {}).get(str(revision)) or {}).get("Running", 0))


def fleet_status(
    status: Mapping[str, Any],
    *,
    generation: int,
    assignment: Assignment,
    menu_version: int,
    plan_sha256: str,
    plan_published_at: float,
    summary: Mapping[str, Any] | None,
    decision: Decision,
    strategy: Strategy,
) -> dict[str, Any]:
    """The whole `status` of a fleet whose model is ready; `summary` is the gateway's view (None: unknown).

    Phase: Progressing (a canary moves, or devices converge), Paused (by the user, a step waiting for
    promotion, or an inconclusive analysis), Healthy (the stable revision runs on enough of the online
    devices), Degraded (rolled back, devices failing or unassignable)."""
    state = decision.state
    stable = state.stable
    assert stable is not None
    devices = assignment.devices
    failed = int(summary.get("failed", 0)) if summary else 0
    stale = int(summary.get("stale", 0)) if summary else 0
    by_phase = dict(summary.get("by_phase", {})) if summary else {}
    unassignable = len(assignment.problems)
    if unassignable:
        by_phase["Unassignable"] = unassignable
    converged = running_on(summary, stable.number) + (running_on(summary, state.canary.number) if state.canary else 0)
    online = max(0, devices - int(by_phase.get(OFFLINE, 0)) - unassignable)
    needed = math.ceil(online * strategy.complete_pct / 100.0)

    if devices == 0:
        phase, ok, reason, message = "Pending", False, "NoDevices", "no device matches spec.selector"
    elif state.canary is not None:
        # A step stuck past progressDeadlineSeconds is Degraded (as in Argo Rollouts), still at its step.
        phase = "Degraded" if decision.reason == "ProgressDeadlineExceeded" else (
            decision.hold if decision.hold == "Paused" else "Progressing")
        ok, reason, message = False, decision.reason, decision.message
    elif state.abort_reason:
        phase, ok, reason, message = "Degraded", False, "RolloutAborted", (
            f"{state.abort_reason}; running stable revision {stable.number}")
    elif summary is None:
        phase, ok, reason, message = "Progressing", None, "GatewayUnavailable", "no device reports yet"
    elif failed or unassignable:
        phase, ok, reason = "Degraded", False, "DevicesFailing"
        examples = "; ".join(list(assignment.problems.values())[:MAX_REPORTED_PROBLEMS])
        message = f"{converged}/{devices} converged, {failed} failed, {unassignable} unassignable" + (
            f" ({examples})" if examples else ""
        )
    elif converged >= needed and converged > 0:
        phase, ok, reason, message = "Healthy", True, "AllConverged" if converged >= devices else "Converged", (
            f"{converged}/{devices} devices run stable revision {stable.number}")
    else:
        phase, ok, reason, message = "Progressing", False, "Converging", (
            f"{converged}/{devices} devices run stable revision {stable.number}")

    # A plan other than the one `status` records starts a new convergence.
    to_converge = status.get("secondsToConverge") if status.get("planSha256") == plan_sha256 else None
    if phase == "Healthy" and summary and summary.get("last_converged_at") and to_converge is None:
        to_converge = round(max(0.0, float(summary["last_converged_at"]) - plan_published_at), 3)
    conditions = set_condition(
        status.get("conditions"), type="Ready", status=True, reason="PlanPublished",
        message=f"plan for revision {stable.number} (menu v{menu_version}) published", generation=generation,
    )
    conditions = set_condition(
        conditions, type="Progressing", status=state.canary is not None and decision.hold != "Paused",
        reason=decision.reason, message=decision.message, generation=generation,
    )
    conditions = set_condition(
        conditions, type="Converged", status=ok, reason=reason, message=message, generation=generation
    )
    drift = drift_verdict(summary)
    conditions = set_condition(
        conditions, type="Drifted", status=drift.status, reason=drift.reason, message=drift.message,
        generation=generation,
    )
    result: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "planGeneration": generation,
        "menuVersion": menu_version,
        "planSha256": plan_sha256,
        "planPublishedAt": rfc3339(plan_published_at),
        "devices": devices,
        "converged": converged,
        "failed": failed,
        "byVariant": assignment.by_variant,
        # A merge patch: a phase no device is in any more is deleted (null), or it would stay counted for ever.
        "byPhase": {**{k: None for k in status.get("byPhase") or {} if k not in by_phase},
                    **dict(sorted(by_phase.items()))},
        "byRevision": {rev: dict(sorted(v.items())) for rev, v in sorted(
            ((summary or {}).get("running_by_revision") or {}).items())},
        "conditions": conditions,
        **state.as_status(),
    }
    if stale:
        result["stale"] = stale
    elif status.get("stale"):
        result["stale"] = None  # merge-patch null: none is stale any more
    if drift.drifted:
        result["drifted"] = list(drift.drifted)
    elif status.get("drifted"):
        result["drifted"] = None  # merge-patch null: nothing drifts any more
    if to_converge is not None:
        result["secondsToConverge"] = to_converge
    elif status.get("secondsToConverge") is not None:
        result["secondsToConverge"] = None  # merge-patch null deletes the timing of an earlier plan
    return result


def invalid_status(status: Mapping[str, Any], *, generation: int, message: str,
                   reason: str = "InvalidSpec") -> dict[str, Any]:
    """The spec makes no sense (the message names the field): Degraded, and the published plan stays."""
    return {
        "phase": "Degraded",
        "observedGeneration": generation,
        "conditions": set_condition(
            status.get("conditions"), type="Ready", status=False, reason=reason, message=message,
            generation=generation,
        ),
    }


def unknown_licensee(spec: Mapping[str, Any], model: Mapping[str, Any] | None, namespace: str) -> str | None:
    """Why spec.licensee cannot be followed, a check across two objects that no CRD schema can make: the
    EdgeModel does not list the licensee in spec.watermark.licensees.  None: fine, or no EdgeModel yet (the
    fleet then waits for its model as any fleet does)."""
    licensee = str(spec.get("licensee") or "")
    if not licensee or model is None:
        return None
    listed = licensees_of(model.get("spec") or {})
    if licensee in listed:
        return None
    name = (model.get("metadata") or {}).get("name", spec["modelRef"]["name"])
    return (f"spec.licensee: {licensee!r} is not a licensee of EdgeModel {namespace}/{name} "
            + (f"(spec.watermark.licensees: {', '.join(listed)})" if listed else "(it has no spec.watermark)"))


def licensee_menu(model_status: Mapping[str, Any], licensee: str) -> tuple[str, int] | None:
    """The digest and version of `licensee`'s watermarked menu as the EdgeModel's status lists it (None: not
    built yet); without a licensee, the model's own menu."""
    if not licensee:
        sha = str(model_status.get("menuSha256") or "")
        return (sha, int(model_status.get("menuVersion") or 0)) if sha else None
    entry = next((e for e in model_status.get("licensees") or () if e.get("licensee") == licensee), None)
    if entry is None or not entry.get("menuSha256"):
        return None
    return str(entry["menuSha256"]), int(entry.get("menuVersion") or 0)


def phase_message(status: Mapping[str, Any]) -> str:
    for type_ in ("Converged", "Ready"):
        for condition in status.get("conditions") or ():
            if condition.get("type") == type_:
                return str(condition.get("message", ""))
    return ""


def waiting_status(status: Mapping[str, Any], *, generation: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "observedGeneration": generation,
        "conditions": set_condition(
            status.get("conditions"), type="Ready", status=False, reason=reason, message=message,
            generation=generation,
        ),
    }


def model_not_ready_status(
    status: Mapping[str, Any], *, generation: int, namespace: str, model: str, exists: bool, licensee: str = "",
) -> dict[str, Any]:
    """Nothing was ever published for the fleet, and its model has no menu to start with (for the fleet's
    licensee, when it names one)."""
    menu = f"no published menu for licensee {licensee} yet" if licensee else "no published menu yet"
    return waiting_status(
        status, generation=generation, reason="ModelNotReady",
        message=f"spec.modelRef.name: EdgeModel {namespace}/{model} " + (f"has {menu}" if exists else "does not exist"),
    )


def drift_events(drifted_before: Sequence[str] | None, desired: Mapping[str, Any]) -> list[Event]:
    """A Warning when a device class × revision starts drifting, a Normal event when none drifts any more."""
    conditions = desired.get("conditions")
    if condition_status(conditions, "Drifted") is None:
        return []  # an invalid or waiting status: drift is not looked at
    before, now = set(drifted_before or ()), set(desired.get("drifted") or ())
    message = next((str(c.get("message", "")) for c in conditions or () if c.get("type") == "Drifted"), "")
    if now - before:
        return [Event("Warning", "Drifted", message)]
    if before and not now:
        return [Event("Normal", "DriftCleared", message)]
    return []


def fleet_events(
    decision: Decision, problems: Iterable[str], *, plan_message: str | None, phase_before: str | None,
    desired: Mapping[str, Any], drifted_before: Sequence[str] | None = None,
) -> list[Event]:
    """What one reconcile tells people, in order: the rollout's transitions, the annotations it could not
    follow, the plan it published (`plan_message`; None: none), drift starting or ending (`drifted_before`:
    the groups `status.drifted` named) and the phase the fleet entered."""
    events = list(decision.events)
    events += [Event("Warning", "InvalidAnnotation", problem) for problem in problems]
    if plan_message is not None:
        events.append(Event("Normal", "PlanPublished", plan_message))
    events += drift_events(drifted_before, desired)
    if desired["phase"] != phase_before:
        events.append(Event("Normal", desired["phase"], phase_message(desired)))
    return events


def status_changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether patching `desired` would change anything at all: a patch that changes nothing is not sent."""
    before = merge_patch({}, current)  # the server never holds a None: it deletes the key
    return bool(merge_patch(before, desired) != before)


# Counts that move with every device report; written only along with a significant change.
VOLATILE = frozenset({"converged", "failed", "devices", "byPhase", "byVariant", "byRevision", "planPublishedAt",
                      "stale"})
CONVERGED_STEPS = 20  # the converged share is significant in 5% steps


def _signature(status: Mapping[str, Any]) -> dict[str, Any]:
    devices = int(status.get("devices") or 0)
    share = int(status.get("converged") or 0) * CONVERGED_STEPS // devices if devices else -1
    stable = {k: v for k, v in status.items() if k not in VOLATILE and k not in ("conditions", "rollout")}
    rollout = status.get("rollout") or {}
    return {
        **stable,
        "conditions": sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("observedGeneration"))
                             for c in status.get("conditions") or ()),
        # Each analysis run has a new time and new values: only its verdict is worth a write.
        "rollout": {k: v for k, v in rollout.items() if k != "analysis"},
        "analysis": (rollout.get("analysis") or {}).get("verdict"),
        "convergedShare": share,
        "anyFailed": bool(status.get("failed")),
        "anyStale": bool(status.get("stale")),  # a frozen mirror is news; how many devices it holds rides along
        "noDevices": devices == 0,
    }


def significant_change(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether the status is worth an API write: a phase, step, revision, condition or analysis verdict
    changed, or the converged share crossed a 5% step.  Exact counts ride along with the next such write,
    so a fleet of 10,000 devices converging costs the same writes as one of 1,000."""
    # What the server would hold after the merge patch, at every depth (status.rollout carries nested Nones
    # that delete keys), against what it holds now.
    before = merge_patch({}, current)
    return _signature(before) != _signature(merge_patch(before, desired))
