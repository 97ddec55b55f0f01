"""Canary analysis: the PromQL each metric runs, and the verdict on the answers (pure).

The queries read the gateway's metrics, labelled by fleet and rollout revision
(never by device), so a user can paste them from `status.rollout.analysis` into
Prometheus.  A missing value (no data yet, Prometheus unreachable) is never a
pass: it makes the run Inconclusive, and the rollout waits.

Noise never fails a canary (issue: a healthy canary of 5,000 devices was
rolled back on `latency-p95-ratio 3.679 > 3` a second after a step):

- error-rate counts only once the window holds `minSamples` inferences;
- latency-p95-ratio asks Prometheus for both revisions' histograms, per device
  class, over one window (one query, one instant), and compares like with like
  (`tinymlops_operator.logic.compare`): the p95 ratio over the classes both sides
  have, the stable side reweighted to the canary's class mix.  It fails only
  when that ratio is above `max` *and* a stratified Mann-Whitney U test finds
  the canary significantly slower (p < SIGNIFICANCE); above `max` without
  significance, or fewer than `minSamples` samples on a side, is Inconclusive.
  Devices leave their first inferences after a switch out of the histogram
  (cold sessions; `tinymlops.agent.telemetry.WARMUP_INFERENCES`);
- input-drift is the largest PSI of any feature (inputs, `@confidence`,
  `@class`) in a canary device class the gateway found drifted from the menu's
  reference at its false discovery rate, 0 when scored classes show no
  significant drift, and no data (Inconclusive) until enough rows are merged
  (`tinymlops.drift.score.MIN_ROWS`): a PSI the noise could explain never fails it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tinymlops.timestamps import rfc3339
from tinymlops_operator.logic.compare import Buckets, Comparison, compare, from_cumulative
from tinymlops_operator.logic.strategy import Analysis, MetricCheck

Verdict = Literal["Passed", "Failed", "Inconclusive"]
# One series of an instant vector: its labels and its value.
Sample = tuple[Mapping[str, str], float]
# What a query answered: one number (None: no data) or, for VECTOR_METRICS, the series it returned.
Answer = float | None | Sequence[Sample]
# These metrics are answered with every series of their query, not one number.
VECTOR_METRICS = frozenset({"latency-p95-ratio"})
SIGNIFICANCE = 0.01  # a one-in-a-hundred chance of failing a canary that is not slower


def _selector(namespace: str, fleet: str, revision: int | str) -> str:
    return f'namespace="{namespace}",fleet="{fleet}",revision="{revision}"'


def _window(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def query_for(name: str, *, namespace: str, fleet: str, canary: int, stable: int | None, window_s: float,
              min_samples: int = 0) -> str:
    """The PromQL for one metric of the canary revision (and the stable one, for latency)."""
    canary_sel, w = _selector(namespace, fleet, canary), _window(window_s)
    if name == "error-rate":
        errors = f"sum(increase(tinymlops_device_inference_errors_total{{{canary_sel}}}[{w}]))"
        ok = f"sum(increase(tinymlops_device_inferences_total{{{canary_sel}}}[{w}]))"
        # Empty (no data, so inconclusive) until the window holds min_samples inferences.
        return f"{errors} / ({ok} + {errors}) and on() ({ok} + {errors}) >= {min_samples}"
    if name == "latency-p95-ratio":
        revisions = f"{canary}|{stable}" if stable is not None else f"{canary}"
        return (f"sum by (revision, device_class, le) (increase(tinymlops_device_inference_latency_seconds_bucket"
                f'{{namespace="{namespace}",fleet="{fleet}",revision=~"{revisions}"}}[{w}]))')
    if name == "health-check-failures":
        return f'sum(tinymlops_fleet_devices{{{canary_sel},phase="Failed"}})'
    if name == "devices-reporting":
        return f'sum(tinymlops_fleet_devices{{{canary_sel},phase="Running"}})'
    if name == "input-drift":
        # Each feature's PSI times its class's 0/1 drifted gauge: only significant drift counts.
        return (f'max(tinymlops_fleet_drift_score{{{canary_sel},statistic="psi"}} '
                f"* on(namespace, fleet, revision, device_class) group_left() tinymlops_fleet_drifted{{{canary_sel}}})")
    raise ValueError(f"unknown analysis metric {name!r}")  # strategy.py rejects these before we get here


def queries(analysis: Analysis, *, namespace: str, fleet: str, canary: int, stable: int | None) -> dict[str, str]:
    """Every query one analysis run needs: the checked metrics plus the devices-reporting gate."""
    names = [check.name for check in analysis.metrics]
    if "devices-reporting" not in names:
        names.append("devices-reporting")
    return {name: query_for(name, namespace=namespace, fleet=fleet, canary=canary, stable=stable,
                            window_s=analysis.window_s, min_samples=analysis.min_samples) for name in names}


@dataclass(frozen=True)
class MetricResult:
    name: str
    query: str
    value: float | None
    threshold: float | None
    bound: str | None
    verdict: Verdict
    detail: str = ""  # how a statistical check reached its verdict (samples, classes, p-value)

    def as_status(self) -> dict[str, Any]:
        result: dict[str, Any] = {"name": self.name, "query": self.query, "verdict": self.verdict}
        if self.value is not None:
            result["value"] = round(self.value, 6)
        if self.threshold is not None and self.bound is not None:
            result[self.bound] = self.threshold
        if self.detail:
            result["detail"] = self.detail
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


def histograms(samples: Sequence[Sample], revision: int) -> dict[str, Buckets]:
    """Per-bucket counts by device class for one revision, from `sum by (revision, device_class, le)` series."""
    cumulative: dict[str, dict[float, float]] = {}
    for labels, value in samples:
        if labels.get("revision") != str(revision) or "le" not in labels:
            continue
        cumulative.setdefault(labels.get("device_class", ""), {})[float(labels["le"])] = value
    return {device_class: from_cumulative(counts) for device_class, counts in cumulative.items()}


def latency_verdict(check: MetricCheck, answer: Answer, *, canary: int, stable: int | None,
                    min_samples: int) -> tuple[float | None, Verdict, str]:
    """(p95 ratio, verdict, detail) of the canary's latency against the stable revision's."""
    if answer is not None and not isinstance(answer, Sequence):
        raise TypeError("latency-p95-ratio is answered with the query's series, not one number")
    if stable is None:
        return None, "Inconclusive", "no stable revision to compare with"
    result: Comparison = compare(histograms(answer or (), canary), histograms(answer or (), stable))
    left_out = f"; left out (too few samples on a side): {', '.join(result.left_out)}" if result.left_out else ""
    samples = (f"{result.canary_samples:.0f} canary and {result.stable_samples:.0f} stable samples over "
               f"{', '.join(result.classes) or 'no common device class'}{left_out}")
    if result.ratio is None or min(result.canary_samples, result.stable_samples) < min_samples:
        return result.ratio, "Inconclusive", f"{samples}: fewer than minSamples {min_samples} on a side"
    assert result.test is not None
    significance = f"Mann-Whitney p={result.test.p_value:.2g}, P(canary slower)={result.test.p_slower:.2f}"
    if result.ratio <= check.threshold:
        return result.ratio, "Passed", f"{samples}; {significance}"
    if result.test.p_value < SIGNIFICANCE:
        return result.ratio, "Failed", f"{samples}; significantly slower ({significance})"
    return result.ratio, "Inconclusive", f"{samples}; above max but not significant ({significance} ≥ {SIGNIFICANCE})"


def _number(answer: Answer) -> float | None:
    if answer is not None and not isinstance(answer, int | float):
        raise TypeError("this metric is answered with one number")
    return answer


def evaluate(
    analysis: Analysis, query_text: Mapping[str, str], values: Mapping[str, Answer], *, at: float,
    stable_has_data: bool = True, canary: int = 0, stable: int | None = None,
) -> AnalysisRun:
    """The verdict: Failed if any check fails; Inconclusive if too few canary devices report or a value is
    missing; Passed otherwise.  `stable_has_data` False (every device already on the canary) skips the
    comparison with the stable revision rather than waiting for a baseline that will not come.  `canary` and
    `stable` are the revisions the queries asked about (latency-p95-ratio's series carry both)."""
    reporting = _number(values.get("devices-reporting"))
    results: list[MetricResult] = []
    for check in analysis.metrics:
        detail = ""
        verdict: Verdict
        if check.name in VECTOR_METRICS:
            if not stable_has_data:
                value, verdict, detail = None, "Passed", "every device is on the canary: no baseline left"
            else:
                value, verdict, detail = latency_verdict(check, values.get(check.name), canary=canary,
                                                         stable=stable, min_samples=analysis.min_samples)
        else:
            value = _number(values.get(check.name))
            verdict = _check(check, value)
        results.append(MetricResult(check.name, query_text[check.name], value, check.threshold, check.bound,
                                    verdict, detail))
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
    waiting = [r for r in results if r.verdict == "Inconclusive"]
    if waiting:
        why = "; ".join(f"{r.name}: {r.detail or 'no data yet (or fewer than minSamples inferences)'}"
                        for r in waiting)
        return AnalysisRun("Inconclusive", why, tuple(results), at)
    return AnalysisRun("Passed", "; ".join(f"{r.name} {_fmt(r.value)}" for r in results), tuple(results), at)


def unavailable(analysis: Analysis, query_text: Mapping[str, str], error: str, *, at: float) -> AnalysisRun:
    """Prometheus could not answer: inconclusive, never a pass, and the message names why."""
    results = tuple(MetricResult(check.name, query_text[check.name], None, check.threshold, check.bound,
                                 "Inconclusive") for check in analysis.metrics)
    return AnalysisRun("Inconclusive", error, results, at)


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"
