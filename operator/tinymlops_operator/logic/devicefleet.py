"""DeviceFleet decisions: which devices, which variant each gets, what status to show.

The operator predicts assignments with the same `context.choose` the agents
run, so `status.byVariant` says what the fleet *should* run, and the gateway
summary says what it *does* run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.agent.context import DeviceContext, SelectionPolicy, choose
from tinymlops.devices import DeviceCapabilities, capabilities_from_device
from tinymlops.errors import NoCompatibleVariantError, SpecError
from tinymlops.selectors import matches
from tinymlops_operator.logic.conditions import set_condition

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
    # 10,000 devices has a handful of hardware classes), and the reconcile stays cheap.
    decided: dict[frozenset[tuple[str, str]], str | Exception] = {}
    for name, labels in devices:
        total += 1
        key = frozenset(labels.items())
        if key not in decided:
            try:
                caps: DeviceCapabilities = capabilities_from_device({"metadata": {"name": "?", "labels": labels}})
                decided[key] = str(choose(variants, caps, selection, NEUTRAL).variant["id"])
            except (SpecError, NoCompatibleVariantError) as exc:
                decided[key] = exc
        outcome = decided[key]
        if isinstance(outcome, Exception):
            problems[name] = str(outcome).replace("device ?", f"device {name}")
        else:
            counts[outcome] += 1
    return Assignment(by_variant=dict(sorted(counts.items())), devices=total, problems=problems)


def fleet_status(
    status: Mapping[str, Any],
    *,
    generation: int,
    assignment: Assignment,
    menu_version: int,
    plan_sha256: str,
    plan_published_at: float,
    summary: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The whole `status` of a fleet whose model is ready; `summary` is the gateway's view (None: unknown)."""
    devices = assignment.devices
    converged = int(summary.get("converged", 0)) if summary else 0
    failed = int(summary.get("failed", 0)) if summary else 0
    by_phase = dict(summary.get("by_phase", {})) if summary else {}
    unassignable = len(assignment.problems)
    if unassignable:
        by_phase["Unassignable"] = unassignable
    if devices == 0:
        phase, ok, reason, message = "Pending", False, "NoDevices", "no device matches spec.selector"
    elif summary is None:
        phase, ok, reason, message = "Progressing", None, "GatewayUnavailable", "no device reports yet"
    elif converged >= devices - unassignable and not failed and not unassignable:
        phase, ok, reason, message = "Converged", True, "AllConverged", f"{converged}/{devices} devices converged"
    elif failed or unassignable:
        phase, ok, reason = "Degraded", False, "DevicesFailing"
        examples = "; ".join(list(assignment.problems.values())[:MAX_REPORTED_PROBLEMS])
        message = f"{converged}/{devices} converged, {failed} failed, {unassignable} unassignable" + (
            f" ({examples})" if examples else ""
        )
    else:
        phase, ok, reason, message = "Progressing", False, "Converging", f"{converged}/{devices} converged"

    seconds = status.get("secondsToConverge")
    if phase == "Converged" and summary and summary.get("last_converged_at") and seconds is None:
        seconds = round(max(0.0, float(summary["last_converged_at"]) - plan_published_at), 3)
    conditions = set_condition(
        status.get("conditions"),
        type="Ready",
        status=True,
        reason="PlanPublished",
        message=f"plan for menu v{menu_version} published",
        generation=generation,
    )
    conditions = set_condition(
        conditions, type="Converged", status=ok, reason=reason, message=message, generation=generation
    )
    result: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "planGeneration": generation,
        "menuVersion": menu_version,
        "planSha256": plan_sha256,
        "planPublishedAt": plan_published_at,
        "devices": devices,
        "converged": converged,
        "failed": failed,
        "byVariant": assignment.by_variant,
        "byPhase": dict(sorted(by_phase.items())),
        "conditions": conditions,
    }
    if seconds is not None:
        result["secondsToConverge"] = seconds
    return result


def waiting_status(status: Mapping[str, Any], *, generation: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "observedGeneration": generation,
        "conditions": set_condition(
            status.get("conditions"), type="Ready", status=False, reason=reason, message=message,
            generation=generation,
        ),
    }


def status_changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Write only what changed: status writes are API writes, and they must stay O(1) per step."""
    return any(current.get(key) != value for key, value in desired.items())
