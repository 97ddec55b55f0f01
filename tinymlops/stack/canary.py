"""The demo's canary scenarios: a new model version rolls out through the fleet's steps.

`canary`: a retrained model goes to 10%, 50%, then every device, each step
gated by the analysis in Prometheus.  `bad-canary`: the same, but devices that
run the new revision crash on a share of their inferences (a simulated field
fault the health check cannot see); the analysis fails and the operator rolls
every device back to the stable revision on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from tinymlops import API_GROUP, API_VERSION
from tinymlops.errors import DemoError, MetricsUnavailableError
from tinymlops.fleet import FleetSimulator
from tinymlops.layout import source_prefix
from tinymlops.model.digits import prepare_digits, training_seed
from tinymlops.stack.local import LocalStack
from tinymlops.stack.writes import emulator_writes, operator_writes, writes_between
from tinymlops.timestamps import seconds
from tinymlops_operator.prometheus import PrometheusSource

CR_API = f"{API_GROUP}/{API_VERSION}"
BAD_FAULT_RATE = 0.3  # a third of the canary's inferences crash
POLL_S = 0.5


def run_canary(
    stack: LocalStack,
    simulator: FleetSimulator,
    *,
    model: Mapping[str, Any],
    fleet: Mapping[str, Any],
    bad: bool,
    deadline: float,
    with_recipients: Callable[[Mapping[str, Any]], dict[str, Any]],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Publish a retrained model and follow the fleet's rollout to its promotion or rollback."""
    assert stack.kube is not None
    kube = stack.kube
    namespace, fleet_name = fleet["metadata"].get("namespace", "default"), fleet["metadata"]["name"]
    status = (kube.get(CR_API, "DeviceFleet", namespace, fleet_name) or {}).get("status") or {}
    revision = int((status.get("rollout") or {}).get("nextRevision") or 2)
    stable = int(status.get("stableRevision") or 1)

    progress("retraining the digits model (another seed): model version 2")
    source = source_prefix("digits-v2")
    prepare_digits(stack.paths.store / source, seed=training_seed() + 1)
    if bad:
        simulator.faults[revision] = BAD_FAULT_RATE
    writes_before = emulator_writes(stack.emulator)
    started = time.monotonic()
    new_model = {**model, "spec": {**model["spec"], "source": {"uri": f"store://{source}/model.onnx"}}}
    kube.apply(with_recipients(new_model))

    fault_seen: float | None = None  # the first device runs the faulty revision
    fault_in_metrics: float | None = None  # its errors are in Prometheus, where the analysis looks
    errors_query = (f'sum(tinymlops_device_inference_errors_total{{namespace="{namespace}",fleet="{fleet_name}",'
                    f'revision="{revision}"}})')
    last_line = ""
    while True:
        obj = kube.get(CR_API, "DeviceFleet", namespace, fleet_name) or {}
        status = obj.get("status") or {}
        rollout = status.get("rollout") or {}
        on_canary = simulator.by_revision().get(revision, 0)
        if bad and fault_seen is None and on_canary:
            fault_seen = time.monotonic()
        if bad and fault_in_metrics is None and stack.prometheus_url and _positive(stack.prometheus_url, errors_query):
            fault_in_metrics = time.monotonic()
        line = (f"revision {revision}: phase {status.get('phase')}, step {status.get('currentStepIndex')}, "
                f"weight {status.get('canaryWeight')}%, {on_canary} devices on it, analysis "
                f"{(rollout.get('analysis') or {}).get('verdict', '-')}")
        if line != last_line:
            progress(line)
            last_line = line
        promoted = status.get("stableRevision") == revision
        aborted = any(h.get("revision") == revision and h.get("outcome") == "Aborted"
                      for h in rollout.get("history") or ())
        if promoted or aborted:
            break
        if time.monotonic() > deadline:
            raise DemoError(f"timed out in the rollout of revision {revision}: {line}")
        time.sleep(POLL_S)
    decided_after = time.monotonic() - started

    # Promotion: wait until every device runs the new revision; rollback: until none runs it any more.
    def settled() -> bool:
        counts = simulator.by_revision()
        return counts.get(revision, 0) == 0 if aborted else counts.get(revision, 0) == len(simulator.agents)

    while not settled():
        if time.monotonic() > deadline:
            raise DemoError(f"devices did not settle after the rollout of revision {revision}: "
                               f"{dict(simulator.by_revision())}")
        time.sleep(POLL_S)
    settled_after = time.monotonic() - started
    created: dict[str, Any] = next((h for h in rollout.get("history") or () if h.get("revision") == revision), {})
    t0 = seconds(created.get("createdAt"))
    steps = [{"step": entry.get("step"), "t_s": round(seconds(entry.get("at")) - t0, 1)}
             for entry in rollout.get("steps") or ()]
    report: dict[str, Any] = {
        "revision": revision,
        "stable_revision_before": stable,
        "strategy": (fleet.get("spec") or {}).get("strategy"),
        "steps": steps,
        "rolled_back": aborted,
        "reason": rollout.get("abortReason") if aborted else "every step passed",
        "seconds_to_decision": round(decided_after, 1),
        "seconds_to_settle": round(settled_after, 1),
        "devices_on_new_revision": simulator.by_revision().get(revision, 0),
        "analysis": rollout.get("analysis"),
    }
    # Every write from the new model version on: the operator's (its build included) and the devices' twins.
    writes = writes_between(writes_before, emulator_writes(stack.emulator))
    report.update(api_writes=operator_writes(writes), api_write_requests=writes)
    if bad:
        report["fault_rate"] = BAD_FAULT_RATE
        if fault_seen is not None:
            report["seconds_from_fault_to_rollback"] = round(decided_after - (fault_seen - started), 1)
        if fault_in_metrics is not None:
            report["seconds_from_fault_in_prometheus_to_rollback"] = round(
                decided_after - (fault_in_metrics - started), 1)
    return report


def _positive(url: str, query: str) -> bool:
    """Whether Prometheus answers `query` with a positive value yet.  Asked with the operator's own client (the
    stack wires the operator in anyway), so "in Prometheus" means what the rollout analysis sees."""

    async def ask() -> float | None:
        async with PrometheusSource(url, timeout_s=2.0) as source:
            return await source.query(query)

    try:
        return bool(asyncio.run(ask()))
    except MetricsUnavailableError:
        return False
