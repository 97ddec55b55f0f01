"""When a real device may take part in federated training: the fleet's `policy.federated`, read in one place.

    {"consent": false, "requireCharging": true, "requireUnmetered": true, "requireIdle": true}

Training costs the device energy, bandwidth and compute, and it touches the device's own data, so nothing
happens without `consent` (off by default: the fleet owner turns it on where the devices' users agreed).  With
consent, each requirement holds by default: on a charger (a mains-powered device, battery unknown, counts as
charging), on an unmetered network (Wi-Fi or wired; never offline), and idle (the device's application is not
using it).  `may_train` is pure: the agent evaluates it on its current context and stops its SuperNode the
moment it no longer holds.  The DeviceFleet CRD validates the same fields; a policy the agent cannot use raises
SpecError naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.selection.choice import DeviceContext

FIELDS = {"consent": "consent", "require_charging": "requireCharging", "require_unmetered": "requireUnmetered",
          "require_idle": "requireIdle"}


@dataclass(frozen=True)
class ParticipationPolicy:
    consent: bool = False
    require_charging: bool = True
    require_unmetered: bool = True
    require_idle: bool = True

    @classmethod
    def from_policy(cls, policy: Mapping[str, Any] | None) -> ParticipationPolicy:
        """The `federated` section of a fleet's policy (absent: no consent, so no training)."""
        section = (policy or {}).get("federated")
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise SpecError(f"policy.federated: expected an object, got {section!r}")
        unknown = sorted(set(section) - set(FIELDS.values()))
        if unknown:
            raise SpecError(f"policy.federated.{unknown[0]}: unknown field (known: {', '.join(FIELDS.values())})")
        values = {}
        for name, key in FIELDS.items():
            if key in section:
                if not isinstance(section[key], bool):
                    raise SpecError(f"policy.federated.{key}: expected true or false, got {section[key]!r}")
                values[name] = section[key]
        return cls(**values)


@dataclass(frozen=True)
class Participation:
    allowed: bool
    reason: str  # why not (naming the rule and the field), or what held


def may_train(policy: ParticipationPolicy, context: DeviceContext, *, idle: bool) -> Participation:
    """Whether the device may run its SuperNode now, and why (every unmet rule named, consent first)."""
    if not policy.consent:
        return Participation(False, "no consent to federated training (policy.federated.consent is not true)")
    unmet = []
    charging = context.charging or context.battery_pct is None
    if policy.require_charging and not charging:
        unmet.append(f"not charging (battery {context.battery_pct:g}%, policy.federated.requireCharging)")
    if policy.require_unmetered and context.network != "wifi":
        unmet.append(f"network is {context.network}, not unmetered (policy.federated.requireUnmetered)")
    elif context.network == "offline":
        unmet.append("offline: the SuperLink cannot be reached")
    if policy.require_idle and not idle:
        unmet.append("the device is busy, not idle (policy.federated.requireIdle)")
    if unmet:
        return Participation(False, "; ".join(unmet))
    held = ["consent"] + [what for what, rule in (("charging", policy.require_charging),
                                                   ("unmetered network", policy.require_unmetered),
                                                   ("idle", policy.require_idle)) if rule]
    return Participation(True, "may train: " + ", ".join(held))


def context_from_json(document: Mapping[str, Any], *, source: str) -> tuple[DeviceContext, bool]:
    """A device context file: {"battery_pct": 80 | null, "charging": true, "network": "wifi", "idle": true},
    kept current by the device's platform layer; the agent re-reads it while it trains."""
    if not isinstance(document, Mapping):
        raise SpecError(f"{source}: expected a JSON object")
    battery, charging, idle = document.get("battery_pct"), document.get("charging", False), document.get("idle")
    if battery is not None and (isinstance(battery, bool) or not isinstance(battery, (int, float))
                                or not 0 <= battery <= 100):
        raise SpecError(f"{source}: battery_pct must be a number in 0..100 or null, got {battery!r}")
    if not isinstance(charging, bool):
        raise SpecError(f"{source}: charging must be true or false, got {charging!r}")
    if not isinstance(idle, bool):
        raise SpecError(f"{source}: idle must be true or false (the device must say whether it is in use)")
    try:
        context = DeviceContext(battery_pct=None if battery is None else float(battery), charging=charging,
                                network=str(document.get("network", "wifi")))
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from exc
    return context, idle
