"""Where one inference runs: all on the device, split at point k between device and server, or a cascade to a
cloud variant (pure).  Decided per device and per moment from measured numbers, and recorded with why.

Costs per mode, in milliseconds of end-to-end latency for one inference:

    local       device_ms                                   (the variant on this device)
    split k     head_k + rtt + 8 * bytes_k / bandwidth + tail_k   (head on the device, tail on the server)
    cascade     device_ms + share * (rtt + 8 * input_bytes / bandwidth + cloud_ms)

`device_ms` and each `head_k` are the menu's host latencies scaled to the device's class
(`selection.energy`'s slowdown), `tail_k` and `cloud_ms` the host's (the server is such a core), `bytes_k` the
point's intermediate tensor (int8-quantised when the policy allows it and the factory measured no class lost
on the way), `share` the device's measured share of low-confidence answers.

The choice:

- the server unreachable, or no measured link yet: local (a device never waits for a link it cannot see);
- local when the variant does not fit the device (the menu's `min_ram_mb`), otherwise among local and the
  exact split points (head → tail equal to the whole variant), the fastest;
- a cascade only when the fleet's policy names a cloud variant and the device's consent lets inputs leave it,
  and only while its expected latency stays within the policy's `maxMs`: it trades latency for the cloud
  variant's accuracy on the answers the device is unsure of;
- on battery below `batterySaverPct`, compute on the device costs as much as its latency and the radio
  half as much per ms on air: the mode with the least device energy proxy, among those within
  `batterySaverSlack` of the fastest.

Fleet policy (the signed plan's `policy.hybrid`):
`{"cloud": {"variant": ID, "threshold": 0.9, "maxMs": 200}, "int8Transfer": true, "batterySaverPct": 20}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError

RADIO_COST = 0.5  # device energy proxy per ms on air, relative to a ms of compute
DEFAULT_SLACK = 1.5


@dataclass(frozen=True)
class HybridPolicy:
    cloud_variant: str | None = None
    threshold: float = 0.9  # below this top-class probability the answer goes to the cloud variant
    max_ms: float = math.inf  # a cascade is used while its expected latency stays within this
    int8_transfer: bool = False
    battery_saver_pct: float | None = None
    battery_saver_slack: float = DEFAULT_SLACK

    @classmethod
    def from_policy(cls, policy: Mapping[str, Any] | None) -> HybridPolicy:
        """The fleet policy's `hybrid` object; SpecError naming the field that is wrong."""
        raw = (policy or {}).get("hybrid") or {}
        cloud = raw.get("cloud") or {}
        threshold = float(cloud.get("threshold", 0.9))
        if not 0 < threshold <= 1:
            raise SpecError(f"policy.hybrid.cloud.threshold: {threshold} is not a probability in (0, 1]")
        max_ms = float(cloud.get("maxMs", math.inf))
        if max_ms <= 0:
            raise SpecError(f"policy.hybrid.cloud.maxMs: {max_ms} must be positive")
        saver = raw.get("batterySaverPct")
        if saver is not None and not 0 <= float(saver) <= 100:
            raise SpecError(f"policy.hybrid.batterySaverPct: {saver} is not a percentage")
        return cls(cloud_variant=str(cloud["variant"]) if cloud.get("variant") else None, threshold=threshold,
                   max_ms=max_ms, int8_transfer=bool(raw.get("int8Transfer", False)),
                   battery_saver_pct=None if saver is None else float(saver))


@dataclass(frozen=True)
class Link:
    """What the device measured of its link to the server; None: not measured yet."""

    bandwidth_bps: float | None = None
    rtt_ms: float | None = None
    reachable: bool = True


@dataclass(frozen=True)
class SplitCost:
    k: int
    head_ms: float  # on the device
    tail_ms: float  # on the server
    bytes: int  # sent per inference


@dataclass(frozen=True)
class Costs:
    """A variant's costs on one device and its server (see `costs`)."""

    device_ms: float
    fits: bool
    splits: Sequence[SplitCost] = ()
    input_bytes: int = 0
    cloud_ms: float | None = None  # the cloud variant on the server; None: no cloud variant
    low_confidence_share: float = 0.0  # measured on this device


@dataclass(frozen=True)
class HybridChoice:
    mode: str  # "local", "split" or "cascade"
    k: int | None
    expected_ms: float
    bytes_per_inference: float
    reason: str
    expected: Mapping[str, float] = field(default_factory=dict)  # every mode considered: its expected ms


