"""A real Prometheus on loopback, scraping a tiny exposition, queried through PrometheusSource.

Needs the `prometheus` binary (Debian's package; `make test` installs it when it
can): without it these tests skip, saying so, and decide that only when they run.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

import tinymlops.stack.prometheus as stack_prometheus
from tinymlops.errors import DependencyNotReadyError, MetricsUnavailableError
from tinymlops.stack.prometheus import PrometheusServer, free_port
from tinymlops_operator.prometheus import PrometheusSource

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def requests() -> Iterator[tuple[Counter, int]]:
    registry = CollectorRegistry()
    counter = Counter("demo_requests", "Requests served, by route.", ["route"], registry=registry)
    counter.labels(route="a").inc(3)
    counter.labels(route="b").inc(1)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield counter, int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def prometheus(prometheus_bin: str, requests: tuple[Counter, int],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    targets = {"demo": [f"127.0.0.1:{requests[1]}"], "nothing": [f"127.0.0.1:{free_port()}"]}
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), targets, scrape_interval_s=0.5,
                          binary=prometheus_bin) as server:
        server.wait_for_scrape("demo", timeout=15)
        yield server


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_a_counter_is_queried_as_one_number(prometheus: PrometheusServer) -> None:
    async with PrometheusSource(prometheus.url) as source:
        assert await source.query("sum(demo_requests_total)") == 4.0
        assert await source.query('demo_requests_total{route="a"}') == 3.0
        assert await source.query("scalar(sum(demo_requests_total))") == 4.0


async def test_a_rate_is_seen_once_the_counter_moves(prometheus: PrometheusServer,
                                                     requests: tuple[Counter, int]) -> None:
    counter = requests[0]

    async def rate_is_positive() -> bool:
        counter.labels(route="a").inc(10)
        value = await source.query("sum(rate(demo_requests_total[5s]))")
        return value is not None and value > 0

    async with PrometheusSource(prometheus.url) as source:
        await eventually(rate_is_positive, "a positive rate of demo_requests_total")


async def test_no_data_is_none_not_zero(prometheus: PrometheusServer) -> None:
    async with PrometheusSource(prometheus.url) as source:
        assert await source.query("sum(no_such_metric_total)") is None
        assert await source.query("0 / 0") is None  # NaN: a ratio over no traffic yet


async def test_a_query_that_forgot_to_aggregate_is_refused_naming_it(prometheus: PrometheusServer) -> None:
    async with PrometheusSource(prometheus.url) as source:
        with pytest.raises(MetricsUnavailableError, match=r"'demo_requests_total' returned 2 series"):
            await source.query("demo_requests_total")


async def test_a_bad_query_names_prometheus_s_own_error(prometheus: PrometheusServer) -> None:
    async with PrometheusSource(prometheus.url) as source:
        with pytest.raises(MetricsUnavailableError) as raised:
            await source.query("sum(rate(demo_requests_total[5s])")
    message = str(raised.value)
    assert prometheus.url in message and "bad_data" in message and "parse error" in message


async def test_an_unreachable_prometheus_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with PrometheusSource(url, timeout_s=2.0) as source:
        with pytest.raises(MetricsUnavailableError, match=f"Prometheus at {url} is unreachable"):
            await source.query("up")


def test_a_target_that_never_answers_is_reported_with_its_scrape_error(prometheus: PrometheusServer) -> None:
    with pytest.raises(DependencyNotReadyError, match=r"job 'nothing' not scraped .*connection refused"):
        prometheus.wait_for_scrape("nothing", timeout=1.5)


def test_a_server_that_cannot_start_raises_quoting_its_log(prometheus_bin: str, requests: tuple[Counter, int],
                                                           tmp_path: Path) -> None:
    taken = requests[1]  # the exposition listens there already
    server = PrometheusServer(tmp_path, {"demo": [f"127.0.0.1:{taken}"]}, port=taken, binary=prometheus_bin)
    with pytest.raises(DependencyNotReadyError) as raised:
        server.start()
    message = str(raised.value)
    assert str(tmp_path / "prometheus.log") in message and "address already in use" in message
    server.stop()  # idempotent: start() stopped it already
    server.stop()


def test_a_picked_port_taken_before_prometheus_binds_it_is_retried(
    prometheus_bin: str, requests: tuple[Counter, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([requests[1], free_port()])  # the first "free" port is lost to someone else
    monkeypatch.setattr(stack_prometheus, "free_port", lambda: next(ports))
    with PrometheusServer(tmp_path, {"demo": [f"127.0.0.1:{requests[1]}"]}, binary=prometheus_bin) as server:
        assert server.port != requests[1]
        assert urllib.request.urlopen(f"{server.url}/-/ready").read().startswith(b"Prometheus")


def test_a_stack_puts_back_the_environment_it_exported(prometheus_bin: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator reads its settings from os.environ; a stopped stack must not leave its URLs to the next."""
    from tinymlops.stack.local import EXPORTED_ENV, LocalStack

    for name in EXPORTED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", "/somewhere/else")
    with LocalStack(tmp_path, operator=False) as stack:
        assert os.environ["KUBECONFIG"] == str(stack.paths.kubeconfig)
        assert os.environ["TINYMLOPS_PROMETHEUS_URL"] == stack.prometheus_url
    assert os.environ["KUBECONFIG"] == "/somewhere/else"
    assert all(name not in os.environ for name in EXPORTED_ENV if name != "KUBECONFIG")
