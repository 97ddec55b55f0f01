"""The demo's hybrid scenario: slow devices share the work with the gateway as their link changes.

An EdgeModel asks for the digits model on raw inputs with the sample pre/post WebAssembly modules
(examples/wasm) and its split parts (`spec.hybrid.splitParts`); the operator runs the variants pipeline,
which publishes the signed menu with each exact split point's head and tail.  Four slow devices (the
Cortex-M4 class of the energy model, ~300x slower than the build host) register their identity keys as
KubeEdge Devices, verify the menu, install their variant with its modules, and get a `HybridExecutor` for
their fleet policy: two may only split (no cloud variant), two may cascade to the fp32 variant (their owner
consents to inputs leaving them).  Then the link trace (`hybridtrace.TRACE`) plays: every raw input goes
through the pre module, the agent's choice (local, split at k, cascade), the real tail or cloud variant on
the gateway when chosen, and the post module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from tinymlops import API_GROUP, API_VERSION
from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.hybrid import HybridExecutor, TailClient
from tinymlops.agent.hybridsetup import hybrid_executor, wanted_heads
from tinymlops.agent.modules import ModuleBlobs
from tinymlops.agent.sessions import SessionCache
from tinymlops.bundled import examples_dir
from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import DemoError, GatewayError
from tinymlops.fleet.kubeedge import device_manifest, device_models
from tinymlops.fleet.profiles import FLEET_LABEL
from tinymlops.layout import blob_key, menu_key, model_prefix, signature_key
from tinymlops.selection.hybrid import Link, choose_mode
from tinymlops.signing import load_private_key, public_key_base64
from tinymlops.stack.hybridtrace import LINKS, STEP_S, TRACE, Inference, SimulatedLink, summarise
from tinymlops.stack.kube import Kube
from tinymlops.store import DirectoryStore
from tinymlops.wasm.modules import modules_of

MODEL = "digits-hybrid"
SOURCES = "sources/digits-hybrid"
INFERENCES_PER_STEP = 3
POLICIES: Mapping[str, Mapping[str, Any]] = {
    # The most accurate variant on the device; split with the gateway when that is faster, never a cascade.
    "split": {"objective": "accuracy", "hybrid": {"batterySaverPct": 20}},
    # The smallest variant on the device; its unsure answers (top class below 0.9) go to the fp32 variant.
    "cascade": {"objective": "size", "hybrid": {"cloud": {"variant": "fp32", "threshold": 0.9, "maxMs": 20}}},
}


@dataclass(frozen=True)
class HybridDevice:
    caps: DeviceCapabilities
    policy: str  # a key of POLICIES
    consent_inputs: bool


DEVICES = tuple(
    HybridDevice(DeviceCapabilities(f"slow-node-{i}", "cortex-m4", "slow-node", 64, 4096), policy, policy == "cascade")
    for i, policy in enumerate(("split", "split", "cascade", "cascade")))


def edge_model(namespace: str, source_uri: str) -> dict[str, Any]:
    """The scenario's EdgeModel: the digits model on raw inputs with the sample pre/post modules, its split
    parts published (`spec.hybrid.splitParts`), in the clear (parts are never encrypted)."""
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "EdgeModel",
            "metadata": {"name": MODEL, "namespace": namespace},
            "spec": {"source": {"uri": source_uri}, "data": {"uri": f"store://{SOURCES}/raw.npz"},
                     "pre": {"uri": f"store://{SOURCES}/pre_digits.wasm"},
                     "post": {"uri": f"store://{SOURCES}/post_topk.wasm"},
                     "variants": {"precisions": ["fp32", "int8"]}, "hybrid": {"splitParts": True}}}


def run_hybrid(kube: Kube, store_root: Path, private_key: Path, gateway_url: str, digits_model: Path,
               x: NDArray[np.float32], y: NDArray[np.int64], deadline: float,
               wait_ready: Callable[[Mapping[str, Any]], object], progress: Callable[[str], None]) -> dict[str, Any]:
    """Publish (through the operator), register, install, play the trace; the report's `hybrid` section.
    `wait_ready`: returns once the EdgeModel is Ready (DemoError naming why it failed)."""
    key = load_private_key(private_key.read_bytes(), source=str(private_key))
    store, prefix, namespace = DirectoryStore(store_root), model_prefix("default", MODEL), "default"
    sources = store_root / SOURCES
    sources.mkdir(parents=True, exist_ok=True)
    np.savez(sources / "raw.npz", x=(x * 16).astype(np.float32), y=y)  # as a sensor gives them: 0..16
    for name in ("pre_digits.wasm", "post_topk.wasm"):
        (sources / name).write_bytes((examples_dir() / "wasm" / name).read_bytes())
    progress(f"EdgeModel {MODEL}: the variants pipeline builds it with the pre/post modules and split parts")
    wait_ready(kube.apply(edge_model(namespace, f"store://{digits_model.relative_to(store_root).as_posix()}")))
    menu_json, signature = store.get(menu_key(prefix)), store.get(signature_key(menu_key(prefix)))
    menu = json.loads(menu_json)
    keys = {d.caps.name: Ed25519PrivateKey.generate() for d in DEVICES}
    _register(kube, namespace, gateway_url, keys)
    link = SimulatedLink()
    clock = _StepClock()
    agents: dict[str, DeviceAgent] = {}
    for device in DEVICES:
        agent = DeviceAgent(device.caps, key.public_key(), SessionCache(), watch_extraction=False)
        agent.accept_menu(menu_json, signature)
        variant = agent.choose(menu, POLICIES[device.policy])
        entries = modules_of(menu, variant)
        agent.install(variant, store.get(blob_key(prefix, str(variant["sha256"]))), int(menu["version"]),
                      agent.choice.reason if agent.choice else "chosen",
                      modules=ModuleBlobs(entries, {r: store.get(blob_key(prefix, str(e["sha256"])))
                                                    for r, e in entries.items()}))
        heads = {k: store.get(blob_key(prefix, digest)) for k, digest in wanted_heads(variant).items()}
        client = TailClient(gateway_url, keys[device.caps.name], (namespace, device.caps.name))
        agent.hybrid = hybrid_executor(agent, menu, heads, client, consent_inputs=device.consent_inputs,
                                       link_model=link, clock=clock)
        agents[device.caps.name] = agent
        progress(f"{device.caps.name}: {variant['id']} with pre/post modules, {len(heads)} split point(s), "
                 f"policy {device.policy}")
    _wait_registered(agents, deadline, progress)
    return _play(agents, link, clock, (x * 16).astype(np.float32), progress)


class _StepClock:
    """The devices' clock: simulated seconds since the trace started (probes and retries follow the trace)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _register(kube: Kube, namespace: str, gateway_url: str, keys: Mapping[str, Ed25519PrivateKey]) -> None:
    """Each device's KubeEdge object with its identity key (the operator adds it to the gateway's registry);
    without the demo fleet's label, so the DeviceFleet does not count them."""
    kube.apply_all(device_models(namespace))
    for index, device in enumerate(DEVICES):
        manifest = device_manifest(device.caps, index=index, namespace=namespace, gateway_url=gateway_url,
                                   fleet=f"hybrid-{device.policy}",
                                   identity=public_key_base64(keys[device.caps.name].public_key()))
        manifest["metadata"]["labels"].pop(FLEET_LABEL, None)
        kube.apply(manifest)


