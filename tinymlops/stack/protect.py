"""`tinymlops demo --scenario protect`: per-licensee watermarks name a leaker; a device flags a model thief.

1. The owner keeps a watermark key in a Secret; the EdgeModel lists two licensees (spec.watermark), so the
   operator's pipeline builds the model's own menu and one watermarked menu per licensee, each variant
   matrix built from that licensee's watermarked copy.
2. Each licensee's devices form a DeviceFleet naming it (spec.licensee): its plan points at its licensee's
   menu.  A third fleet names a licensee the model does not list and is refused with a condition.
3. Leak: a device of the first licensee is in a thief's hands; the thief takes the model it runs (and the
   device key, `leak.leak`), prunes and quantizes it (`leak.disguise`), and the owner's `watermark verify`
   (the function the CLI runs) must name that licensee, while the never-watermarked source model is "none".
   The same thief tries the second licensee's copy, to leak that one and frame its licensee, and is refused:
   each licensee's menu is encrypted under its own data key, wrapped for its own devices' group keys only
   (`licensee_recipients`; with --no-encrypt it is not, and the report says the copy was opened).
4. Extraction: on a device of the second licensee, an application runs a Jacobian-augmentation attack beside
   two normal applications; the device must flag the attacker only, report it in its signed report (the
   fleet's `tinymlops_fleet_extraction_alarms` metric counts it), and answer it with labels only
   (the fleet's output policy `top1` for alarmed clients).
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families

from tinymlops.envelope import device_public_pem, generate_device_key
from tinymlops.errors import DemoError
from tinymlops.fleet import DEVICE_CLASSES, FleetSimulator, make_fleet
from tinymlops.fleet.identities import FleetIdentities
from tinymlops.fleet.kubeedge import device_manifest, device_models
from tinymlops.layout import plan_key, plan_prefix, source_prefix
from tinymlops.model.digits import prepare_digits
from tinymlops.signing import load_public_key
from tinymlops.stack import leak
from tinymlops.stack.demo import (
    CR_API,
    DemoOptions,
    DemoProgress,
    Timings,
    poll_interval,
    snake_case,
    twin_sink,
    wait_for_convergence,
    wait_for_variants,
)
from tinymlops.stack.kube import Kube, load_manifests
from tinymlops.stack.local import LocalStack
from tinymlops.stack.threads import LoopThread
from tinymlops.stack.waits import condition, wait_until
from tinymlops.stack.writes import emulator_writes, operator_writes
from tinymlops.store import DirectoryStore, sha256_bytes

LICENSEES = ("acme", "globex")  # the first one's device leaks its model; the second one's device is queried
UNLISTED = "initech"  # a licensee no EdgeModel lists: its fleet is refused
LICENSEE_LABEL = "demo.tinymlops.io/licensee"  # which licensee a simulated device belongs to
KEY_SECRET, KEY_FIELD = "digits-watermark-key", "watermark-key"
# Alarmed clients get labels only; the others full scores (tinymlops.protection.policy).
PROTECTION = {"outputPolicy": {"mode": "top1", "applyTo": "alarmed"}}
NORMAL_QUERIES_PER_APP = 300
T = TypeVar("T")


def watermarked(model: Mapping[str, Any]) -> dict[str, Any]:
    """The EdgeModel with one watermarked menu per licensee, its key in the Secret KEY_SECRET."""
    watermark = {"keySecretRef": {"name": KEY_SECRET, "key": KEY_FIELD}, "licensees": list(LICENSEES)}
    return {**model, "spec": {**model["spec"], "watermark": watermark}}


def licensee_fleet(fleet: Mapping[str, Any], licensee: str) -> dict[str, Any]:
    """The example fleet narrowed to `licensee`'s devices, following that licensee's menu."""
    spec = dict(fleet["spec"])
    selector = dict(spec["selector"])
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}), LICENSEE_LABEL: licensee}
    policy = {**(spec.get("policy") or {}), "protection": PROTECTION}
    metadata = {**fleet["metadata"], "name": f"{fleet['metadata']['name']}-{licensee}"}
    return {**fleet, "metadata": metadata, "spec": {**spec, "selector": selector, "licensee": licensee,
                                                     "policy": policy}}


def licensee_recipients(model: Mapping[str, Any],
                        group_keys: Mapping[str, Mapping[str, X25519PrivateKey]]) -> dict[str, Any]:
    """The EdgeModel encrypted for each licensee's device-group keys, each recipient naming its licensee, so a
    licensee's menu is wrapped for its own devices only (unchanged without keys).  No recipient names no
    licensee: the model's own, unwatermarked menu, which no fleet of this scenario runs, is granted to no one."""
    recipients = [{"name": f"{licensee}-{name}", "publicKey": device_public_pem(key.public_key()).decode(),
                   "licensee": licensee}
                  for licensee, keys in sorted(group_keys.items()) for name, key in sorted(keys.items())]
    if not recipients:
        return dict(model)
    return {**model, "spec": {**model["spec"], "encryption": {"recipients": recipients}}}


