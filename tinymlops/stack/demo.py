"""`tinymlops demo`: the whole loop on the embedded stack, from a trained model to a converged fleet.

Train the digits model → start the stack → apply the EdgeModel (the operator
runs the variants pipeline) → register N simulated KubeEdge devices and start
their agents → apply the DeviceFleet (the operator publishes a signed plan) →
wait until every device runs a verified variant → send a forged and a replayed
report, which the gateway refuses (`attacks.py`) → report.  Progress goes to a
`DemoProgress`; the result is a JSON-ready report.  Nothing is left running.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tinymlops import API_GROUP, API_VERSION
from tinymlops.bundled import examples_dir
from tinymlops.devices import DeviceCapabilities
from tinymlops.envelope import device_public_pem, generate_device_key
from tinymlops.errors import DemoError
from tinymlops.fleet import DEVICE_CLASSES, FleetSimulator, make_fleet
from tinymlops.fleet.identities import FleetIdentities
from tinymlops.fleet.kubeedge import KUBEEDGE_API, device_manifest, device_models
from tinymlops.fleet.simulator import INFERENCES_PER_POLL, TwinSink
from tinymlops.layout import source_prefix
from tinymlops.model.digits import prepare_digits
from tinymlops.signing import load_public_key
from tinymlops.stack import mcufleet
from tinymlops.stack.attacks import Eavesdropper, inject
from tinymlops.stack.canary import run_canary
from tinymlops.stack.drift import INFERENCES_PER_POLL as DRIFT_INFERENCES_PER_POLL
from tinymlops.stack.drift import drift_fleet, run_drift
from tinymlops.stack.federated import device_data_env, prepare_federated, run_federated
from tinymlops.stack.kube import Kube, load_manifests
from tinymlops.stack.local import LocalStack
from tinymlops.stack.payperquery import run_pay_per_query
from tinymlops.stack.threads import LoopThread
from tinymlops.stack.waits import condition, wait_until
from tinymlops.stack.writes import emulator_writes, operator_writes

CR_API = f"{API_GROUP}/{API_VERSION}"
POLL_S = 0.5


class DemoProgress(Protocol):
    def stage(self, name: str, detail: str = "") -> None: ...
    def fleet(self, converged: int, total: int, by_phase: Mapping[str, int]) -> None: ...


@dataclass(frozen=True)
class DemoOptions:
    root: Path
    devices: int = 100
    examples: Path = field(default_factory=examples_dir)
    timeout_s: float = 600.0
    # "battery": then play battery/network traces and watch devices adapt; "canary" / "bad-canary": then roll
    # out a retrained model through the fleet's canary steps (see stack/canary.py); "drift": then shift one
    # device class's inputs and watch the fleet name it (see stack/drift.py); "far-edge": then an edge node
    # flashes a few emulated Cortex-M4 boards (see stack/faredge.py); "hybrid": then slow devices choose local,
    # split or cascade as a link trace plays (see stack/hybrid.py); "federated": start from a weak model,
    # train it with Flower on the devices' own data, promote it and roll it out (see stack/federated.py).
    scenario: str = "converge"
    shift: str = "brighter"  # the drift scenario's input shift (tinymlops.fleet.shift.SHIFTS; "none": a control)
    encrypt: bool = True  # artifacts encrypted, the data key wrapped for one key per device class
    trace_s: float = 40.0
    device_poll_s: float | None = None  # None: 2 s, longer for large fleets (see poll_interval)
    federated_rounds: int = 5
    # Emulated Cortex-M4 boards in the default scenario's fleet, behind one edge node (see stack/mcufleet.py), when
    # the Arm toolchain, qemu and TVM are present; 0: none. The CLI adds 2; callers (tests) opt in.
    far_edge_devices: int = 0


@dataclass
class Timings:
    marks: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)
    _start: float = field(default_factory=time.perf_counter)

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[f"{name}_s"] = round(now - self._last, 3)
        self._last = now

    def total(self) -> dict[str, float]:
        return {**self.marks, "total_s": round(time.perf_counter() - self._start, 3)}


def poll_interval(devices: int) -> float:
    """How often each simulated device polls: every 2 s, and no more than ~500 device polls a second in all,
    since the whole fleet, the gateway and the operator share this machine's cores (and one GIL)."""
    return max(2.0, devices / 500)


