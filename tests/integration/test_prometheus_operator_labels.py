"""Canary analysis against a real Prometheus scraping the gateway as the Prometheus Operator does.

Behind the Prometheus Operator every scraped series gets target labels
(namespace, service, pod, container, endpoint, job, instance).  The gateway's
series carry their own `namespace`, the fleet's: with `honorLabels: true` (what
the chart's monitors set) it is kept and the analysis queries find their data;
without it Prometheus renames it `exported_namespace`, and every canary would
wait as inconclusive forever.  Both are shown here, on one machine.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import start_http_server

from tinymlops.gateway.fleetstate import FleetState
from tinymlops.gateway.metrics import GatewayMetrics
from tinymlops.report import Report
from tinymlops.stack.prometheus import RELEASE_NAMESPACE, PrometheusServer, kubernetes_job
from tinymlops_operator.logic import analysis
from tinymlops_operator.logic.strategy import parse_strategy
from tinymlops_operator.prometheus import PrometheusSource

pytestmark = pytest.mark.integration

FLEET_NS, FLEET = "edge", "cams"  # the fleet's namespace: not the one the gateway pod runs in
CLASSES = {"industrial-pc": 0.002, "rpi-zero-2": 0.02}  # median latency in seconds, the same on both revisions
DEVICES_PER_SIDE = 20
LATENCIES_PER_REPORT = 10
ROUNDS = 3
SPEC = parse_strategy({"strategy": {"canary": {"steps": [{"setWeight": 50}, {"setWeight": 100}], "analysis": {
    "window": "60s", "minDevicesReporting": 5, "metrics": [
        {"name": "error-rate", "max": 0.05}, {"name": "latency-p95-ratio", "max": 3},
        {"name": "health-check-failures", "max": 0}]}}}}).analysis


def reports(round_: int) -> Iterator[dict[str, Any]]:
    """One report per device: half on the stable revision 1, half on the canary revision 2, two classes."""
    rng = random.Random(round_)
    for revision in (1, 2):
        for index in range(DEVICES_PER_SIDE):
            device_class = list(CLASSES)[index % len(CLASSES)]
            median = CLASSES[device_class]
            yield {"device": f"r{revision}-{index}", "namespace": FLEET_NS, "fleet": FLEET,
                   "device_class": device_class, "arch": "x86_64", "phase": "Running", "menu_version": revision,
                   "variant": "int8", "variant_sha256": "a" * 64, "revision": revision, "sent_at": time.time(),
                   "inferences": LATENCIES_PER_REPORT,
                   "latencies_ms": [1000 * median * math.exp(rng.gauss(0, 0.15)) for _ in range(LATENCIES_PER_REPORT)]}


@pytest.fixture(scope="module", params=[True, False], ids=["honorLabels", "without-honorLabels"])
def scraped(request: pytest.FixtureRequest, prometheus_bin: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, bool]]:
    """A gateway's metrics, fed three rounds of reports, scraped with the Prometheus Operator's target labels."""
    honor = bool(request.param)
    state = FleetState()
    metrics = GatewayMetrics(state)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    job = kubernetes_job([f"127.0.0.1:{server.server_port}"], namespace=RELEASE_NAMESPACE,
                         service="tinymlops-gateway", pod="tinymlops-gateway-7d9f-x2x4q", container="gateway",
                         endpoint="http", honor_labels=honor)
    try:
        with PrometheusServer(tmp_path_factory.mktemp("prometheus"), {"gateway": job}, scrape_interval_s=0.5,
                              binary=prometheus_bin) as prometheus:
            prometheus.wait_for_scrape("gateway", timeout=30)
            for round_ in range(ROUNDS):
                for raw in reports(round_):
                    report = Report.from_json(raw)
                    metrics.observe_report(report, state.apply(report))
                # Counters must move between scrapes for increase() to see them: wait for this round's scrape.
                expected = (round_ + 1) * 2 * DEVICES_PER_SIDE * LATENCIES_PER_REPORT
                wait_for_value(prometheus, f'sum(tinymlops_device_inferences_total{{fleet="{FLEET}"}})', expected)
            yield prometheus, honor
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_for_value(prometheus: PrometheusServer, query: str, expected: float, timeout: float = 30) -> None:
    async def value() -> float | None:
        async with PrometheusSource(prometheus.url) as source:
            return await source.query(query)

    deadline = time.monotonic() + timeout
    while asyncio.run(value()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {query} == {expected}")
        time.sleep(0.2)


async def analyse(prometheus: PrometheusServer) -> analysis.AnalysisRun:
    """One analysis run as the operator's handler makes it: each query, series for the statistical checks."""
    texts = analysis.queries(SPEC, namespace=FLEET_NS, fleet=FLEET, canary=2, stable=1)
    values: dict[str, analysis.Answer] = {}
    async with PrometheusSource(prometheus.url) as source:
        for name, text in texts.items():
            values[name] = await (source.samples if name in analysis.VECTOR_METRICS else source.query)(text)
    return analysis.evaluate(SPEC, texts, values, at=time.time(), canary=2, stable=1)


async def test_the_analysis_sees_the_fleets_data_only_when_the_monitor_honors_labels(
    scraped: tuple[PrometheusServer, bool],
) -> None:
    prometheus, honor = scraped
    run = await analyse(prometheus)
    by_name = {metric.name: metric for metric in run.metrics}
    if honor:
        assert run.verdict == "Passed", run.message
        assert by_name["devices-reporting"].value == DEVICES_PER_SIDE
        assert by_name["error-rate"].value == 0
        ratio = by_name["latency-p95-ratio"].value
        assert ratio is not None and 0.7 < ratio < 1.4  # the same latencies on both revisions
        assert "industrial-pc, rpi-zero-2" in by_name["latency-p95-ratio"].detail
    else:
        # The regression: the query on namespace="edge" finds nothing, so every canary would pause.
        assert run.verdict == "Inconclusive"
        assert all(metric.value is None for metric in run.metrics)


async def test_target_labels_are_attached_and_a_clash_is_renamed_exported(
    scraped: tuple[PrometheusServer, bool],
) -> None:
    prometheus, honor = scraped
    async with PrometheusSource(prometheus.url) as source:
        series = await source.samples(f'tinymlops_device_inferences_total{{fleet="{FLEET}"}}')
    assert series
    for labels, _ in series:
        assert labels["service"] == labels["job"] == "tinymlops-gateway" and labels["endpoint"] == "http"
        assert labels["pod"].startswith("tinymlops-gateway-") and labels["container"] == "gateway"
        assert labels["instance"].startswith("127.0.0.1:")
        if honor:
            assert labels["namespace"] == FLEET_NS and "exported_namespace" not in labels
        else:
            assert labels["namespace"] == RELEASE_NAMESPACE and labels["exported_namespace"] == FLEET_NS
