"""Which variant a device runs now: hard filters, then the fleet's policy adjusted by the device's context (pure).

`choose` takes the menu, the device's capabilities, the fleet's `SelectionPolicy` and the device's
`DeviceContext` (battery, charger, network, user preference, temperature); no IO, no clock.  The device
agent calls it on its cached signed menu, so it can switch variant offline when the battery drops or the
charger is plugged in, and say why; the operator calls it in a neutral context to predict what its
fleet should run.  Variants the device cannot run (`filters.rejection_reason`) are never scored.

Context rules (weight rules multiply a policy weight, and a weight of 0 stays 0 so a fleet can opt out):
- battery below `low_battery_pct` and not charging: energy weighted x10, and at least as much as accuracy
  (and size x1.5 on a metered network).
- charging, or mains-powered (`battery_pct` None): no battery rule.
- user preference "battery-saver": like low battery (the energy rule applies once, whatever triggered it).
- temperature above 70 °C: like low battery (a hot device throttles; cheaper kernels heat it less).
- user preference "performance": latency weighted x2, energy /2.
- metered network or "data-saver": a candidate that is neither active nor cached costs a download,
  a penalty of `METERED_PENALTY_PER_MIB` score units per MiB, so small gains do not switch.
- network "offline": only variants whose blob is cached (the active one counts: it is loaded) may be chosen.

Scoring (lower is better): each cost is put in one unit so that weights compare: accuracy costs the
points lost against the best candidate (0.3 = 0.3 percentage points), latency, size and energy cost
log2(value / best value), i.e. one doubling weighs as much as one accuracy point.  The score is the
weighted mean of the costs (weights divided by their sum) plus any download penalty; ties break on id.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import NoCompatibleVariantError, SpecError
from tinymlops.selection.energy import TargetModel, energy_mj, target_model
from tinymlops.selection.energy import host_latency_ms as latency_ms
from tinymlops.selection.filters import rejection_reason
from tinymlops.selection.policy import COSTS, OBJECTIVE_WEIGHTS, SelectionPolicy

Variant = Mapping[str, Any]

NETWORKS = ("wifi", "metered", "offline")
PREFERENCES = ("performance", "battery-saver", "data-saver")
LOW_BATTERY_ENERGY_FACTOR = 10.0
METERED_LOW_BATTERY_SIZE_FACTOR = 1.5
PERFORMANCE_LATENCY_FACTOR = 2.0
PERFORMANCE_ENERGY_FACTOR = 0.5
HOT_C = 70.0
# A 1 MiB download on a metered link costs as much as one accuracy point: a phone-sized model
# (tens of MiB) then waits for Wi-Fi unless the gain is large; a 100 KB micro model barely pays.
METERED_PENALTY_PER_MIB = 1.0

_EPS = 1e-9


@dataclass(frozen=True)
class DeviceContext:
    """What the device knows about its situation right now; the default is the neutral context."""

    battery_pct: float | None = None  # None: mains-powered
    charging: bool = False
    network: str = "wifi"  # "wifi" | "metered" | "offline"
    user_preference: str | None = None  # None | "performance" | "battery-saver" | "data-saver"
    temperature_c: float | None = None  # optional; hot devices prefer cheaper variants

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise SpecError(f"context.network: {self.network!r} is not one of {', '.join(NETWORKS)}")
        if self.user_preference is not None and self.user_preference not in PREFERENCES:
            raise SpecError(
                f"context.user_preference: {self.user_preference!r} is not one of {', '.join(PREFERENCES)}"
            )


@dataclass(frozen=True)
class Choice:
    """The chosen variant and why."""

    variant: Mapping[str, Any]
    reason: str  # which weights, which context rules, what the choice gains or loses
    scores: Mapping[str, float]  # variant id -> score (lower is better) for every candidate scored
    weights: Mapping[str, float]  # the effective weights, before dividing by their sum


def effective_weights(policy: SelectionPolicy, context: DeviceContext) -> tuple[dict[str, float], list[str]]:
    """The policy's weights after the context rules, and a sentence for each rule that fired."""
    base = policy.weights if policy.weights is not None else OBJECTIVE_WEIGHTS[policy.objective]
    weights = {cost: float(base.get(cost, 0.0)) for cost in COSTS}
    rules: list[str] = []
    saving: list[str] = []
    battery = context.battery_pct
    if battery is not None and battery < policy.low_battery_pct:
        if context.charging:
            rules.append(f"battery {battery:g}% < {policy.low_battery_pct:g}% but charging: no battery rule")
        else:
            saving.append(f"battery {battery:g}% < {policy.low_battery_pct:g}% and not charging")
    if context.user_preference == "battery-saver":
        saving.append("user prefers battery-saver")
    if context.temperature_c is not None and context.temperature_c > HOT_C:
        saving.append(f"temperature {context.temperature_c:g} °C > {HOT_C:g} °C")
    if saving:
        # At least as much as accuracy: on a low battery, a doubling of energy costs a point of accuracy.
        weights["energy"] = max(weights["energy"] * LOW_BATTERY_ENERGY_FACTOR, weights["accuracy"])
        rule = f"{', '.join(saving)}: energy weighted x{LOW_BATTERY_ENERGY_FACTOR:g}, at least as accuracy"
        if context.network == "metered":
            weights["size"] *= METERED_LOW_BATTERY_SIZE_FACTOR
            rule += f", size x{METERED_LOW_BATTERY_SIZE_FACTOR:g} (metered network: a download costs)"
        rules.append(rule)
    if context.user_preference == "performance":
        weights["latency"] *= PERFORMANCE_LATENCY_FACTOR
        weights["energy"] *= PERFORMANCE_ENERGY_FACTOR
        rules.append(
            f"user prefers performance: latency weighted x{PERFORMANCE_LATENCY_FACTOR:g}, "
            f"energy x{PERFORMANCE_ENERGY_FACTOR:g}"
        )
    return weights, rules