def run_demo(options: DemoOptions, progress: DemoProgress) -> dict[str, Any]:
    timings = Timings()
    deadline = time.monotonic() + options.timeout_s
    manifests = load_manifests(sorted(options.examples.glob("*.yaml")))
    models = [m for m in manifests if m["kind"] == "EdgeModel"]
    fleets = [m for m in manifests if m["kind"] == "DeviceFleet"]
    if not models or not fleets:
        raise DemoError(f"{options.examples}: needs at least one EdgeModel and one DeviceFleet manifest")
    if options.scenario == "drift":
        fleets = [drift_fleet(f) for f in fleets]
    mcus, mcus_skipped = _far_edge_devices(options)
    if mcus:
        models, fleets = [mcufleet.with_target(m) for m in models], [mcufleet.with_arch(f) for f in fleets]
    model_obj, fleet_obj = models[0], fleets[0]
    namespace = fleet_obj["metadata"].get("namespace", "default")
    fleet_name = fleet_obj["metadata"]["name"]

    progress.stage("model", "training the digits MLP on scikit-learn's bundled data")
    if mcus or mcus_skipped:
        progress.stage("far-edge", mcus_skipped or f"{len(mcus)} emulated Cortex-M4 boards join the fleet behind "
                                                   f"{mcufleet.EDGE_NODE} (variant target {mcufleet.TARGET})")
    poll_s = options.device_poll_s or poll_interval(options.devices)
    # A device is offline after missing three polls' reports, whatever the poll interval.
    with device_data_env(options.root) as device_data, \
            LocalStack(options.root, offline_after_s=max(30.0, 3 * poll_s)) as stack:
        if options.scenario == "federated":  # a weak model, and each device's data in its own file
            digits = prepare_federated(stack.paths.store / source_prefix("digits"), device_data,
                                       make_fleet(options.devices))
        else:
            digits = prepare_digits(stack.paths.store / source_prefix("digits"))
        timings.mark("prepare_model")
        assert stack.kube is not None
        kube = stack.kube
        progress.stage("stack", f"API {stack.api_url}, gateway {stack.gateway.url if stack.gateway else '?'}, "
                                f"Prometheus {stack.prometheus_url or '-'}")
        timings.mark("start_stack")

        group_keys = {cls.name: generate_device_key() for cls in DEVICE_CLASSES} if options.encrypt else {}
        if mcus and options.encrypt:
            group_keys[mcufleet.MCU_CLASS] = generate_device_key()
        for model in models:
            kube.apply(_with_recipients(model, group_keys))
        progress.stage("variants", "operator launched the variants pipeline (kfp.local)")
        # Devices register while the pipeline builds, as they would join a real cluster at any time.
        identities = FleetIdentities()
        _register_devices(kube, options.devices, namespace, stack, fleet_name, identities)
        if mcus:
            mcufleet.register(kube, mcus, namespace=namespace, fleet=fleet_name, identities=identities,
                              gateway_url=stack.gateway.url if stack.gateway else "")
        timings.mark("register_devices")
        edgemodel = wait_for_variants(kube, model_obj, deadline, progress)
        timings.mark("wait_for_variants")

        x = np.load(digits.data_path)["x"].astype(np.float32)
        simulator = FleetSimulator(
            make_fleet(options.devices), identities=identities, namespace=namespace, fleet=fleet_name,
            gateway_url=stack.gateway.url if stack.gateway else "",
            publisher_key=load_public_key(stack.paths.public_key.read_bytes()),
            samples=x, poll_interval_s=poll_s, group_keys=group_keys,
            twin_sink=twin_sink(kube, namespace),
            inferences_per_poll=DRIFT_INFERENCES_PER_POLL if options.scenario == "drift" else INFERENCES_PER_POLL,
        )
        eavesdropper = Eavesdropper(simulator)
        loop = LoopThread("fleet").start()
        mcu_node = None
        try:
            loop.call(simulator.start())
            if mcus:
                mcu_node = mcufleet.start(
                    mcus, namespace=namespace, fleet=fleet_name, gateway_url=stack.gateway.url if stack.gateway else "",
                    publisher_key=simulator.publisher_key, identities=identities,
                    device_key=group_keys.get(mcufleet.MCU_CLASS), samples=x, workdir=options.root / "far-edge-mcus",
                    poll_interval_s=poll_s, firmware_cache=_factory_firmware_cache())
            for fleet in fleets:
                kube.apply(fleet)
            progress.stage("rollout", f"plan published to {options.devices} devices")
            applied = time.perf_counter()
            fleet_status = wait_for_convergence(kube, fleet_obj, options.devices + len(mcus), deadline, progress)
            converge_wall = time.perf_counter() - applied
            timings.mark("converge")
            authentication = inject(stack.gateway.url if stack.gateway else "", eavesdropper)
            progress.stage("authentication", f"forged and replayed reports from {authentication['device']}: "
                           + ", ".join(f"{i['kind']} refused ({i['reason']})" if i["refused"] else
                                       f"{i['kind']} ACCEPTED" for i in authentication["injected"]))
            context = _play_traces(simulator, options.trace_s, progress) if options.scenario == "battery" else None
            if context is not None:
                timings.mark("traces")
            drift = None
            if options.scenario == "drift":
                drift = run_drift(stack, simulator, fleet=fleet_obj, shift=options.shift, deadline=deadline,
                                  progress=lambda line: progress.stage("drift", line))
                timings.mark("drift")
            licensing = None
            if options.scenario == "pay-per-query":
                licensing = run_pay_per_query(
                    stack, model=model_obj, fleet=fleet_obj, identities=identities,
                    device_names=sorted(simulator.agents), group_key=next(iter(group_keys.values()), None),
                    samples=x, deadline=deadline, progress=lambda line: progress.stage("licensing", line))
                timings.mark("licensing")
            federated = None
            if options.scenario == "federated":
                training = next((m for m in manifests if m["kind"] == "FederatedTraining"), None)
                federated = run_federated(stack, simulator, model=model_obj, fleet=fleet_obj, template=training,
                                          rounds=options.federated_rounds, deadline=deadline,
                                          progress=lambda line: progress.stage("federated", line))
                timings.mark("federated")
            rollout = None
            if options.scenario in ("canary", "bad-canary"):
                rollout = run_canary(
                    stack, simulator, model=model_obj, fleet=fleet_obj, bad=options.scenario == "bad-canary",
                    deadline=deadline, with_recipients=lambda m: _with_recipients(m, group_keys),
                    progress=lambda line: progress.stage("canary", line),
                )
                timings.mark("rollout")
            hybrid = None
            if options.scenario == "hybrid":  # while the fleet reports: the gateway reloads its registry then
                from tinymlops.stack.hybrid import run_hybrid

                hybrid = run_hybrid(kube, stack.paths.store, stack.paths.private_key,
                                    stack.gateway.url if stack.gateway else "", digits.model_path, x,
                                    np.load(digits.data_path)["y"], deadline,
                                    lambda model: wait_for_variants(kube, model, deadline, progress),
                                    lambda line: progress.stage("hybrid", line))
                timings.mark("hybrid")
        finally:
            if mcu_node is not None:
                mcu_node.stop()
            loop.call(simulator.stop())
            loop.stop()
        by_class: dict[str, Counter[str]] = {}
        for online in simulator.agents.values():
            active = online.agent.active
            by_class.setdefault(online.agent.caps.device_class, Counter())[active.variant_id if active else "-"] += 1
        report = _report(
            edgemodel, fleet_status, digits.test_accuracy, simulator, by_class,
            seconds_to_converge=float(fleet_status.get("secondsToConverge") or converge_wall),
            timings=timings.total(), api_writes=emulator_writes(stack.emulator),
        )
        report["authentication"] = authentication
        if options.scenario == "converge":
            report["fleet"]["far_edge"] = mcufleet.summary(mcu_node, mcus_skipped,
                                                           stack.gateway.url if stack.gateway else "")
        if mcu_node is not None:
            report["fleet"]["by_device_class"][mcufleet.MCU_CLASS] = dict(sorted(Counter(
                d["variant"] or "-" for d in report["fleet"]["far_edge"]["devices"]).items()))
        if context is not None:
            report["context"] = context
        if rollout is not None:
            report["rollout"] = rollout
        if drift is not None:
            report["drift"] = drift
        if licensing is not None:
            report["licensing"] = licensing
        if hybrid is not None:
            report["hybrid"] = hybrid
        if options.scenario == "far-edge":
            from tinymlops.stack.faredge import run_far_edge

            report["far_edge"] = run_far_edge(stack.paths.store, stack.paths.private_key, digits.model_path,
                                              digits.data_path, x, options.root / "far-edge",
                                              lambda line: progress.stage("far-edge", line))
        if federated is not None:
            report["federated"] = federated
        return report