def run_protect(options: DemoOptions, progress: DemoProgress) -> dict[str, Any]:
    if options.devices < 2 * len(LICENSEES):
        raise DemoError(f"--scenario protect needs at least {2 * len(LICENSEES)} devices (two per licensee)")
    timings = Timings()
    deadline = time.monotonic() + options.timeout_s
    manifests = load_manifests(sorted(options.examples.glob("*.yaml")))
    models = [m for m in manifests if m["kind"] == "EdgeModel"]
    fleets = [m for m in manifests if m["kind"] == "DeviceFleet"]
    if not models or not fleets:
        raise DemoError(f"{options.examples}: needs at least one EdgeModel and one DeviceFleet manifest")
    model_obj = watermarked(models[0])
    namespace = model_obj["metadata"].get("namespace", "default")
    licensed = {licensee: licensee_fleet(fleets[0], licensee) for licensee in LICENSEES}
    counts = {licensee: options.devices // len(LICENSEES) + (i < options.devices % len(LICENSEES))
              for i, licensee in enumerate(LICENSEES)}
    owner_key = os.urandom(32)  # the owner's: in the Secret and here, never in the store, a menu or status

    progress.stage("model", "training the digits MLP on scikit-learn's bundled data")
    poll_s = options.device_poll_s or poll_interval(options.devices)
    with LocalStack(options.root, offline_after_s=max(30.0, 3 * poll_s)) as stack:
        digits = prepare_digits(stack.paths.store / source_prefix("digits"))
        timings.mark("prepare_model")
        assert stack.kube is not None and stack.gateway is not None
        kube, gateway_url = stack.kube, stack.gateway.url
        timings.mark("start_stack")
        _create_key_secret(kube, namespace, owner_key)
        # One device-group key per licensee and device class: a licensee's devices hold grants of its own
        # menu's data key only.
        group_keys = {licensee: {cls.name: generate_device_key() for cls in DEVICE_CLASSES} if options.encrypt
                      else {} for licensee in LICENSEES}
        kube.apply(licensee_recipients(model_obj, group_keys))
        progress.stage("variants", f"operator building the model's menu and one watermarked menu for each of "
                                   f"{', '.join(LICENSEES)}")
        identities = FleetIdentities()
        kube.apply_all(device_models(namespace))
        for licensee, fleet in licensed.items():
            kube.apply_all(_device(caps, i, namespace, gateway_url, fleet["metadata"]["name"], identities, licensee)
                           for i, caps in enumerate(make_fleet(counts[licensee], prefix=licensee)))
        edgemodel = wait_for_variants(kube, model_obj, deadline, progress)
        timings.mark("wait_for_variants")

        with np.load(digits.data_path) as data:
            x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
        simulators = {licensee: FleetSimulator(
            make_fleet(counts[licensee], prefix=licensee), identities=identities, namespace=namespace,
            fleet=fleet["metadata"]["name"], gateway_url=gateway_url,
            publisher_key=load_public_key(stack.paths.public_key.read_bytes()), samples=x, poll_interval_s=poll_s,
            group_keys=group_keys[licensee], twin_sink=twin_sink(kube, namespace), labels={LICENSEE_LABEL: licensee},
        ) for licensee, fleet in licensed.items()}
        victim = next(iter(simulators[LICENSEES[1]].devices)).name
        simulators[LICENSEES[1]].scripted.add(victim)  # its applications are the scenario's own (leak.extraction)
        loop = LoopThread("fleet").start()
        try:
            for simulator in simulators.values():
                loop.call(simulator.start())
            for fleet in [*licensed.values(), licensee_fleet(fleets[0], UNLISTED)]:
                kube.apply(fleet)
            progress.stage("rollout", f"one plan per licensee's fleet, {options.devices} devices")
            statuses = {licensee: wait_for_convergence(kube, fleet, counts[licensee], deadline, progress)
                        for licensee, fleet in licensed.items()}
            refused = _wait_for_refusal(kube, licensee_fleet(fleets[0], UNLISTED), deadline)
            timings.mark("converge")

            leaked = _leak(simulators[LICENSEES[0]], gateway_url, owner_key, stack, digits.model_path.read_bytes(),
                           other=_plan_folder(stack, namespace, licensed[LICENSEES[1]]["metadata"]["name"]))
            progress.stage("leak", f"a copy leaked from {leaked['device']} and disguised: named "
                                   f"{leaked['attribution']['licensee'] or 'none'}")
            framing = leaked["other_licensee"]
            progress.stage("leak", f"{LICENSEES[1]}'s copy tried on {framing['device']}: "
                                   + (f"refused ({framing['refused']})" if not framing["opened"] else
                                      "OPENED (its menu is not encrypted: --no-encrypt)"))
            timings.mark("leak")
            agent = simulators[LICENSEES[1]].agents[victim].agent
            normal = _all_digits()
            extraction = loop.call(_on_loop(lambda: leak.extraction(
                agent, seeds_x=x, seeds_y=y, normal=normal, normal_per_app=NORMAL_QUERIES_PER_APP)), timeout=120)
            extraction["fleet"] = licensed[LICENSEES[1]]["metadata"]["name"]
            extraction["fleet_metric"] = _wait_for_alarm_metric(gateway_url, namespace, extraction["fleet"], deadline)
            progress.stage("extraction", f"{extraction['attacker']['client']} flagged after "
                                         f"{extraction['attacker']['queries_to_flag']} queries; "
                                         f"{extraction['false_alarms']} false alarms")
            timings.mark("extraction")
        finally:
            for simulator in simulators.values():
                loop.call(simulator.stop())
            loop.stop()
        folders = {licensee: _plan_folder(stack, namespace, fleet["metadata"]["name"])
                   for licensee, fleet in licensed.items()}
        return _report(edgemodel, licensed, statuses, simulators, digits.test_accuracy, folders, refused=refused,
                       leaked=leaked, extraction=extraction, timings=timings.total(),
                       api_writes=emulator_writes(stack.emulator))


