"""Progressive rollouts on the embedded stack, gated by the real Prometheus it starts.

One stack, one model and one simulated fleet serve the module: revision 1 goes
out at once, a retrained model (revision 2) walks the canary steps across an
operator restart and a manual promotion, and a faulty revision (3) is rolled
back by the analysis on its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import denied_operator_requests, wait_for
from tinymlops.fleet import FleetSimulator, make_fleet
from tinymlops.fleet.identities import FleetIdentities
from tinymlops.fleet.kubeedge import device_manifest, device_models
from tinymlops.layout import plan_prefix
from tinymlops.model.digits import prepare_digits, training_seed
from tinymlops.signing import load_public_key
from tinymlops.stack.kube import Kube
from tinymlops.stack.local import LocalStack
from tinymlops.stack.threads import LoopThread, OperatorThread
from tinymlops.stack.writes import emulator_writes, only_operator, operator_writes, writes_between
from tinymlops_operator.metrics import OperatorMetrics
from tinymlops_operator.prometheus import PrometheusSource

pytestmark = pytest.mark.integration

API = "tinymlops.io/v1alpha1"
NS = "default"
FLEET = "ro-fleet"
SELECTOR = {"matchLabels": {"app.kubernetes.io/part-of": "tinymlops-demo"},
            "matchExpressions": [{"key": "tinymlops.io/arch", "operator": "In", "values": ["x86_64", "aarch64"]}]}


def model(source: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "EdgeModel", "metadata": {"name": "ro-digits", "namespace": NS},
            "spec": {"source": {"uri": source}, "data": {"uri": "store://sources/digits/data.npz"},
                     "variants": {"precisions": ["fp32", "int8"]}, "accuracyBudget": 0.01}}


def fleet(name: str, steps: list[dict[str, Any]], analysis: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": name, "namespace": NS},
            "spec": {"modelRef": {"name": "ro-digits"}, "selector": SELECTOR, "policy": {"objective": "accuracy"},
                     "strategy": {"canary": {"steps": steps, "analysis": analysis}}, **spec}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("rollout")) as running:
        prepare_digits(running.paths.store / "sources" / "digits")
        prepare_digits(running.paths.store / "sources" / "digits-v2", seed=training_seed() + 1)
        prepare_digits(running.paths.store / "sources" / "digits-v3", seed=training_seed() + 2)
        yield running


@pytest.fixture(scope="module")
def simulator(stack: LocalStack, kube: Kube) -> Iterator[FleetSimulator]:
    devices = make_fleet(12, prefix="ro")
    assert stack.gateway is not None
    kube.apply_all(device_models(NS))
    identities = FleetIdentities()
    kube.apply_all(device_manifest(caps, index=index, namespace=NS, gateway_url=stack.gateway.url, fleet=FLEET,
                                   identity=identities.public_base64(caps.name))
                   for index, caps in enumerate(devices))
    sim = FleetSimulator(
        devices, identities=identities, namespace=NS, fleet=FLEET, gateway_url=stack.gateway.url,
        publisher_key=load_public_key(stack.paths.public_key.read_bytes()),
        samples=np.load(stack.paths.store / "sources" / "digits" / "data.npz")["x"], poll_interval_s=0.5,
    )
    loop = LoopThread("rollout-fleet").start()
    loop.call(sim.start())
    yield sim
    loop.call(sim.stop())
    loop.stop()


def status_of(kube: Kube, name: str = FLEET) -> dict[str, Any]:
    return (kube.get(API, "DeviceFleet", NS, name) or {}).get("status") or {}


def selected(simulator: FleetSimulator) -> int:
    return sum(1 for online in simulator.agents.values() if online.agent.caps.arch in ("x86_64", "aarch64"))


def published_plan(stack: LocalStack, name: str = FLEET) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((stack.paths.store / plan_prefix(NS, name) / "plan.json").read_bytes())
    return plan


def test_canary_walks_its_steps_across_an_operator_restart(
    stack: LocalStack, kube: Kube, simulator: FleetSimulator
) -> None:
    kube.apply(model("store://sources/digits/model.onnx"))
    steps = [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}]
    kube.apply(fleet(FLEET, steps, {"interval": "2s", "metrics": [{"name": "error-rate", "max": 0.2}]}))
    wait_for("revision 1 on every selected device",
             lambda: status_of(kube).get("phase") == "Healthy" and simulator.by_revision().get(1) == selected(
                 simulator))

    writes_before = emulator_writes(stack.emulator)
    kube.apply(model("store://sources/digits-v2/model.onnx"))  # a retrained model: revision 2
    paused = wait_for("the canary paused until promoted",
                      lambda: (s := status_of(kube)).get("phase") == "Paused" and s.get("canaryRevision") == 2 and s)
    assert paused["currentStepIndex"] == 1 and paused["canaryWeight"] == 30
    plan = published_plan(stack)
    assert plan["canary"]["weight"] == 30 and plan["canary"]["menu"]["revision"] == 2
    assert plan["menu"]["revision"] == 1
    # Devices put themselves in the cohort: with a weight of 30 some, not all, follow revision 2.
    wait_for("canary devices on revision 2", lambda: 0 < simulator.by_revision().get(2, 0) < selected(simulator))

    # Kill the operator mid-rollout and start a new one: the same step, the same plan, nothing repeated.
    assert stack.operator is not None
    assert stack.operator.stop(timeout=60), "the first operator did not stop"
    serial = published_plan(stack)["serial"]
    stack.operator = OperatorThread()
    stack.operator.start()
    time.sleep(3)
    after = status_of(kube)
    assert (after["currentStepIndex"], after["canaryWeight"], after["canaryRevision"]) == (1, 30, 2)
    assert after["rollout"]["steps"] == paused["rollout"]["steps"]
    assert published_plan(stack)["serial"] == serial  # the same plan: not even re-signed

    kube.patch(API, "DeviceFleet", NS, FLEET, {"metadata": {"annotations": {"tinymlops.io/promote": "step"}}})
    done = wait_for("revision 2 promoted", lambda: (s := status_of(kube)).get("stableRevision") == 2 and s)
    assert done.get("canaryRevision") is None  # the merge patch deleted it
    assert [h["outcome"] for h in done["rollout"]["history"]] == ["Promoted", "Promoted"]
    wait_for("every selected device on revision 2", lambda: simulator.by_revision().get(2) == selected(simulator))
    wait_for("Healthy", lambda: status_of(kube).get("phase") == "Healthy")
    annotations = (kube.get(API, "DeviceFleet", NS, FLEET) or {})["metadata"].get("annotations") or {}
    assert "tinymlops.io/promote" not in annotations  # a command acts once
    # The whole rollout, its build included, cost a few dozen writes, set by its steps (devices never appear
    # in the API).
    writes = writes_between(writes_before, emulator_writes(stack.emulator))
    assert operator_writes(writes) < 60, only_operator(writes)
    touched = {key.split(" ")[2].split("/")[1] for key in only_operator(writes)}
    assert touched <= {"edgemodels", "devicefleets", "events"}, only_operator(writes)  # never a Device


def fleet_reconciles(stack: LocalStack) -> float:
    """DeviceFleet reconciles the operator has run, from its own /metrics: the ticks of its timer."""
    name = OperatorMetrics().reconciles.describe()[0].name
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == name
               for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("kind") == "DeviceFleet")


def test_a_healthy_fleet_left_alone_makes_no_api_writes(stack: LocalStack, kube: Kube,
                                                        simulator: FleetSimulator) -> None:
    """Devices keep reporting, the operator keeps reconciling (every second): nothing is news to the API."""
    devices = selected(simulator)
    wait_for("every selected device on revision 2, and the status saying so",
             lambda: simulator.by_revision().get(2) == devices
             and (s := status_of(kube)).get("phase") == "Healthy" and s.get("converged") == devices
             and s.get("secondsToConverge") is not None)
    before, ticks = emulator_writes(stack.emulator), fleet_reconciles(stack)
    wait_for("five more reconciles of the fleet", lambda: fleet_reconciles(stack) >= ticks + 5)
    writes = writes_between(before, emulator_writes(stack.emulator))
    assert only_operator(writes) == {}


def test_a_faulty_canary_is_rolled_back_by_the_analysis(
    stack: LocalStack, kube: Kube, simulator: FleetSimulator
) -> None:
    wait_for("revision 2 stable", lambda: status_of(kube).get("stableRevision") == 2)
    kube.patch(API, "DeviceFleet", NS, FLEET, {"spec": {"strategy": {"canary": {
        "steps": [{"setWeight": 50}, {"pause": {"duration": "120s"}}, {"setWeight": 100}],
        "analysis": {"interval": "2s", "minDevicesReporting": 1,
                     "metrics": [{"name": "error-rate", "max": 0.05}]}}}}})
    simulator.faults[3] = 0.5  # half the inferences of revision 3 crash on devices
    kube.apply(model("store://sources/digits-v3/model.onnx"))
    wait_for("revision 3 on canary devices", lambda: simulator.by_revision().get(3, 0) > 0)
    aborted = wait_for("the rollback", lambda: (s := status_of(kube)).get("rollout", {}).get("abortReason") and s)
    assert aborted["phase"] == "Degraded" and "error-rate" in aborted["rollout"]["abortReason"]
    analysis = aborted["rollout"]["analysis"]
    assert analysis["verdict"] == "Failed"
    assert any("tinymlops_device_inference_errors_total" in m["query"] for m in analysis["metrics"])
    assert aborted["rollout"]["history"][-1]["outcome"] == "Aborted" and aborted["stableRevision"] == 2
    assert "canary" not in published_plan(stack)
    wait_for("no device left on revision 3", lambda: simulator.by_revision().get(3, 0) == 0)
    # The aborted revision stays aborted: it is not rolled out again by itself.
    time.sleep(3)
    assert status_of(kube).get("canaryRevision") is None


def test_prometheus_scrapes_the_operators_rollout_metrics(stack: LocalStack, kube: Kube) -> None:
    wait_for("the rollback above", lambda: status_of(kube).get("rollout", {}).get("abortReason"))
    assert stack.prometheus_url is not None

    async def value(query: str) -> float | None:
        async with PrometheusSource(stack.prometheus_url or "") as source:
            return await source.query(query)

    selector = f'namespace="{NS}",fleet="{FLEET}"'
    assert wait_for("steps in Prometheus", lambda: asyncio.run(
        value(f"sum(tinymlops_operator_rollout_steps_total{{{selector}}})")))
    assert wait_for("the rollback in Prometheus", lambda: asyncio.run(
        value(f'sum(tinymlops_operator_rollbacks_total{{{selector},reason="RolloutAborted"}})'))) == 1
    assert wait_for("the gateway's fleet gauge by revision", lambda: asyncio.run(
        value(f'sum(tinymlops_fleet_devices{{{selector},revision="2",phase="Running"}})')))


def test_an_unreachable_prometheus_pauses_and_never_promotes(kube: Kube) -> None:
    analysis = {"interval": "1s", "prometheus": {"address": "http://127.0.0.1:9"},
                "metrics": [{"name": "error-rate", "max": 0.05}]}
    kube.apply(fleet("ro-blind", [{"setWeight": 50}, {"pause": {"duration": 1}}, {"setWeight": 100}], analysis))
    wait_for("revision 1", lambda: status_of(kube, "ro-blind").get("stableRevision") == 1)
    # A new policy is a new revision too (no rebuild needed).
    kube.patch(API, "DeviceFleet", NS, "ro-blind", {"spec": {"policy": {"objective": "size"}}})
    paused = wait_for("an inconclusive pause", lambda: (s := status_of(kube, "ro-blind")).get("phase") == "Paused"
                      and s["rollout"].get("analysis") and s)
    assert "127.0.0.1:9" in paused["rollout"]["analysis"]["message"]
    progressing = next(c for c in paused["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "AnalysisInconclusive"
    time.sleep(4)
    assert status_of(kube, "ro-blind").get("stableRevision") == 1  # never promoted blindly


def test_senseless_steps_are_rejected_by_the_api_naming_the_field(kube: Kube) -> None:
    """The CRD's CEL rules refuse them at apply time (the operator would also name them in a condition, for API
    servers without CEL: see tests/unit/test_rollout_logic.py)."""
    with pytest.raises(ApiException) as refused:
        kube.apply(fleet("ro-bad-steps", [{"setWeight": 50}, {"setWeight": 20}, {"setWeight": 100}],
                         {"metrics": [{"name": "error-rate", "max": 0.05}]}))
    assert refused.value.status == 422
    assert "spec.strategy.canary.steps: Invalid value: setWeight values may only grow" in str(refused.value.body)
    assert kube.get(API, "DeviceFleet", NS, "ro-bad-steps") is None


def test_rolling_back_to_an_earlier_revision_by_annotation(
    stack: LocalStack, kube: Kube, simulator: FleetSimulator
) -> None:
    wait_for("the rollback above", lambda: status_of(kube).get("rollout", {}).get("abortReason"))
    kube.patch(API, "DeviceFleet", NS, FLEET, {"metadata": {"annotations": {"tinymlops.io/rollback-to": "1"}}})
    back = wait_for("stable revision 1", lambda: (s := status_of(kube)).get("stableRevision") == 1 and s)
    assert published_plan(stack)["menu"]["revision"] == 1
    # Devices accept the older menu because the newer signed plan names it, not because downgrades are allowed.
    wait_for("every selected device on revision 1", lambda: simulator.by_revision().get(1) == selected(simulator))
    history = back["rollout"]["history"]
    assert history[0]["revision"] == 1 and history[0]["reason"] == "rollback"


def test_a_history_an_earlier_operator_wrote_at_the_top_of_status_is_moved_and_rolled_back_to(kube: Kube) -> None:
    """Operators before the move under status.rollout kept the revisions at the top of status: the CRD keeps
    them, the next reconcile moves them, and tinymlops.io/rollback-to still finds an earlier revision."""
    history = wait_for("stable revision 1", lambda: (s := status_of(kube)).get("stableRevision") == 1
                       and s["rollout"]["history"])
    kube.patch_status(API, "DeviceFleet", NS, FLEET, {"history": history, "rollout": {"history": None}})
    kube.patch(API, "DeviceFleet", NS, FLEET, {"metadata": {"annotations": {"tinymlops.io/rollback-to": "2"}}})
    moved = wait_for("stable revision 2", lambda: (s := status_of(kube)).get("stableRevision") == 2 and s)
    assert "history" not in moved
    assert [h["revision"] for h in moved["rollout"]["history"]] == [h["revision"] for h in history]
    assert moved["rollout"]["history"][1]["reason"] == "rollback"


def test_every_request_the_operator_made_is_allowed_by_the_charts_rbac(
    stack: LocalStack, chart_cluster_role: dict[tuple[str, str], set[str]]
) -> None:
    """Runs last in this module: rollouts patch annotations away and post Events on every step."""
    requests = stack.emulator.requests
    assert any(client == "kopf" and verb == "create" and resource == "events" for client, verb, _, resource in requests)
    assert denied_operator_requests(requests, chart_cluster_role) == []