def _wait_registered(agents: Mapping[str, DeviceAgent], deadline: float, progress: Callable[[str], None]) -> None:
    """Until the gateway knows every device's key (the operator writes the registry, the gateway reloads it):
    each device sends one real tail request of zeros until it is answered."""
    for name, agent in agents.items():
        executor = _executor(agent)
        k, digest = next(iter(executor.tails.items()))
        zeros = np.zeros((1, *executor.heads[k].one(np.zeros(64, np.float32)).shape), np.float32)
        while True:
            try:
                executor.client.run(executor.model, digest, zeros)
                break
            except GatewayError as exc:
                if time.monotonic() > deadline:
                    raise DemoError(f"{name}: the gateway never accepted its tail requests ({exc})") from exc
                progress(f"waiting for the gateway to register {name}")
                time.sleep(0.5)


def _play(agents: Mapping[str, DeviceAgent], link: SimulatedLink, clock: _StepClock, raw: NDArray[np.float32],
          progress: Callable[[str], None]) -> dict[str, Any]:
    inferences: list[Inference] = []
    reasons: dict[str, list[str]] = {name: [] for name in agents}
    last: dict[str, tuple[str, int | None]] = {}
    served = 0
    for step, name in enumerate(TRACE):
        link.name, clock.now = name, step * STEP_S
        for device, agent in agents.items():
            executor = _executor(agent)
            for _ in range(INFERENCES_PER_STEP):
                before = (sum(executor.modes.values()), executor.bytes_sent, executor.modes.copy())
                if agent.infer(raw[served % len(raw)]) is None:
                    raise DemoError(f"{device}: inference failed ({agent.module_error or 'see its errors'})")
                served += 1
                (mode,) = (executor.modes - before[2]).keys()
                inferences.append(Inference(step, device, name, mode, executor.last_ms,
                                            None if mode.startswith("cascade") else _best_ms(executor, name),
                                            executor.bytes_sent - before[1]))
            choice = executor.choice
            if choice is not None and (choice.mode, choice.k) != last.get(device):  # a change of mode, and why
                last[device] = (choice.mode, choice.k)
                reasons[device].append(f"t={clock.now:g}s {name}: {choice.reason}")
        modes = {i.mode for i in inferences if i.step == step}
        progress(f"t={clock.now:g}s link {name}: {', '.join(sorted(modes))}")
    section = summarise(inferences, reasons)
    section["devices"] = {name: {"variant": agent.active.variant_id if agent.active else None,
                                 "policy": next(d.policy for d in DEVICES if d.caps.name == name),
                                 "modes": dict(_executor(agent).modes), "fallbacks": _executor(agent).fallbacks,
                                 "probes": _executor(agent).probes, "errors": agent.telemetry.errors,
                                 "pre_post_modules": bool(agent.active and agent.active.modules)}
                          for name, agent in agents.items()}
    return section


def _best_ms(executor: HybridExecutor, link_name: str) -> float:
    """The fastest of local and the split points on the step's true link (what an oracle would run)."""
    true = LINKS[link_name]
    costs = replace(executor.costs, cloud_ms=None)
    if true is None:
        return costs.device_ms
    return choose_mode(costs, Link(true[0], true[1]), replace(executor.policy, battery_saver_pct=None)).expected_ms


def _executor(agent: DeviceAgent) -> HybridExecutor:
    if agent.hybrid is None:
        raise DemoError(f"{agent.caps.name}: no hybrid executor (its policy has no hybrid section)")
    return agent.hybrid
