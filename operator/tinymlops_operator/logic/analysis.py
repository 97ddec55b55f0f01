"""Canary analysis: the PromQL each metric runs, and the verdict on the values (pure).

The queries read the gateway's metrics, labelled by fleet and rollout revision
(never by device), so a user can paste them from `status.analysis` into
Prometheus.  A missing value (no data yet, Prometheus unreachable) is never a
pass: it makes the run Inconclusive, and the rollout waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tinymlops.timestamps import rfc3339
from tinymlops_operator.logic.strategy import Analysis, MetricCheck

Verdict = Literal["Passed", "Failed", "Inconclusive"]


def _selector(namespace: str, fleet: str, revision: int) -> str:
    return f'namespace="{namespace}",fleet="{fleet}",revision="{revision}"'


def _window(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def query_for(name: str, *, namespace: str, fleet: str, canary: int, stable: int | None, window_s: float) -> str:
    """The PromQL for one metric of the canary revision (and the stable one, for ratios)."""
    canary_sel, w = _selector(namespace, fleet, canary), _window(window_s)
    if name == "error-rate":
        errors = f"sum(rate(tinymlops_device_inference_errors_total{{{canary_sel}}}[{w}]))"
        ok = f"sum(rate(tinymlops_device_inferences_total{{{canary_sel}}}[{w}]))"
        return f"{errors} / ({ok} + {errors})"
    if name == "latency-p95-ratio":
        def p95(selector: str) -> str:
            return (f"histogram_quantile(0.95, sum by (le) "
                    f"(rate(tinymlops_device_inference_latency_seconds_bucket{{{selector}}}[{w}])))")
        return f"{p95(canary_sel)} / {p95(_selector(namespace, fleet, stable or 0))}"
    if name == "health-check-failures":
        return f'sum(tinymlops_fleet_revision_devices{{{canary_sel},phase="Failed"}})'
    if name == "devices-reporting":
        return f'sum(tinymlops_fleet_revision_devices{{{canary_sel},phase="Running"}})'
    raise ValueError(f"unknown analysis metric {name!r}")  # strategy.py rejects these before we get here


def queries(analysis: Analysis, *, namespace: str, fleet: str, canary: int, stable: int | None) -> dict[str, str]:
    """Every query one analysis run needs: the checked metrics plus the devices-reporting gate."""
    names = [check.name for check in analysis.metrics]
    if "devices-reporting" not in names:
        names.append("devices-reporting")
    return {name: query_for(name, namespace=namespace, fleet=fleet, canary=canary, stable=stable,
                            window_s=analysis.window_s) for name in names}


@dataclass(frozen=True)
class MetricResult:
    name: str
    query: str
    value: float | None
    threshold: float | None
    bound: str | None
    verdict: Verdict

    def as_status(self) -> dict[str, Any]:
        result: dict[str, Any] = {"name": self.name, "query": self.query, "verdict": self.verdict}
        if self.value is not None:
            result["value"] = round(self.value, 6)
        if self.threshold is not None and self.bound is not None:
            result[self.bound] = self.threshold
        return result


@dataclass(frozen=True)
class AnalysisRun:
    verdict: Verdict
    message: str
    metrics: tuple[MetricResult, ...]
    at: float

    def as_status(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "message": self.message, "at": rfc3339(self.at),
                "metrics": [metric.as_status() for metric in self.metrics]}


def _check(check: MetricCheck, value: float | None) -> Verdict:
    if value is None:
        return "Inconclusive"
    ok = value <= check.threshold if check.bound == "max" else value >= check.threshold
    return "Passed" if ok else "Failed"


def evaluate(
    analysis: Analysis, query_text: Mapping[str, str], values: Mapping[str, float | None], *, at: float,
    stable_has_data: bool = True,
) -> AnalysisRun:
    """The verdict: Failed if any check fails; Inconclusive if too few canary devices report or a value is
    missing; Passed otherwise.  `stable_has_data` False (every device already on the canary) skips the ratio
    against the stable revision rather than waiting for a baseline that will not come."""
    reporting = values.get("devices-reporting")
    results: list[MetricResult] = []
    for check in analysis.metrics:
        value = values.get(check.name)
        verdict = _check(check, value)
        if check.name == "latency-p95-ratio" and value is None and not stable_has_data:
            verdict = "Passed"
        results.append(MetricResult(check.name, query_text[check.name], value, check.threshold, check.bound, verdict))
    gate_checked = any(check.name == "devices-reporting" for check in analysis.metrics)
    enough = reporting is not None and reporting >= analysis.min_devices
    if not gate_checked:
        results.append(MetricResult("devices-reporting", query_text["devices-reporting"], reporting,
                                    float(analysis.min_devices), "min", "Passed" if enough else "Inconclusive"))
    failed = [r for r in results if r.verdict == "Failed" and r.name != "devices-reporting"]
    if failed:
        detail = "; ".join(f"{r.name} {_fmt(r.value)} > {r.threshold:g}" if r.bound == "max"
                           else f"{r.name} {_fmt(r.value)} < {r.threshold:g}" for r in failed)
        return AnalysisRun("Failed", detail, tuple(results), at)
    if not enough:
        message = (f"{_fmt(reporting)} canary devices reporting, fewer than minDevicesReporting "
                   f"{analysis.min_devices}")
        return AnalysisRun("Inconclusive", message, tuple(results), at)
    missing = [r.name for r in results if r.verdict == "Inconclusive"]
    if missing:
        return AnalysisRun("Inconclusive", f"no data yet for {', '.join(missing)}", tuple(results), at)
    return AnalysisRun("Passed", "; ".join(f"{r.name} {_fmt(r.value)}" for r in results), tuple(results), at)


def unavailable(analysis: Analysis, query_text: Mapping[str, str], error: str, *, at: float) -> AnalysisRun:
    """Prometheus could not answer: inconclusive, never a pass, and the message names why."""
    results = tuple(MetricResult(check.name, query_text[check.name], None, check.threshold, check.bound,
                                 "Inconclusive") for check in analysis.metrics)
    return AnalysisRun("Inconclusive", error, results, at)


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"
