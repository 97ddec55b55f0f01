"""A real Prometheus server on loopback for the embedded stack.

Rollout analysis queries PromQL, so the local stack runs the same server a
cluster would (Debian's `prometheus` package) rather than a fake: queries that
work here work there.  The server scrapes the gateway's and the operator's
/metrics and keeps its data under one work directory:

    <workdir>/prometheus.yml  the scrape configuration (written on every start)
    <workdir>/data/           the TSDB (short retention: this is a dev stack)
    <workdir>/prometheus.log  the server's output, quoted when it fails to start

A job can carry the target labels the Prometheus Operator attaches to what a
ServiceMonitor or PodMonitor scrapes (`kubernetes_job`): namespace, service,
pod, container, endpoint, job and instance.  The gateway's own `namespace`
label (the fleet's) clashes with the first one; unless the monitor sets
`honorLabels: true`, Prometheus renames it `exported_namespace` and every
analysis query on `namespace="..."` finds nothing.  The embedded stack scrapes
this way so that such a clash shows up on one machine, not first on a cluster.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from tinymlops.errors import DependencyNotReadyError, PrometheusMissingError

BINARY_ENV = "TINYMLOPS_PROMETHEUS_BIN"
LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 15
# A port picked by free_port() can be taken by someone else before Prometheus binds it.
PORT_ATTEMPTS = 3
# The namespace the chart's pods run in, in the docs' `helm install -n tinymlops`: their targets' `namespace`.
RELEASE_NAMESPACE = "tinymlops"


def find_prometheus(binary: str | None = None) -> str:
    """The `prometheus` executable: `binary`, else $TINYMLOPS_PROMETHEUS_BIN, else the one on PATH.

    An explicit choice that does not resolve is an error rather than a fall back
    to PATH: the user asked for that binary and should learn it is not there.
    """
    wanted = binary or os.environ.get(BINARY_ENV) or "prometheus"
    found = shutil.which(wanted)
    if found is None:
        origin = "" if wanted == "prometheus" else f" ({wanted!r} is not an executable)"
        raise PrometheusMissingError(
            f"the prometheus server binary was not found{origin}: install Debian's package "
            f"(`apt-get install prometheus`) or set {BINARY_ENV} to its path"
        )
    return found


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now, for servers that cannot report the port they bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def duration(seconds: float) -> str:
    """Prometheus durations have no fractions: 1.0 → "1s", 0.5 → "500ms"."""
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"scrape interval must be a positive number of seconds, got {seconds!r}")
    millis = round(seconds * 1000)
    if millis < 1:
        raise ValueError(f"scrape interval must be at least 1 ms, got {seconds!r} s")
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job's targets, the labels it attaches to every series, and who wins a label clash."""

    targets: Sequence[str]
    labels: Mapping[str, str] = field(default_factory=dict)  # target labels (`job` among them, if set)
    honor_labels: bool = False  # True: a scraped label beats a target label; False: it becomes exported_<name>


def kubernetes_job(targets: Sequence[str], *, namespace: str, service: str, pod: str, container: str,
                   endpoint: str, honor_labels: bool) -> ScrapeJob:
    """The target labels the Prometheus Operator gives a ServiceMonitor endpoint's targets (`job` is the
    Service's name, `instance` the address), with the monitor's `honorLabels`."""
    labels = {"namespace": namespace, "service": service, "pod": pod, "container": container,
              "endpoint": endpoint, "job": service}
    return ScrapeJob(targets, labels, honor_labels)


