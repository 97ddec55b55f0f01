"""`status.conditions` the Kubernetes way (metav1.Condition), as a pure function."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    *,
    type: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return `conditions` with `type` set; lastTransitionTime moves only when status flips."""
    text = {True: "True", False: "False", None: "Unknown"}[status]
    result: list[dict[str, Any]] = []
    previous: Mapping[str, Any] | None = None
    for condition in conditions or ():
        if condition.get("type") == type:
            previous = condition
        else:
            result.append(dict(condition))
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == text and previous.get("lastTransitionTime")
        else (now or now_rfc3339())
    )
    result.append(
        {
            "type": type,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": transition,
            "observedGeneration": generation,
        }
    )
    return sorted(result, key=lambda c: str(c["type"]))


def condition_status(conditions: Sequence[Mapping[str, Any]] | None, type: str) -> str | None:
    for condition in conditions or ():
        if condition.get("type") == type:
            return str(condition.get("status"))
    return None