def _factory_firmware_cache() -> Path:
    """Where the variants pipeline keeps the firmware it measured (`variants/build.py`: the operator's cache_dir
    + firmware), as the operator reads its settings: the edge node beside it reuses that firmware."""
    from tinymlops_operator.config import Settings

    return Settings.from_env().cache_dir / "firmware"


def _far_edge_devices(options: DemoOptions) -> tuple[list[DeviceCapabilities], str | None]:
    """The boards the default scenario adds, or none and why (tools missing: said, never a failure)."""
    if options.scenario != "converge" or not options.far_edge_devices:
        return [], None
    missing = mcufleet.unavailable()
    if missing:
        return [], f"far-edge devices skipped: {missing}"
    return mcufleet.boards(options.far_edge_devices), None


def _play_traces(simulator: FleetSimulator, seconds: float, progress: DemoProgress) -> dict[str, Any]:
    """Battery devices drain below the low-battery threshold, some get charged, some lose the network:
    record how the fleet's variants follow, decided on each device from its own context."""
    simulator.play_traces(seconds)
    timeline = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        agents = list(simulator.agents.values())
        low = sum(1 for o in agents if o.agent.context.battery_pct is not None
                  and o.agent.context.battery_pct < 20 and not o.agent.context.charging)
        timeline.append({
            "t": round(elapsed, 1),
            "by_variant": dict(sorted(simulator.by_variant().items())),
            "low_battery": low,
            "charging": sum(1 for o in agents if o.agent.context.charging),
            "offline": sum(1 for o in agents if not o.online),
        })
        progress.stage("battery", f"t={elapsed:.0f}s low battery {low}, {dict(simulator.by_variant())}")
        time.sleep(min(5.0, seconds / 8))
    return {"trace_seconds": seconds, "offline_switches": simulator.offline_switches, "timeline": timeline,
            "reasons": _sample_reasons(simulator)}


