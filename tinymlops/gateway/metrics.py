"""Prometheus metrics of the gateway: device telemetry and fleet gauges.

Each gateway owns its CollectorRegistry, so several gateways (tests, the
embedded stack) live in one process without clashing over metric names.

Device telemetry is labelled namespace, fleet, variant, device_class and
revision (the rollout revision of the model that served, as a string; "0" for
agents that predate rollouts), so a rollout analysis can compare a canary
revision with the stable one:

- tinymlops_device_inferences_total, ..._inference_errors_total,
  ..._energy_joules_total, ..._inference_latency_seconds (steady state: a
  device leaves its first inferences after a switch out),
  ..._warmup_inference_latency_seconds (those first inferences),
  tinymlops_device_instructions_total (what a microcontroller's timer counted
  for its inferences; divide by the inferences for instructions per inference): all five labels;
- tinymlops_device_model_load_seconds: namespace, fleet, variant, revision;
- tinymlops_device_update_failures_total{namespace, fleet, revision}: devices
  entering phase Failed, by the revision they were moving to (a failed install
  or health check of that revision), counted once per failure;
- tinymlops_fleet_devices{namespace, fleet, revision, phase} (by the revision
  devices follow) and tinymlops_fleet_converged_devices{namespace, fleet,
  variant} (running the fleet's highest reported menu version) and
  tinymlops_fleet_stale_devices{namespace, fleet} (online devices that report
  no fresh plan: see tinymlops.freshness) and
  tinymlops_fleet_extraction_alarms{namespace, fleet, device_class} (clients
  under a model-extraction alarm on the fleet's online devices, see
  tinymlops.protection.prada; device classes capped per fleet) and
  tinymlops_fleet_personalised_devices{namespace, fleet, device_class}
  (online devices whose own last layer serves, see tinymlops.personalise):
  gauges computed at scrape time;
- tinymlops_gateway_reports_total{result} (accepted, rejected) and
  tinymlops_gateway_reports_rejected_total{reason}: rejected reports by the
  reason `gateway/authn.py` names (malformed, unknown-device, bad-signature,
  replay, rate-limited); a rejected report reaches no other metric;
- drift (`driftstate.py`), per fleet × revision × device class, computed at
  scrape time from the rolling sum of the devices' histograms:
  tinymlops_fleet_drift_rows{namespace, fleet, revision, device_class} (rows
  merged, scored or not), and once enough rows are merged
  tinymlops_fleet_drift_score{..., feature, statistic} (psi, js, ks; features
  are the menu's input features plus `@confidence` and `@class`) and
  tinymlops_fleet_drifted{namespace, fleet, revision, device_class} (0/1: a
  feature drifted at the stated false discovery rate);
  tinymlops_gateway_drift_rejected_total{reason}: drift histograms refused
  (the report itself still counts), by `tinymlops.drift.merge.REASONS`.

Names follow Prometheus' conventions: base units (seconds, joules), no label
name or value inside a metric name (sum over any label means something), and
no `_created` series: prometheus-client would add one per labelled counter and
histogram, doubling the series while nothing reads them.

Cardinality stays bounded by construction: no label ever holds a device id;
label values that devices choose (namespace, fleet, variant, class, revision)
are capped at `max_series` combinations per family group, past which they fold
into `_other`; and the fleet gauge keeps the `MAX_FLEET_REVISIONS` highest
revisions of each fleet, folding older ones into `_other`.  A misbehaving
agent cannot exhaust the gateway or Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from tinymlops.drift.merge import REASONS as DRIFT_REASONS
from tinymlops.drift.score import STATISTICS
from tinymlops.gateway.authn import REASONS
from tinymlops.gateway.driftstate import OVER_CAPACITY, DriftBook
from tinymlops.gateway.fleetstate import NO_VARIANT, Applied, FleetState
from tinymlops.report import OFFLINE, PHASES, Report

# On-device inference spans a microcontroller's 50 µs to a slow CPU's second.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
# Loading (and verifying) a model takes milliseconds to tens of seconds on small devices.
LOAD_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OVERFLOW = "_other"
DEVICE_LABELS = ("namespace", "fleet", "variant", "device_class", "revision")
LOAD_LABELS = ("namespace", "fleet", "variant", "revision")
FAILURE_LABELS = ("namespace", "fleet", "revision")
# A rollout compares the newest revisions (canary and stable); a few more leave room for stragglers
# still following older ones, and the cap keeps devices lying about revisions from adding series.
MAX_FLEET_REVISIONS = 8
STORE_KINDS = ("plan", "menu", "blob", "other")


# prometheus-client leaves this one untyped; it takes and returns nothing.
_disable_created = cast(Callable[[], None], disable_created_metrics)


class FleetCollector(Collector):
    """Fleet gauges computed from FleetState at scrape time, so they are never stale (Offline included)."""

    def __init__(self, state: FleetState) -> None:
        self.state = state

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        devices, converged, stale, alarms, personalised = self._families()
        for namespace, fleet in self.state.fleets():
            summary = self.state.summary(namespace, fleet)
            stale.add_metric([namespace, fleet], summary.stale)
            for device_class, count in self.state.extraction_alarms(namespace, fleet).items():
                alarms.add_metric([namespace, fleet, device_class], count)
            for device_class, count in self.state.personalised_devices(namespace, fleet).items():
                personalised.add_metric([namespace, fleet, device_class], count)
            # Zeros too: an alert on "Failed > 0" needs the series to exist before it fires.
            for revision, phases in fold_revisions(summary.by_revision).items():
                for phase in (*PHASES, OFFLINE):
                    devices.add_metric([namespace, fleet, revision, phase], phases.get(phase, 0))
            for variant, count in sorted(summary.by_variant.items()):
                converged.add_metric([namespace, fleet, variant], count)
        yield devices
        yield converged
        yield stale
        yield alarms
        yield personalised

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
                             GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "tinymlops_fleet_devices",
                "Devices per fleet by the rollout revision they follow and the phase of their latest report"
                " (Offline: silent too long).",
                labels=["namespace", "fleet", "revision", "phase"],
            ),
            GaugeMetricFamily(
                "tinymlops_fleet_converged_devices",
                "Devices running the fleet's highest reported menu version, by the variant they run.",
                labels=["namespace", "fleet", "variant"],
            ),
            GaugeMetricFamily(
                "tinymlops_fleet_stale_devices",
                "Online devices whose freshest signed plan has expired: they keep serving but get no updates"
                " (a frozen mirror, or a gateway they cannot reach).",
                labels=["namespace", "fleet"],
            ),
            GaugeMetricFamily(
                "tinymlops_fleet_extraction_alarms",
                "Clients of the model under a model-extraction alarm (PRADA-style test) on the fleet's online"
                " devices, by device class.",
                labels=["namespace", "fleet", "device_class"],
            ),
            GaugeMetricFamily(
                "tinymlops_fleet_personalised_devices",
                "Online devices whose own last layer, fitted on their own data and kept on the device, serves on top"
                " of the signed variant (their report's personalised flag), by device class.",
                labels=["namespace", "fleet", "device_class"],
            ),
        )


class DriftCollector(Collector):
    """Drift gauges from the DriftBook at scrape time (which re-scores on its own cadence, not per scrape)."""

    def __init__(self, book: DriftBook | None) -> None:
        self.book = book  # None: a gateway without drift aggregation still describes the families

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        rows, scores, drifted = self._families()
        results = self.book.scores() if self.book is not None else {}
        for (namespace, fleet, revision, device_class), result in sorted(results.items()):
            group = [namespace, fleet, str(revision), device_class]
            rows.add_metric(group, result.rows)
            if not result.scored:
                continue  # no score at all before enough rows: an absent series, not a reassuring zero
            drifted.add_metric(group, 1.0 if result.drifted else 0.0)
            for feature in result.features:
                for statistic in STATISTICS:
                    scores.add_metric([*group, feature.name, statistic], feature.value(statistic))
        yield rows
        yield scores
        yield drifted

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        group = ["namespace", "fleet", "revision", "device_class"]
        return (
            GaugeMetricFamily("tinymlops_fleet_drift_rows",
                              "Rows of drift histograms merged over the rolling window, per revision and device class.",
                              labels=group),
            GaugeMetricFamily("tinymlops_fleet_drift_score",
                              "Drift of a feature against the menu's reference (psi, js in bits, binned ks).",
                              labels=[*group, "feature", "statistic"]),
            GaugeMetricFamily("tinymlops_fleet_drifted",
                              "1 if any feature drifted significantly (Benjamini-Hochberg over the features), else 0.",
                              labels=group),
        )


def fold_revisions(
    by_revision: dict[str, dict[str, int]], limit: int = MAX_FLEET_REVISIONS
) -> dict[str, dict[str, int]]:
    """The `limit` highest revisions as they are, every older one summed into `_other`."""
    ordered = sorted(by_revision, key=int, reverse=True)
    folded = {revision: dict(by_revision[revision]) for revision in ordered[:limit]}
    if len(ordered) > limit:
        other = folded[OVERFLOW] = {}
        for revision in ordered[limit:]:
            for phase, count in by_revision[revision].items():
                other[phase] = other.get(phase, 0) + count
    return folded


class GatewayMetrics:
    def __init__(self, state: FleetState, *, drift: DriftBook | None = None, max_series: int = 10_000) -> None:
        _disable_created()  # process-wide in prometheus-client; the operator does the same
        self.registry = CollectorRegistry()
        self.max_series = max_series
        self._series: set[tuple[str, ...]] = set()
        self._failure_series: set[tuple[str, ...]] = set()
        self.inferences = Counter(
            "tinymlops_device_inferences", "Inferences reported by devices.",
            DEVICE_LABELS, registry=self.registry,
        )
        self.errors = Counter(
            "tinymlops_device_inference_errors", "Failed inferences reported by devices.",
            DEVICE_LABELS, registry=self.registry,
        )
        self.energy = Counter(
            "tinymlops_device_energy_joules", "Estimated inference energy reported by devices.",
            DEVICE_LABELS, registry=self.registry,
        )
        self.instructions = Counter(
            "tinymlops_device_instructions", "Instructions a device counted for its inferences (microcontrollers).",
            DEVICE_LABELS, registry=self.registry,
        )
        self.latency = Histogram(
            "tinymlops_device_inference_latency_seconds",
            "On-device inference latency in steady state (without the first inferences after a switch).",
            DEVICE_LABELS, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.warmup_latency = Histogram(
            "tinymlops_device_warmup_inference_latency_seconds",
            "Latency of the first inferences after a device switched model (cold sessions, caches).",
            DEVICE_LABELS, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.load = Histogram(
            "tinymlops_device_model_load_seconds", "Time a device took to load a model variant.",
            LOAD_LABELS, buckets=LOAD_BUCKETS, registry=self.registry,
        )
        self.update_failures = Counter(
            "tinymlops_device_update_failures",
            "Devices entering phase Failed (a failed install or health check), by the revision they moved to.",
            FAILURE_LABELS, registry=self.registry,
        )
        self.reports = Counter(
            "tinymlops_gateway_reports", "Device reports received, by outcome.", ("result",), registry=self.registry,
        )
        self.rejections = Counter(
            "tinymlops_gateway_reports_rejected", "Device reports rejected, by reason.", ("reason",),
            registry=self.registry,
        )
        self.store_requests = Counter(
            "tinymlops_gateway_store_requests", "Artifact store requests served, by kind and HTTP status.",
            ("kind", "code"), registry=self.registry,
        )
        for result in ("accepted", "rejected"):
            self.reports.labels(result=result)  # export zeros from the start
        self.drift_rejections = Counter(
            "tinymlops_gateway_drift_rejected", "Drift histograms refused (their report still counts), by reason.",
            ("reason",), registry=self.registry,
        )
        for reason in REASONS:
            self.rejections.labels(reason=reason)
        for reason in (*DRIFT_REASONS, OVER_CAPACITY):
            self.drift_rejections.labels(reason=reason)
        self.registry.register(FleetCollector(state))
        self.registry.register(DriftCollector(drift))

    def _bounded(self, series: set[tuple[str, ...]], labels: tuple[str, ...]) -> tuple[str, ...]:
        if labels not in series:
            if len(series) >= self.max_series:
                return (OVERFLOW,) * len(labels)
            series.add(labels)
        return labels

    def _device_labels(self, report: Report) -> tuple[str, ...]:
        return self._bounded(self._series, (
            report.namespace, report.fleet, report.variant or NO_VARIANT, report.device_class, str(report.revision),
        ))

    def observe_report(self, report: Report, applied: Applied) -> None:
        if not applied.fresh:
            return  # a retried report: its counts are already in
        labels = self._device_labels(report)
        if report.inferences:
            self.inferences.labels(*labels).inc(report.inferences)
        else:
            self.inferences.labels(*labels)  # the series exists from the first report
        if report.energy_mj:
            self.energy.labels(*labels).inc(report.energy_mj / 1000.0)  # devices report mJ
        if report.instructions:  # only devices that count them (a series only where there is something to say)
            self.instructions.labels(*labels).inc(report.instructions)
        if report.errors:
            self.errors.labels(*labels).inc(report.errors)
        else:
            self.errors.labels(*labels)
        histogram = self.latency.labels(*labels)
        for latency_ms in report.latencies_ms:
            histogram.observe(latency_ms / 1000.0)
        if report.warmup_latencies_ms:
            warmup = self.warmup_latency.labels(*labels)
            for latency_ms in report.warmup_latencies_ms:
                warmup.observe(latency_ms / 1000.0)
        if applied.new_load_ms is not None:
            namespace, fleet, variant, _, revision = labels
            self.load.labels(namespace, fleet, variant, revision).observe(applied.new_load_ms / 1000.0)
        target = self._bounded(self._failure_series, (report.namespace, report.fleet, str(report.target_revision)))
        failures = self.update_failures.labels(*target)
        # Created at zero by the first report following a revision: increase() over a series that
        # appears at 1 would miss the very first failure of a canary.
        if applied.new_failure:
            failures.inc()

    def count_reports(self, *, accepted: int, rejected: int) -> None:
        self.reports.labels(result="accepted").inc(accepted)
        self.reports.labels(result="rejected").inc(rejected)

    def count_rejections(self, reasons: Iterable[str]) -> None:
        for reason in reasons:
            self.rejections.labels(reason=reason if reason in REASONS else "malformed").inc()

    def count_drift_rejections(self, reasons: Iterable[str]) -> None:
        known = (*DRIFT_REASONS, OVER_CAPACITY)
        for reason in reasons:
            self.drift_rejections.labels(reason=reason if reason in known else "malformed").inc()

    def count_store_request(self, kind: str, code: int) -> None:
        self.store_requests.labels(kind=kind if kind in STORE_KINDS else "other", code=str(code)).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry's text in the format the scraper asked for, and its Content-Type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
