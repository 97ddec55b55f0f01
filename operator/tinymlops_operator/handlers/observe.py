"""A fleet's observe step (IO): what its devices report, through the gateway, and the canary's analysis.

Both are read-only and may fail: an unreachable gateway means "no reports
yet" (None), an unreachable Prometheus an Inconclusive analysis run, never a
pass.  The operator never lists devices or reads their reports one by one.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from tinymlops.errors import MetricsUnavailableError
from tinymlops_operator.logic import analysis as analysis_logic
from tinymlops_operator.logic import devicefleet as logic
from tinymlops_operator.logic import rollout
from tinymlops_operator.logic.strategy import Strategy
from tinymlops_operator.prometheus import MetricSource, PrometheusSource
from tinymlops_operator.runtime import Runtime


@dataclass(frozen=True)
class Observation:
    summary: Mapping[str, Any] | None  # the gateway's fleet summary; None: no reports to go by
    run: analysis_logic.AnalysisRun | None  # an analysis run of the canary, when one was due


async def observe(
    runtime: Runtime, namespace: str, fleet: str, *, strategy: Strategy, state: rollout.RolloutState,
    target: rollout.Target, now: float,
) -> Observation:
    # Convergence is counted against what the fleet runs: the stable revision (the target may be held back).
    menu_version = state.stable.menu_version if state.stable else target.menu_version
    summary = await _gateway_summary(runtime, namespace, fleet, menu_version)
    run = None
    if rollout.analysis_due(state, strategy, now):
        stable_running = logic.running_on(summary, state.stable.number if state.stable else None)
        run = await _analyse(runtime, strategy, state, namespace, fleet, now, stable_has_data=stable_running > 0)
    return Observation(summary, run)


async def _gateway_summary(runtime: Runtime, namespace: str, fleet: str, menu_version: int) -> dict[str, Any] | None:
    if not runtime.settings.gateway_url:
        return None
    url = f"{runtime.settings.gateway_url}/v1/fleets/{namespace}/{fleet}/summary"
    try:
        async with _http(runtime).get(url, params={"menu_version": str(menu_version)}) as response:
            response.raise_for_status()
            summary: dict[str, Any] = await response.json()
            return summary
    except (aiohttp.ClientError, TimeoutError):
        return None


def http(runtime: Runtime) -> aiohttp.ClientSession:
    """The operator's one HTTP session to the gateway and Prometheus (TLS with the gateway's CA when set)."""
    return _http(runtime)


def _http(runtime: Runtime) -> aiohttp.ClientSession:
    if runtime.http is None:
        ca = runtime.settings.gateway_ca  # an HTTPS gateway whose certificate a private CA signed
        tls = ssl.create_default_context(cafile=str(ca)) if ca is not None else True
        runtime.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5),
                                             connector=aiohttp.TCPConnector(ssl=tls))
    return runtime.http


async def _analyse(
    runtime: Runtime, strategy: Strategy, state: rollout.RolloutState, namespace: str, fleet: str, now: float,
    stable_has_data: bool,
) -> analysis_logic.AnalysisRun:
    """One analysis run of the canary against Prometheus; unreachable means inconclusive, never a pass."""
    spec = strategy.analysis
    assert spec is not None and state.canary is not None
    texts = analysis_logic.queries(spec, namespace=namespace, fleet=fleet, canary=state.canary.number,
                                   stable=state.stable.number if state.stable else None)
    url = spec.address or runtime.settings.prometheus_url
    if not url:
        return analysis_logic.unavailable(
            spec, texts, "no Prometheus to ask: set spec.strategy.canary.analysis.prometheus.address or the "
            "operator's TINYMLOPS_PROMETHEUS_URL", at=now)
    source: MetricSource = PrometheusSource(url, session=_http(runtime))
    values: dict[str, analysis_logic.Answer] = {}
    try:
        for name, text in texts.items():
            # A statistical check compares histograms: it needs the series, not one number.
            values[name] = await (source.samples if name in analysis_logic.VECTOR_METRICS else source.query)(text)
    except MetricsUnavailableError as exc:
        return analysis_logic.unavailable(spec, texts, str(exc), at=now)
    return analysis_logic.evaluate(spec, texts, values, at=now, stable_has_data=stable_has_data,
                                   canary=state.canary.number, stable=state.stable.number if state.stable else None)
