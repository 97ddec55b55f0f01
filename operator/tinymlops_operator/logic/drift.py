"""The fleet's `Drifted` condition, from the drift groups of the gateway's summary (pure).

The gateway sums devices' histograms per revision × device class and scores them against the menu's
reference (`tinymlops.gateway.driftstate`); its summary lists each group with its rows, whether it was
scored (enough rows), whether it drifted and its most significant features.  A condition's reason is a
CamelCase word (metav1.Condition's pattern), so the classes, features and scores go in the message, and
`status.drifted` names the drifted groups (`<device class>/<revision>`): a write follows when that set
changes, never when only the scores move.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_GROUPS_SHOWN = 3


@dataclass(frozen=True)
class DriftVerdict:
    status: bool | None
    reason: str
    message: str
    drifted: tuple[str, ...]  # "<device class>/<revision>" of each drifted group, sorted


def _groups(summary: Mapping[str, Any] | None) -> Sequence[Mapping[str, Any]]:
    groups = (summary or {}).get("drift")
    return [g for g in groups if isinstance(g, Mapping)] if isinstance(groups, list) else []


def _describe(group: Mapping[str, Any]) -> str:
    features = ", ".join(f"{f.get('feature')} PSI {float(f.get('psi', 0.0)):.3g} (p={float(f.get('p_value', 1.0)):.2g})"
                         for f in group.get("top") or () if isinstance(f, Mapping))
    return f"{group.get('device_class')} on revision {group.get('revision')}: {features or 'drifted'}"


def drift_verdict(summary: Mapping[str, Any] | None) -> DriftVerdict:
    """True when any revision × class group drifted; Unknown until a group has enough rows to be scored."""
    if summary is None:
        return DriftVerdict(None, "GatewayUnavailable", "no device reports yet", ())
    groups = _groups(summary)
    if not groups:
        return DriftVerdict(None, "NoDriftTelemetry", "no device sends drift histograms "
                            "(spec.policy.telemetry.drift.mode is off, or no window has closed yet)", ())
    drifted = [g for g in groups if g.get("drifted")]
    if drifted:
        keys = tuple(sorted(f"{g.get('device_class')}/{g.get('revision')}" for g in drifted))
        shown = "; ".join(_describe(g) for g in drifted[:MAX_GROUPS_SHOWN])
        more = f" (and {len(drifted) - MAX_GROUPS_SHOWN} more)" if len(drifted) > MAX_GROUPS_SHOWN else ""
        return DriftVerdict(True, "InputDrift", shown + more, keys)
    scored = [g for g in groups if g.get("scored")]
    if not scored:
        waiting = ", ".join(f"{g.get('device_class')} on revision {g.get('revision')} {g.get('rows')}/"
                            f"{g.get('min_rows')} rows" for g in groups[:MAX_GROUPS_SHOWN])
        return DriftVerdict(None, "NotEnoughRows", f"too few rows to score yet: {waiting}", ())
    rows = sum(int(g.get("rows") or 0) for g in scored)
    return DriftVerdict(False, "NoDrift", f"{len(scored)} device class × revision groups scored over {rows} rows: "
                        "no feature drifted", ())