def _plan_folder(stack: LocalStack, namespace: str, fleet: str) -> str:
    """The variant directory the fleet's published plan sends its devices to."""
    plan = json.loads(DirectoryStore(stack.paths.store).get(plan_key(plan_prefix(namespace, fleet))))
    return str(plan["menu"]["folder"])


def _create_key_secret(kube: Kube, namespace: str, key: bytes) -> None:
    from kubernetes import client

    client.CoreV1Api(kube.api).create_namespaced_secret(namespace, {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": KEY_SECRET},
        "data": {KEY_FIELD: base64.b64encode(key).decode()}})


def _device(caps: Any, index: int, namespace: str, gateway_url: str, fleet: str, identities: FleetIdentities,
            licensee: str) -> dict[str, Any]:
    manifest = device_manifest(caps, index=index, namespace=namespace, gateway_url=gateway_url, fleet=fleet,
                               identity=identities.public_base64(caps.name))
    manifest["metadata"]["labels"][LICENSEE_LABEL] = licensee
    return manifest


def _wait_for_refusal(kube: Kube, fleet: Mapping[str, Any], deadline: float) -> dict[str, Any]:
    namespace, name = fleet["metadata"].get("namespace", "default"), fleet["metadata"]["name"]
    found: dict[str, Any] = {}

    def refused() -> bool:
        found.update(condition(kube.get(CR_API, "DeviceFleet", namespace, name), "Ready"))
        return found.get("reason") == "UnknownLicensee"

    wait_until(f"DeviceFleet {namespace}/{name} to be refused", refused, deadline)
    return {"fleet": name, "licensee": UNLISTED, "reason": found["reason"], "message": found.get("message", "")}


def _leak(simulator: FleetSimulator, gateway_url: str, key: bytes, stack: LocalStack, source: bytes, *,
          other: str) -> dict[str, Any]:
    """A device of the first licensee leaks the model it runs (an fp32 one when a device runs it); the owner
    attributes the disguised copy and, as a control, the source model, which was never watermarked.  The thief
    also tries the second licensee's menu (at `other`), to leak that copy instead and frame its licensee."""
    from tinymlops.watermark import WatermarkRegistry, verify

    running = sorted((o.agent for o in simulator.agents.values() if o.agent.active),
                     key=lambda agent: (agent.active is None or agent.active.variant_id != "fp32", agent.caps.name))
    if not running:
        raise DemoError(f"no device of fleet {simulator.fleet} runs a model to leak")
    device = running[0]
    model, variant = leak.leak(device, gateway_url)
    framing = {"licensee": LICENSEES[1], **leak.other_licensee(device, gateway_url, other)}
    suspect, steps = leak.disguise(model)
    registry = WatermarkRegistry(DirectoryStore(stack.paths.store))
    attribution = verify(suspect, key=key, registry=registry)
    control = verify(source, key=key, registry=registry)
    return {"device": device.caps.name, "licensee": LICENSEES[0], "fleet": simulator.fleet,
            "variant": variant["id"], "variant_sha256": variant["sha256"], "thief": steps,
            "suspect_sha256": sha256_bytes(suspect), "attribution": attribution.to_json(),
            "named_correctly": attribution.licensee == LICENSEES[0], "other_licensee": framing,
            "control": {"model": "the source model (never watermarked)", "attribution": control.to_json(),
                        "named": control.licensee}}