def costs(variant: Mapping[str, Any], *, slowdown: float, ram_mb: int, policy: HybridPolicy,
          cloud: Mapping[str, Any] | None = None, low_confidence_share: float = 0.0) -> Costs:
    """A menu variant's `Costs` on a device `slowdown` times slower than the build host, with `ram_mb`."""
    metrics = variant.get("metrics", {})
    device_ms = float(metrics.get("latency_ms_p50") or math.inf) * slowdown
    splits = []
    for point in (variant.get("split") or {}).get("points", []):
        if not point["exact"]:
            continue  # head -> tail differs from the variant: not the model the factory scored
        int8 = policy.int8_transfer and float(point["int8_agreement"]) >= 1.0
        splits.append(SplitCost(int(point["k"]), float(point["head_ms_p50"]) * slowdown,
                                float(point["tail_ms_p50"]), int(point["bytes_int8" if int8 else "bytes_fp32"])))
    health = variant.get("health_check") or {}
    inputs = health.get("inputs") or [[]]
    input_bytes = 4 * _count(inputs[0])
    cloud_ms = float(cloud["metrics"]["latency_ms_p50"]) if cloud and cloud["metrics"].get("latency_ms_p50") else None
    fits = int(variant.get("requirements", {}).get("min_ram_mb", 0)) <= ram_mb
    return Costs(device_ms, fits, tuple(splits), input_bytes, cloud_ms, low_confidence_share)


def _count(nested: Any) -> int:
    return sum(_count(item) for item in nested) if isinstance(nested, list) else 1


def transfer_ms(size_bytes: float, link: Link) -> float:
    assert link.bandwidth_bps and link.rtt_ms is not None
    return link.rtt_ms + 8_000.0 * size_bytes / link.bandwidth_bps


def choose_mode(costs: Costs, link: Link, policy: HybridPolicy, *, consent_inputs: bool = False,
                battery_pct: float | None = None, charging: bool = True) -> HybridChoice:
    """Local, split at k, or cascade, for these costs on this link now; the reason names the numbers."""
    if not link.reachable or not link.bandwidth_bps or link.rtt_ms is None:
        why = "server unreachable" if not link.reachable else "link not measured yet"
        return HybridChoice("local", None, costs.device_ms, 0.0, f"local: {why}", {"local": costs.device_ms})
    expected: dict[str, float] = {}
    sent: dict[str, float] = {}
    device: dict[str, float] = {}  # ms of device compute, for the battery saver
    if costs.fits:
        expected["local"], sent["local"], device["local"] = costs.device_ms, 0.0, costs.device_ms
    for split in costs.splits:
        name = f"split@{split.k}"
        expected[name] = split.head_ms + transfer_ms(split.bytes, link) + split.tail_ms
        sent[name], device[name] = split.bytes, split.head_ms
    if not expected:
        return HybridChoice("local", None, costs.device_ms, 0.0,
                            "local: the variant does not fit the device and has no exact split point",
                            {"local": costs.device_ms})
    best = min(expected, key=lambda name: expected[name])
    reason = f"fastest ({_ms(expected[best])} expected; {_others(expected, best)})"
    saver = (policy.battery_saver_pct is not None and battery_pct is not None and not charging
             and battery_pct < policy.battery_saver_pct)
    if saver:
        within = [n for n in expected if expected[n] <= expected[best] * policy.battery_saver_slack]
        energy = {n: device[n] + RADIO_COST * (expected[n] - device[n]) for n in within}
        best = min(within, key=lambda name: energy[name])
        reason = (f"battery {battery_pct:.0f} % < {policy.battery_saver_pct:.0f} %: least device energy within "
                  f"{policy.battery_saver_slack:g}x of the fastest ({_ms(expected[best])} expected)")
    if policy.cloud_variant and costs.cloud_ms is not None and costs.fits:
        cascade = costs.device_ms + costs.low_confidence_share * (transfer_ms(costs.input_bytes, link)
                                                                  + costs.cloud_ms)
        expected["cascade"] = cascade
        if not consent_inputs:
            reason += "; no cascade: the telemetry consent does not let inputs leave the device"
        elif cascade <= policy.max_ms:
            return HybridChoice("cascade", None, cascade, costs.low_confidence_share * costs.input_bytes,
                                f"cascade to {policy.cloud_variant} below confidence {policy.threshold:g} "
                                f"({costs.low_confidence_share:.0%} of answers, {_ms(cascade)} expected within "
                                f"{_ms(policy.max_ms)})", expected)
        else:
            reason += f"; no cascade: {_ms(cascade)} expected exceeds {_ms(policy.max_ms)}"
    mode, k = ("local", None) if best == "local" else ("split", int(best.split("@")[1]))
    return HybridChoice(mode, k, expected[best], sent[best], f"{best}: {reason}", expected)


def _ms(value: float) -> str:
    return f"{value:.3g} ms"


def _others(expected: Mapping[str, float], best: str) -> str:
    rest = sorted((v, n) for n, v in expected.items() if n != best)
    return ", ".join(f"{n} {_ms(v)}" for v, n in rest[:3]) or "no other mode"