def _sample_reasons(simulator: FleetSimulator) -> dict[str, str]:
    """One device's current reason per (class, variant): what `agent status` would say."""
    reasons: dict[str, str] = {}
    for online in simulator.agents.values():
        active = online.agent.active
        key = f"{online.agent.caps.device_class}/{active.variant_id if active else '-'}"
        reasons.setdefault(key, online.agent.reason)
    return dict(sorted(reasons.items()))


def _with_recipients(model: Mapping[str, Any], group_keys: Mapping[str, X25519PrivateKey]) -> dict[str, Any]:
    """The EdgeModel with its artifacts encrypted for these device-group keys (unchanged without keys)."""
    if not group_keys:
        return dict(model)
    recipients = [{"name": name, "publicKey": device_public_pem(key.public_key()).decode()}
                  for name, key in sorted(group_keys.items())]
    return {**model, "spec": {**model["spec"], "encryption": {"recipients": recipients}}}


def twin_sink(kube: Kube, namespace: str) -> TwinSink:
    """Device twin updates through the Kubernetes API, as KubeEdge's cloudcore would write them."""

    async def write(name: str, status: dict[str, Any]) -> None:
        await asyncio.to_thread(kube.patch_status, KUBEEDGE_API, "Device", namespace, name, status)

    return write