def _all_digits() -> NDArray[np.float32]:
    """Every digit image (1,797): the normal applications' distinct inputs."""
    from sklearn.datasets import load_digits

    images: NDArray[np.float32] = (load_digits().data / 16.0).astype(np.float32)
    return images


async def _on_loop(run: Callable[[], T]) -> T:
    """`run()` on the fleet's event loop thread, where the simulated agents serve: one thread touches them."""
    return run()


def _wait_for_alarm_metric(gateway_url: str, namespace: str, fleet: str, deadline: float) -> dict[str, int]:
    """The gateway's extraction alarm gauge for `fleet` by device class, once the device's report counts in it."""
    found: dict[str, int] = {}

    def counted() -> bool:
        with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=leak.TIMEOUT_S) as response:
            text = response.read().decode()
        found.clear()
        for family in text_string_to_metric_families(text):
            if family.name != "tinymlops_fleet_extraction_alarms":
                continue
            for sample in family.samples:
                if sample.labels.get("namespace") == namespace and sample.labels.get("fleet") == fleet:
                    found[sample.labels.get("device_class", "")] = int(sample.value)
        return sum(found.values()) > 0

    wait_until(f"the gateway to count the extraction alarm of fleet {fleet}", counted, deadline)
    return {cls: n for cls, n in sorted(found.items()) if n}


def _report(edgemodel: Mapping[str, Any], licensed: Mapping[str, Mapping[str, Any]],
            statuses: Mapping[str, Mapping[str, Any]], simulators: Mapping[str, FleetSimulator],
            held_out_accuracy: float, folders: Mapping[str, str], *, refused: Mapping[str, Any],
            leaked: Mapping[str, Any], extraction: Mapping[str, Any], timings: Mapping[str, float],
            api_writes: Mapping[str, int]) -> dict[str, Any]:
    model = snake_case(edgemodel.get("status") or {})
    menus = {entry["licensee"]: entry for entry in model.get("licensees") or ()}
    by_variant: Counter[str] = Counter()
    by_class: dict[str, Counter[str]] = {}
    for simulator in simulators.values():
        for online in simulator.agents.values():
            active = online.agent.active
            by_variant[active.variant_id if active else "-"] += 1
            by_class.setdefault(online.agent.caps.device_class, Counter())[active.variant_id if active else "-"] += 1
    fleets = [snake_case(status) for status in statuses.values()]
    return {
        "model": {"held_out_accuracy": round(held_out_accuracy, 4), "base_sha256": model.get("base_sha256"),
                  "menu_version": model.get("menu_version")},
        "variants": [{key: v.get(key) for key in ("id", "precision", "target", "format", "sha256", "size_bytes",
                                                   "accuracy", "latency_ms", "accepted", "reason")}
                     for v in map(snake_case, model.get("variants") or ())],
        "fleet": {
            "devices": sum(int(f.get("devices", 0)) for f in fleets),
            "converged": sum(int(f.get("converged", 0)) for f in fleets),
            "by_variant": dict(sorted(by_variant.items())),
            "by_device_class": {cls: dict(sorted(c.items())) for cls, c in sorted(by_class.items())},
            "seconds_to_converge": max(float(f.get("seconds_to_converge") or 0.0) for f in fleets),
            "inferences": sum(s.inferences for s in simulators.values()),
            "reports_sent": sum(s.reports_sent for s in simulators.values()),
            "sessions_loaded": sum(len(s.sessions) for s in simulators.values()),
        },
        "protection": {
            "licensee_menus": [{
                "licensee": licensee, "fleet": fleet["metadata"]["name"],
                "menu_sha256": menus.get(licensee, {}).get("menuSha256"),
                "accepted_variants": menus.get(licensee, {}).get("accepted"),
                "devices": int(snake_case(statuses[licensee]).get("devices", 0)),
                "converged": int(snake_case(statuses[licensee]).get("converged", 0)),
                "plan_folder": folders[licensee],
            } for licensee, fleet in licensed.items()],
            "refused_fleet": dict(refused),
            "leak": dict(leaked),
            "extraction": dict(extraction),
        },
        "api_writes": operator_writes(api_writes),
        "api_write_requests": dict(api_writes),
        "timings": dict(timings),
    }