def scrape_config(targets: Mapping[str, Sequence[str] | ScrapeJob], *, scrape_interval_s: float) -> str:
    """prometheus.yml: one job per key, scraping its `host:port` targets at /metrics."""
    interval = duration(scrape_interval_s)
    jobs = []
    for job_name, spec in targets.items():
        job = spec if isinstance(spec, ScrapeJob) else ScrapeJob(list(spec))
        if not job_name:
            raise ValueError("scrape job names must not be empty")
        for address in job.targets:
            # A URL here would make Prometheus refuse to start; say so before it does, naming the job.
            if "://" in address or ":" not in address:
                raise ValueError(f"job {job_name!r}: target {address!r} must be host:port")
        static: dict[str, Any] = {"targets": list(job.targets)}
        labels = {name: value for name, value in job.labels.items() if name != "job"}
        if labels:
            static["labels"] = labels
        config: dict[str, Any] = {"job_name": job_name, "static_configs": [static]}
        if job.honor_labels:
            config["honor_labels"] = True
        if "job" in job.labels:
            # As the Prometheus Operator does: the job label comes from relabelling, not from job_name.
            config["relabel_configs"] = [{"target_label": "job", "replacement": job.labels["job"]}]
        jobs.append(config)
    config = {"global": {"scrape_interval": interval, "evaluation_interval": interval}, "scrape_configs": jobs}
    return yaml.safe_dump(config, sort_keys=False)


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class PrometheusServer:
    """`with PrometheusServer(workdir, {"job": ["127.0.0.1:8000"]}) as prom:` then query `prom.url`."""

    def __init__(self, workdir: Path, targets: Mapping[str, Sequence[str] | ScrapeJob], *, port: int = 0,
                 scrape_interval_s: float = 1.0, binary: str | None = None, retention: str = "2h") -> None:
        self.workdir = workdir
        self.targets = dict(targets)
        self.port = port
        self.scrape_interval_s = scrape_interval_s
        self.binary = binary
        self.retention = retention
        self._wanted_port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("PrometheusServer.url: not started yet (the port is picked on start)")
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> PrometheusServer:
        return self.start()  # which stops what it spawned if it fails

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> PrometheusServer:
        if self._process is not None:
            return self
        binary = find_prometheus(self.binary)  # before writing anything: a missing binary is the likely failure
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(scrape_config(self.targets, scrape_interval_s=self.scrape_interval_s))
        attempts = PORT_ATTEMPTS if self._wanted_port == 0 else 1
        for attempt in range(1, attempts + 1):
            self.port = self._wanted_port or free_port()
            try:
                self._spawn(binary)
                self._wait_ready()
                return self
            except BaseException as exc:
                self.stop()  # even on Ctrl-C while waiting: never leave a server behind
                lost_race = isinstance(exc, DependencyNotReadyError) and "address already in use" in self._log_tail()
                if not lost_race or attempt == attempts:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: str) -> None:
        self._log = self.log_path.open("wb")  # one start per log: the tail we quote is this start's
        self._process = subprocess.Popen(
            [binary,
             f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--storage.tsdb.retention.time={self.retention}",
             f"--web.listen-address={LOOPBACK}:{self.port}",
             # Info logs a dozen start-up lines per run, and the stack's output is for the user.
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def _wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise self._not_ready(f"exited with code {code} before it was ready")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                    # Another server on a port we were told to use would answer too: ask for ours by name.
                    if response.status == 200 and b"Prometheus" in response.read(200):
                        return
            except (OSError, urllib.error.URLError):
                pass  # not listening yet, or 503 while the TSDB opens
            if time.monotonic() > deadline:
                raise self._not_ready(f"was not ready within {timeout:.0f} s")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def _not_ready(self, what: str) -> DependencyNotReadyError:
        tail = self._log_tail() or "(empty)"
        return DependencyNotReadyError(f"prometheus on {self.url} {what}; its log {self.log_path} ends with:\n{tail}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait_for_scrape(self, job: str, timeout: float = 10.0) -> None:
        """Return once every target of `job` was scraped successfully (`up == 1`), for tests and the demo."""
        spec = self.targets.get(job)
        # A relabelled job (kubernetes_job) carries the Service's name in its `job` label, not the job's name.
        label = spec.labels.get("job", job) if isinstance(spec, ScrapeJob) else job
        query = urllib.parse.urlencode({"query": f'min(up{{job="{label}"}})'})
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = _get_json(f"{self.url}/api/v1/query?{query}", timeout=2.0)["data"]["result"]
                if result and float(result[0]["value"][1]) == 1.0:
                    return
            except (OSError, urllib.error.URLError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                why = self._scrape_errors(job)
                raise DependencyNotReadyError(f"prometheus on {self.url}: job {job!r} not scraped within "
                                              f"{timeout:.0f} s ({why})")
            time.sleep(0.1)

    def _scrape_errors(self, job: str) -> str:
        """The targets' own last errors say why (connection refused, 404) better than a timeout does."""
        try:
            targets = _get_json(f"{self.url}/api/v1/targets", timeout=2.0)["data"]["activeTargets"]
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            return "targets unknown"
        mine = [t for t in targets if t.get("scrapePool") == job]
        if not mine:
            return "no such job in the scrape configuration"
        return "; ".join(f"{t.get('scrapeUrl')}: {t.get('health')} {t.get('lastError') or ''}".strip() for t in mine)
