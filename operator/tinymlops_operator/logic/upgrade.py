"""A DeviceFleet status in the earlier layout, moved once to the current one (pure).

Operators before the rollout state moved under one key kept part of it at the
top of `status`: the last analysis run (`analysis`), the revisions
`tinymlops.io/rollback-to` picks from (`history`), and the canary's step and
weight (`currentStepIndex`, `canaryWeight`), which are now only the printer
columns' views of `status.rollout.stepIndex` and `status.rollout.weight`.
`RolloutState.from_status` reads the current layout only, so a fleet such an
operator wrote would lose its history and, mid-canary, its step and weight.

`upgraded_status` is the one place that reads the earlier layout: the reconcile
applies it before it reads the state and sends it with its own status patch.
A status in the current layout needs nothing (None), so the steady path costs
no write.  Nothing a user has is dropped: a field already under
`status.rollout` wins over its earlier copy, and revisions found in only one of
the two histories are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinymlops_operator.logic.rollout import MAX_HISTORY

# Earlier top-level key -> its key under status.rollout.
MOVED = {"analysis": "analysis", "history": "history", "currentStepIndex": "stepIndex", "canaryWeight": "weight"}
# Deleted from the top once moved; the other two stay, rewritten from status.rollout as printer columns.
RETIRED = ("analysis", "history")


def upgraded_status(status: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that moves the earlier layout's fields under `status.rollout` and deletes the
    retired top-level copies; None when `status` is in the current layout already."""
    rollout = status.get("rollout") or {}
    moved = {new: status[old] for old, new in MOVED.items()
             if status.get(old) is not None and rollout.get(new) is None}
    if status.get("history") and rollout.get("history"):
        moved["history"] = _merged_history(rollout["history"], status["history"])
    retired = {old: None for old in RETIRED if status.get(old) is not None}
    if not moved and not retired:
        return None
    return {**retired, "rollout": moved} if moved else retired


def _merged_history(current: list[Mapping[str, Any]], earlier: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Both histories by revision number (newest last), the entry under status.rollout winning a tie."""
    by_revision = {entry.get("revision"): dict(entry) for entry in earlier}
    by_revision.update((entry.get("revision"), dict(entry)) for entry in current)
    return [by_revision[number] for number in sorted(by_revision, key=lambda n: int(n or 0))][-MAX_HISTORY:]