def _register_devices(kube: Kube, count: int, namespace: str, stack: LocalStack, fleet: str,
                      identities: FleetIdentities) -> None:
    """The devices' KubeEdge objects, each registering its identity key (the operator builds the gateway's
    registry from them)."""
    gateway_url = stack.gateway.url if stack.gateway else ""
    kube.apply_all(device_models(namespace))
    kube.apply_all(device_manifest(caps, index=index, namespace=namespace, gateway_url=gateway_url, fleet=fleet,
                                   identity=identities.public_base64(caps.name))
                   for index, caps in enumerate(make_fleet(count)))


def wait_for_variants(kube: Kube, model: Mapping[str, Any], deadline: float, progress: DemoProgress) -> dict[str, Any]:
    meta = model["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    found: dict[str, Any] = {}

    def ready() -> bool:
        obj = kube.get(CR_API, "EdgeModel", namespace, name) or {}
        status = obj.get("status") or {}
        ready = condition(obj, "Ready")
        if status.get("phase") in ("Failed", "Retrying"):
            raise DemoError(f"EdgeModel {namespace}/{name}: {ready.get('reason')}: {ready.get('message')}")
        progress.stage("variants", f"{status.get('phase', 'Pending')}: {ready.get('message', 'waiting for operator')}")
        found.update(obj)
        return status.get("phase") == "Ready"

    wait_until(f"EdgeModel {namespace}/{name} to be Ready", ready, deadline)
    return found


def wait_for_convergence(
    kube: Kube, fleet: Mapping[str, Any], devices: int, deadline: float, progress: DemoProgress
) -> dict[str, Any]:
    meta = fleet["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    status: dict[str, Any] = {}

    def converged() -> bool:
        obj = kube.get(CR_API, "DeviceFleet", namespace, name) or {}
        status.clear()
        status.update(obj.get("status") or {})
        progress.fleet(int(status.get("converged", 0)), devices, status.get("byPhase") or {})
        return status.get("phase") == "Healthy" and int(status.get("converged", 0)) >= devices

    wait_until(f"DeviceFleet {namespace}/{name} to converge", converged, deadline,
               why=lambda: f": {condition({'status': status}, 'Converged').get('message', 'no Converged condition')}")
    return status


REPORTED_VARIANT_FIELDS = ("id", "precision", "target", "format", "sha256", "size_bytes", "accuracy", "latency_ms",
                           "accepted", "reason")


def snake_case(status: Mapping[str, Any]) -> dict[str, Any]:
    """A Kubernetes status (camelCase) with its keys spelled as the report spells them (snake_case, as every
    file of ours): the one place the demo converts.  Only the top keys: the ones below are names (variant ids)."""
    return {re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower(): value for key, value in status.items()}


def _report(
    edgemodel: Mapping[str, Any],
    fleet_status: Mapping[str, Any],
    held_out_accuracy: float,
    simulator: FleetSimulator,
    by_class: Mapping[str, Counter[str]],
    *,
    seconds_to_converge: float,
    timings: Mapping[str, float],
    api_writes: Mapping[str, int],
) -> dict[str, Any]:
    model = snake_case(edgemodel.get("status") or {})
    fleet = snake_case(fleet_status)
    variants = [{key: variant.get(key) for key in REPORTED_VARIANT_FIELDS}
                for variant in map(snake_case, model.get("variants") or ())]
    return {
        "model": {"held_out_accuracy": round(held_out_accuracy, 4), "base_sha256": model.get("base_sha256"),
                  "menu_version": model.get("menu_version")},
        "variants": variants,
        "fleet": {
            "devices": int(fleet.get("devices", 0)),
            "converged": int(fleet.get("converged", 0)),
            "by_variant": dict(fleet.get("by_variant") or {}),
            "by_device_class": {cls: dict(sorted(counts.items())) for cls, counts in sorted(by_class.items())},
            "seconds_to_converge": round(seconds_to_converge, 3),
            "inferences": simulator.inferences,
            "reports_sent": simulator.reports_sent,
            "sessions_loaded": len(simulator.sessions),
        },
        # The operator's writes (tinymlops.stack.writes counts them), and every client's write by request.
        "api_writes": operator_writes(api_writes),
        "api_write_requests": dict(api_writes),
        "timings": dict(timings),
    }