def choose(
    variants: Sequence[Variant],
    caps: DeviceCapabilities,
    policy: SelectionPolicy,
    context: DeviceContext,
    *,
    exclude: Collection[str] = (),
    active_sha256: str | None = None,
    cached: Collection[str] = (),
    operators: Collection[str] | None = None,
) -> Choice:
    """The best variant for this device now.

    `exclude`: sha256s that failed here before; `cached`: sha256s whose blob is on the device;
    `operators`: the operators the device's runtime supports (None: unknown, not checked).
    """
    weights, rules = effective_weights(policy, context)
    rejected: dict[str, str] = {}
    fit: list[Variant] = []
    for variant in variants:
        why = _hard_filter(variant, caps, exclude, operators)
        if why is None:
            fit.append(variant)
        else:
            rejected[str(variant.get("id"))] = why
    local = set(cached) | ({active_sha256} if active_sha256 else set())
    if context.network == "offline":
        kept = [v for v in fit if str(v.get("sha256")) in local]
        rejected.update({str(v.get("id")): "not cached and the device is offline"
                         for v in fit if str(v.get("sha256")) not in local})
        rules.append(f"offline: only cached variants ({len(kept)} of {len(fit)} that fit)")
        fit = kept
    if not fit:
        detail = "; ".join(f"{vid}: {why}" for vid, why in sorted(rejected.items())) or "menu is empty"
        raise NoCompatibleVariantError(f"device {caps.name} can run no variant ({detail})")

    accuracy_key = "accuracy" if all("accuracy" in v.get("metrics", {}) for v in fit) else "agreement"
    best_accuracy = max(_accuracy(v, accuracy_key) for v in fit)
    drop = policy.max_accuracy_drop
    if drop is not None:
        within = [v for v in fit if best_accuracy - _accuracy(v, accuracy_key) <= drop + _EPS]
        if len(within) < len(fit):
            ids = ", ".join(sorted(str(v.get("id")) for v in fit if not any(v is w for w in within)))
            rules.append(f"max accuracy drop {drop:g}: left out {ids}")
            fit = within

    target = target_model(caps.device_class, caps.arch)
    costs = _costs(fit, accuracy_key, target)
    download = context.network == "metered" or context.user_preference == "data-saver"
    if download:
        why = "metered network" if context.network == "metered" else "user prefers data-saver"
        rules.append(f"{why}: a variant neither active nor cached costs {METERED_PENALTY_PER_MIB:g} per MiB to fetch")

    def penalty(variant: Variant) -> float:
        if not download or str(variant.get("sha256")) in local:
            return 0.0
        fetched = variant.get("blob_bytes", variant.get("size_bytes", 0))  # a firmware variant's size is flash
        return METERED_PENALTY_PER_MIB * float(fetched) / (1 << 20)

    scores = {
        str(v.get("id")): _score(costs[str(v.get("id"))], weights) + penalty(v) for v in fit
    }
    chosen = min(fit, key=lambda v: (scores[str(v.get("id"))], str(v.get("id"))))
    base_weights, _ = effective_weights(policy, DeviceContext())
    baseline = min(fit, key=lambda v: (_score(costs[str(v.get("id"))], base_weights), str(v.get("id"))))

    parts = rules or ["no context rule applied"]
    parts.append(_compare(chosen, baseline, accuracy_key, active_sha256, target))
    label = "weights" if policy.weights is not None else f"objective {policy.objective}, weights"
    parts.append(f"{label} " + " ".join(f"{k}={w:g}" for k, w in weights.items()))
    return Choice(variant=chosen, reason="; ".join(parts), scores=scores, weights=weights)


