"""What a device reports to KubeEdge about the model it runs: a twin property, reported vs desired (pure).

KubeEdge keeps each device property as a twin: `desired` (what the cloud wants) and
`reported` (what the device says).  The agent reports its active variant this way,
so `kubectl get devices` shows what each device runs (the local CRD copy has a
Variant column reading the first twin).  The desired value is not written per
device: the signed plan is the desired state for the whole fleet, which keeps
the control plane O(1); the twin's observedDesired echoes the plan the device follows.
"""

from __future__ import annotations

from typing import Any

ACTIVE_VARIANT = "active-variant"


def twin_status(*, variant: str | None, plan: str | None, state: str, now_ms: int) -> dict[str, Any]:
    """The Device `status` a device's mapper writes: its state and the active-variant twin."""
    metadata = {"timestamp": str(now_ms), "type": "string"}
    twin: dict[str, Any] = {
        "propertyName": ACTIVE_VARIANT,
        "reported": {"value": variant or "", "metadata": metadata},
    }
    if plan:
        twin["observedDesired"] = {"value": plan, "metadata": metadata}
    return {"state": state, "twins": [twin]}
