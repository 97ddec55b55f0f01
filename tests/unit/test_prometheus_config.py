"""The embedded Prometheus's configuration and binary lookup: pure, no server started."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from tinymlops.errors import PrometheusMissingError
from tinymlops.stack.prometheus import BINARY_ENV, ScrapeJob, duration, find_prometheus, kubernetes_job, scrape_config

TARGETS = {"tinymlops-gateway": ["127.0.0.1:8080"], "tinymlops-operator": ["127.0.0.1:9100", "127.0.0.1:9101"]}


def test_scrape_config_has_one_job_per_key_with_its_targets_and_the_interval() -> None:
    config = yaml.safe_load(scrape_config(TARGETS, scrape_interval_s=1.0))
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(TARGETS)
    for name, targets in TARGETS.items():
        assert jobs[name]["static_configs"] == [{"targets": targets}]
        assert "metrics_path" not in jobs[name]  # the default, /metrics, is where both serve


def test_a_kubernetes_job_carries_the_prometheus_operators_target_labels() -> None:
    jobs = {"gw": kubernetes_job(["127.0.0.1:8080"], namespace="tinymlops", service="tinymlops-gateway",
                                 pod="tinymlops-gateway-0", container="gateway", endpoint="http", honor_labels=True),
            "plain": ScrapeJob(["127.0.0.1:9090"])}
    config = yaml.safe_load(scrape_config(jobs, scrape_interval_s=1.0))
    gw, plain = config["scrape_configs"]
    assert gw["static_configs"] == [{"targets": ["127.0.0.1:8080"], "labels": {
        "namespace": "tinymlops", "service": "tinymlops-gateway", "pod": "tinymlops-gateway-0",
        "container": "gateway", "endpoint": "http"}}]
    assert gw["honor_labels"] is True
    # The job label is the Service's name, set by relabelling as the Prometheus Operator does.
    assert gw["relabel_configs"] == [{"target_label": "job", "replacement": "tinymlops-gateway"}]
    assert plain == {"job_name": "plain", "static_configs": [{"targets": ["127.0.0.1:9090"]}]}


@pytest.mark.parametrize(("seconds", "text"), [(1.0, "1s"), (15, "15s"), (0.5, "500ms"), (2.25, "2250ms")])
def test_intervals_are_prometheus_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), float("inf"), 0.0001])
def test_nonsense_intervals_are_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="scrape interval"):
        duration(seconds)


@pytest.mark.parametrize("target", ["http://127.0.0.1:8080", "localhost"])
def test_a_target_that_is_not_host_port_is_refused_naming_the_job(target: str) -> None:
    with pytest.raises(ValueError, match=r"job 'gw': target .* must be host:port"):
        scrape_config({"gw": [target]}, scrape_interval_s=1.0)


def test_a_bogus_binary_in_the_environment_raises_saying_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    monkeypatch.setenv(BINARY_ENV, str(tmp_path / "no-such-prometheus"))
    with pytest.raises(PrometheusMissingError) as raised:
        find_prometheus()
    message = str(raised.value)
    assert "no-such-prometheus" in message
    assert "apt-get install prometheus" in message and BINARY_ENV in message


def test_no_binary_on_path_raises_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BINARY_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PrometheusMissingError, match="apt-get install prometheus"):
        find_prometheus()


def test_the_environment_overrides_path_and_an_argument_overrides_both(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    fake = tmp_path / "my-prometheus"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(BINARY_ENV, str(fake))
    assert find_prometheus() == str(fake)
    with pytest.raises(PrometheusMissingError):
        find_prometheus(os.fspath(tmp_path / "other"))
