"""A DeviceFleet's rollout strategy, read from `spec.strategy.canary` (pure).

The vocabulary is Argo Rollouts': `steps` of `setWeight`, `pause` (with a
`duration`, or none: until promoted) and `analysis`, a background `analysis`
run every `interval`, and `progressDeadlineSeconds`.  The CRD schema rejects
what it can (weights outside 0..100, unknown metric names); what it cannot
(weights that decrease, no final 100%) raises SpecError naming the field, and
the fleet shows it in a condition instead of rolling out something senseless.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tinymlops.errors import SpecError

STEPS_FIELD = "spec.strategy.canary.steps"
ANALYSIS_FIELD = "spec.strategy.canary.analysis"
# Each names a PromQL query over the gateway's metrics (logic/analysis.py) and which bound applies.
METRICS: dict[str, Literal["max", "min"]] = {
    "error-rate": "max",  # failed / all inferences on the canary revision
    "latency-p95-ratio": "max",  # canary p95 / stable p95 over the same device classes, if significantly slower
    "health-check-failures": "max",  # canary devices whose install or health check failed
    "devices-reporting": "min",  # canary devices running and reporting
    "input-drift": "max",  # the largest PSI of a canary device class whose inputs or outputs drifted significantly
}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class Step:
    kind: Literal["setWeight", "pause", "analysis"]
    weight: int | None = None
    duration_s: float | None = None  # a pause without one waits until promoted

    def describe(self) -> str:
        if self.kind == "setWeight":
            return f"setWeight {self.weight}"
        if self.kind == "pause":
            return "pause until promoted" if self.duration_s is None else f"pause {self.duration_s:g}s"
        return "analysis"


@dataclass(frozen=True)
class MetricCheck:
    name: str
    bound: Literal["max", "min"]
    threshold: float


@dataclass(frozen=True)
class Analysis:
    metrics: tuple[MetricCheck, ...]
    interval_s: float = 10.0
    window_s: float = 30.0  # the PromQL rate() window
    min_devices: int = 1  # fewer canary devices reporting: inconclusive, the rollout waits
    # Fewer inferences (error-rate) or steady-state latency samples (latency-p95-ratio, on each side) in the
    # window: inconclusive, never failed; a handful of samples says nothing about a revision.
    min_samples: int = 50
    failure_limit: int = 0  # failed runs tolerated before aborting (Argo's failureLimit)
    address: str | None = None  # Prometheus URL; None: the operator's TINYMLOPS_PROMETHEUS_URL


@dataclass(frozen=True)
class Strategy:
    steps: tuple[Step, ...] = ()
    analysis: Analysis | None = None
    progress_deadline_s: float = 600.0
    progress_deadline_abort: bool = False
    # Healthy once this share of the fleet's online devices runs the stable revision.
    complete_pct: float = 100.0

    @property
    def pauses_s(self) -> float:
        return sum(step.duration_s or 0.0 for step in self.steps if step.kind == "pause")


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or an Argo-style string ("30s", "5m", "1h", "500ms")."""
    if isinstance(value, bool):
        raise SpecError(f"{where}: {value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := DURATION.match(value.strip())):
        seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
    else:
        raise SpecError(f"{where}: {value!r} is not a duration (a number of seconds, or e.g. 30s, 5m, 1h)")
    if seconds < 0:
        raise SpecError(f"{where}: {value!r} is negative")
    return seconds


def _step(raw: Mapping[str, Any], where: str) -> Step:
    kinds = [key for key in ("setWeight", "pause", "analysis") if key in raw]
    if len(kinds) != 1:
        raise SpecError(f"{where}: needs exactly one of setWeight, pause or analysis, got {sorted(raw) or 'none'}")
    if kinds[0] == "setWeight":
        weight = raw["setWeight"]
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise SpecError(f"{where}.setWeight: {weight!r} is not a percentage 0..100")
        return Step("setWeight", weight=weight)
    if kinds[0] == "pause":
        pause = raw["pause"] or {}
        duration = pause.get("duration")
        if duration is None:
            return Step("pause")
        return Step("pause", duration_s=parse_duration(duration, f"{where}.pause.duration"))
    return Step("analysis")


def _analysis(raw: Mapping[str, Any]) -> Analysis:
    metrics = []
    for index, metric in enumerate(raw.get("metrics") or ()):
        where = f"{ANALYSIS_FIELD}.metrics[{index}]"
        name = metric.get("name")
        if name not in METRICS:
            raise SpecError(f"{where}.name: unknown metric {name!r}; known: {', '.join(METRICS)}")
        bound = METRICS[name]
        threshold = metric.get(bound)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise SpecError(f"{where}.{bound}: metric {name} needs a numeric {bound} threshold")
        metrics.append(MetricCheck(name, bound, float(threshold)))
    if not metrics:
        raise SpecError(f"{ANALYSIS_FIELD}.metrics: an analysis needs at least one metric")
    interval = parse_duration(raw.get("interval", 10), f"{ANALYSIS_FIELD}.interval")
    if interval < 1:
        raise SpecError(f"{ANALYSIS_FIELD}.interval: {raw.get('interval')!r} is shorter than 1s")
    window = parse_duration(raw.get("window", max(30.0, 3 * interval)), f"{ANALYSIS_FIELD}.window")
    return Analysis(
        metrics=tuple(metrics),
        interval_s=interval,
        window_s=max(window, 2.0),
        min_devices=int(raw.get("minDevicesReporting", 1)),
        min_samples=_count(raw, "minSamples", 50),
        failure_limit=int(raw.get("failureLimit", 0)),
        address=(raw.get("prometheus") or {}).get("address") or None,
    )


def _count(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"{ANALYSIS_FIELD}.{key}: {value!r} is not an integer >= 0")
    return value


def check_weights(steps: Sequence[Step]) -> None:
    """Cohorts only grow between steps, and a rollout ends with every device on the new revision."""
    previous, previous_index = 0, None
    for index, step in enumerate(steps):
        if step.kind != "setWeight":
            continue
        assert step.weight is not None
        if step.weight < previous:
            raise SpecError(
                f"{STEPS_FIELD}[{index}].setWeight: {step.weight} is below the {previous} of "
                f"steps[{previous_index}]; weights may only grow"
            )
        previous, previous_index = step.weight, index
    if steps and previous != 100:
        raise SpecError(f"{STEPS_FIELD}: the last setWeight is {previous}; a rollout must end with setWeight: 100")


def parse_strategy(spec: Mapping[str, Any]) -> Strategy:
    """The fleet's strategy; with no steps a new revision goes to every device at once (as in Argo)."""
    canary = ((spec.get("strategy") or {}).get("canary")) or {}
    steps = tuple(_step(raw or {}, f"{STEPS_FIELD}[{index}]") for index, raw in enumerate(canary.get("steps") or ()))
    check_weights(steps)
    analysis = _analysis(canary["analysis"]) if canary.get("analysis") else None
    if any(step.kind == "analysis" for step in steps) and analysis is None:
        index = next(i for i, step in enumerate(steps) if step.kind == "analysis")
        raise SpecError(f"{STEPS_FIELD}[{index}].analysis: needs {ANALYSIS_FIELD} to say what to measure")
    complete = canary.get("completeWhen") or {}
    return Strategy(
        steps=steps,
        analysis=analysis,
        progress_deadline_s=parse_duration(canary.get("progressDeadlineSeconds", 600),
                                           "spec.strategy.canary.progressDeadlineSeconds"),
        progress_deadline_abort=bool(canary.get("progressDeadlineAbort", False)),
        complete_pct=float(complete.get("convergedPct", 100.0)),
    )