def _hard_filter(
    variant: Variant, caps: DeviceCapabilities, exclude: Collection[str], operators: Collection[str] | None
) -> str | None:
    why = rejection_reason(variant, caps)
    if why is not None:
        return why
    if str(variant.get("sha256")) in exclude:
        return "failed on this device before"
    if operators is not None:
        needed: Sequence[str] = variant.get("requirements", {}).get("operators", [])
        missing = sorted(set(needed) - set(operators))
        if missing:
            return f"needs operators the runtime lacks: {', '.join(missing)}"
    return None


def _accuracy(variant: Variant, key: str) -> float:
    return float(variant.get("metrics", {}).get(key, 0.0))


def _costs(fit: Sequence[Variant], accuracy_key: str, target: TargetModel) -> dict[str, dict[str, float]]:
    """Costs in comparable units.  Energy is this device's (`target`): on a slow core compute outweighs the
    DRAM traffic that dominates on a fast one, which can reorder variants; latency is the host's, since a
    device's slowdown multiplies every variant alike and cancels in the ratios."""
    best_accuracy = max(_accuracy(v, accuracy_key) for v in fit)
    raw = {
        str(v.get("id")): {
            "latency": max(latency_ms(v), _EPS),
            "size": max(float(v.get("size_bytes", 0)), 1.0),
            "energy": max(energy_mj(v, target), _EPS),
        }
        for v in fit
    }
    least = {cost: min(r[cost] for r in raw.values()) for cost in ("latency", "size", "energy")}
    return {
        str(v.get("id")): {
            "accuracy": 100 * (best_accuracy - _accuracy(v, accuracy_key)),
            **{cost: math.log2(value / least[cost]) for cost, value in raw[str(v.get("id"))].items()},
        }
        for v in fit
    }


def _score(costs: Mapping[str, float], weights: Mapping[str, float]) -> float:
    total = sum(weights.values()) or 1.0
    return sum(weights[cost] * costs[cost] for cost in COSTS) / total


def _compare(
    chosen: Variant, baseline: Variant, accuracy_key: str, active_sha256: str | None, target: TargetModel
) -> str:
    """What the choice gains or gives up against what the policy alone (no context) would pick."""
    kept = " (the active variant)" if active_sha256 and str(chosen.get("sha256")) == active_sha256 else ""
    if chosen is baseline:
        return f"{chosen.get('id')}{kept} scores best"
    diffs = []
    for value, better, worse in ((lambda v: energy_mj(v, target), "less energy", "more energy"),
                                 (lambda v: float(v.get("size_bytes", 0)), "smaller", "larger"),
                                 (latency_ms, "faster", "slower")):
        ours, theirs = value(chosen), value(baseline)
        if theirs > 0 and abs(ours / theirs - 1) >= 0.005:
            diffs.append(f"{abs(1 - ours / theirs):.0%} {better if ours < theirs else worse}")
    points = 100 * (_accuracy(chosen, accuracy_key) - _accuracy(baseline, accuracy_key))
    if abs(points) >= 0.005:
        diffs.append(f"{abs(points):.2g} points {'more' if points > 0 else 'less'} {accuracy_key}")
    return f"{chosen.get('id')}{kept} instead of {baseline.get('id')}: {', '.join(diffs) or 'same metrics'}"

