"""The protect demo's thieves: one copies a device's model and disguises it, one queries a device to train a copy.

- `leak`: whoever holds a device holds what it downloaded and its device key, so it can do what the agent
  does: fetch the variant the device runs from the folder its signed plan names, with the data key wrapped
  for that device, and open it (`protect.open_artifact`).  Encryption at rest raises the bar; it does not
  stop the holder of the device and its key.
- `other_licensee`: the same thief tries another licensee's menu, to leak that copy and frame its licensee; it
  holds no grant of that licensee's data key, so it cannot open it.
- `disguise`: the thief then prunes half of each weight matrix by magnitude and quantizes to int8 with
  onnxruntime (the variant factory's own transforms), or, when the device ran an int8 variant already, prunes
  its int8 weights, so the file matches no published digest.
- `extraction`: on another device, an application runs the Jacobian-augmentation attack
  (`protection.extraction`) through `DeviceAgent.infer` under its own client id, among normal applications
  sending distinct, shuffled digit images; the device's extraction monitor decides who is flagged.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

from tinymlops.agent.device import DeviceAgent
from tinymlops.cohort import follow
from tinymlops.errors import DemoError, IntegrityError
from tinymlops.layout import blob_key, menu_key
from tinymlops.protect import device_grant_file, model_context, open_artifact
from tinymlops.protection.extraction import jacobian_augmentation, seed_set
from tinymlops.protection.prada import Monitor
from tinymlops.variants.transforms import PRUNABLE_INPUTS, Int8Dynamic, Prune, prunable_weights

TIMEOUT_S = 10.0
PRUNED = 0.5  # the thief's magnitude pruning, as the robustness target
ATTACKER = "scraper-app"
NORMAL_APPS = ("camera-app", "kiosk-app")
CLASSES = 10


def _get(gateway_url: str, key: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"{gateway_url}/v1/store/{key}", timeout=TIMEOUT_S) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise DemoError(f"gateway: {key}: HTTP {exc.code}") from exc


def leak(agent: DeviceAgent, gateway_url: str) -> tuple[bytes, Mapping[str, Any]]:
    """The plaintext model `agent`'s device runs and its menu entry, as the holder of the device gets them."""
    if agent.active is None or agent.plan is None:
        raise DemoError(f"device {agent.caps.name} runs no model to leak")
    variant = agent.active.variant
    folder = str(follow(agent.plan, agent.caps.name).menu["folder"])
    blob = _get(gateway_url, blob_key(folder, str(variant["sha256"])))
    if blob is None:
        raise DemoError(f"{folder}: the blob of {variant['id']} the device runs is gone")
    wrapped = None
    if variant.get("encryption") and agent.device_key is not None:
        grant = _get(gateway_url, folder + device_grant_file(agent.device_key))
        wrapped = None if grant is None else json.loads(grant)
    model = agent.plan["model"]
    plain = open_artifact(blob, variant, device_key=agent.device_key, wrapped=wrapped,
                          context=model_context(str(model["namespace"]), str(model["name"])))
    return plain, variant


def other_licensee(agent: DeviceAgent, gateway_url: str, folder: str) -> dict[str, Any]:
    """What the holder of `agent`'s device gets when it tries another licensee's menu at `folder` (served to
    anyone: the gateway's store GETs are anonymous): it fetches the same variant's blob and looks for a data key
    wrapped for its device key there.  Each licensee's menu is encrypted under that licensee's own data key,
    wrapped for that licensee's devices only, so there is none, and the device refuses as it would refuse to
    install it (`protect.open_artifact`): the thief cannot leak that copy to frame its licensee."""
    if agent.active is None:
        raise DemoError(f"device {agent.caps.name} runs no model")
    folder = folder.rstrip("/") + "/"
    menu_json = _get(gateway_url, menu_key(folder))
    if menu_json is None:
        raise DemoError(f"{folder}: no menu to try")
    menu = json.loads(menu_json)
    variants = {str(v["id"]): v for v in menu["variants"]}
    variant = variants.get(str(agent.active.variant_id)) or next(iter(variants.values()))
    blob = _get(gateway_url, blob_key(folder, str(variant["sha256"])))
    grant = None if agent.device_key is None else _get(gateway_url, folder + device_grant_file(agent.device_key))
    model = menu["model"]
    tried = {"device": agent.caps.name, "folder": folder, "variant": str(variant["id"]),
             "blob_fetched": blob is not None, "encrypted": bool(variant.get("encryption")),
             "grant_for_device": grant is not None}
    if blob is None:
        return {**tried, "opened": False, "refused": "the blob is not served"}
    try:
        open_artifact(blob, variant, device_key=agent.device_key, wrapped=None if grant is None else json.loads(grant),
                      context=model_context(str(model["namespace"]), str(model["name"])))
    except IntegrityError as exc:
        return {**tried, "opened": False, "refused": str(exc)}
    return {**tried, "opened": True, "refused": None}


def disguise(model: bytes) -> tuple[bytes, list[str]]:
    """The thief's copy, and its steps: a float model has half of each weight matrix pruned by magnitude and is
    quantized to int8 by onnxruntime (the factory's own transforms); a model the device already ran in int8 (a
    static variant: onnxruntime quantized it at the factory) has half of each int8 weight matrix pruned."""
    proto = onnx.load_model_from_string(model)
    input_name = proto.graph.input[0].name
    if prunable_weights(proto):
        pruned = Prune(PRUNED).apply(model, None, input_name)
        quantized = Int8Dynamic().resolve(pruned).apply(pruned, None, input_name)
        return quantized, [f"magnitude pruning of {PRUNED:.0%} of each weight matrix",
                           "int8 dynamic quantization (onnxruntime.quantization)"]
    pruned_names = _prune_int8(proto)
    if not pruned_names:
        raise DemoError("the leaked model has neither float nor int8 weight matrices to prune")
    return proto.SerializeToString(), ["kept the int8 quantization (onnxruntime, static) the device ran",
                                       f"magnitude pruning of {PRUNED:.0%} of each int8 weight matrix "
                                       f"({len(pruned_names)} tensors)"]


def _prune_int8(proto: onnx.ModelProto) -> list[str]:
    """Zero (to its zero point) the `PRUNED` share of smallest-magnitude values of each int8 weight matrix that a
    DequantizeLinear reads; the names of the tensors pruned."""
    initializers = {init.name: init for init in proto.graph.initializer}
    # Outputs read as the weights of a MatMul/Gemm/Conv (not as a bias or an activation).
    weight_inputs = {node.input[i] for node in proto.graph.node for i in PRUNABLE_INPUTS.get(node.op_type, ())
                     if i < len(node.input)}
    pruned: list[str] = []
    for node in proto.graph.node:
        weights = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if (weights is None or len(weights.dims) < 2 or weights.name in pruned
                or node.output[0] not in weight_inputs):
            continue
        values = numpy_helper.to_array(weights).copy()
        zero_init = initializers.get(node.input[2]) if len(node.input) > 2 else None
        zero = numpy_helper.to_array(zero_init) if zero_init is not None else np.zeros((), values.dtype)
        centred = np.abs(values.astype(np.int32) - zero.astype(np.int32)).reshape(-1)
        flat = values.reshape(-1)
        cut = int(PRUNED * flat.size)
        if zero.ndim == 1:  # per-channel zero points, along the node's axis (DequantizeLinear's default: 1)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            zero = zero.reshape([-1 if d == axis % values.ndim else 1 for d in range(values.ndim)])
        zeros = np.broadcast_to(zero, values.shape).reshape(-1)
        order = np.argsort(centred, kind="stable")[:cut]
        flat[order] = zeros[order]
        weights.CopyFrom(numpy_helper.from_array(values, weights.name))
        pruned.append(weights.name)
    return pruned


def extraction(agent: DeviceAgent, *, seeds_x: NDArray[np.float32], seeds_y: NDArray[np.int64],
               normal: NDArray[np.float32], normal_per_app: int, max_queries: int = 400,
               seed: int = 0) -> dict[str, Any]:
    """Run the attacker and the normal applications on `agent` (whose monitor starts afresh); who was flagged.

    The normal applications send `normal_per_app` distinct images each, in their own shuffled order, one query
    beside each of the attacker's; the attack stops when the device flags it (or at `max_queries`)."""
    if agent.active is None:
        raise DemoError(f"device {agent.caps.name} runs no model to query")
    agent.extraction = Monitor()
    rng = np.random.default_rng(seed)
    orders = {app: iter(normal[rng.permutation(len(normal))[:normal_per_app]]) for app in NORMAL_APPS}
    asked = {app: 0 for app in NORMAL_APPS}
    attacker_queries = 0

    def normal_query() -> None:
        for app, images in orders.items():
            image = next(images, None)
            if image is not None and agent.infer(np.asarray(image, np.float32), client=app) is not None:
                asked[app] += 1

    def ask(batch: NDArray[np.float32]) -> NDArray[np.int64] | None:
        nonlocal attacker_queries
        labels = []
        for query in batch:
            out = agent.infer(np.asarray(query, np.float32), client=ATTACKER)
            if out is None:
                raise DemoError(f"device {agent.caps.name} stopped serving during the attack")
            attacker_queries += 1
            labels.append(int(np.argmax(out)))
            normal_query()
            if _alarmed(agent, ATTACKER):
                return None
        return np.asarray(labels, np.int64)

    jacobian_augmentation(ask, seed_set(seeds_x, seeds_y, CLASSES, rng), classes=CLASSES, max_queries=max_queries)
    for _ in range(normal_per_app):  # the normal applications go on after the attack ends
        normal_query()
    # What the attacker gets back after the alarm: the fleet's output policy for alarmed clients.
    after = agent.infer(np.asarray(seeds_x[0], np.float32), client=ATTACKER)
    return _summary(agent, attacker_queries, asked, after)


def _alarmed(agent: DeviceAgent, client: str) -> bool:
    return agent.extraction is not None and agent.extraction.alarmed(client)


def _summary(agent: DeviceAgent, asked: int, normal: Mapping[str, int], after: NDArray[np.float32] | None,
             ) -> dict[str, Any]:
    monitor = agent.extraction
    assert monitor is not None
    alarm = monitor.alarms.get(ATTACKER)
    after_flat = None if after is None else np.asarray(after, np.float32).reshape(-1)
    report = agent.extraction_report()  # what its next signed report says (`agent status` lists the same)
    return {
        "device": agent.caps.name,
        "attacker": {
            "client": ATTACKER, "attack": "jacobian-augmentation", "queries": asked,
            "flagged": alarm is not None, "queries_to_flag": asked if alarm else None,
            "w": round(alarm.w, 4) if alarm else None,
            # One-hot once flagged, under the fleet's output policy `top1` for alarmed clients.
            "output_after_alarm": None if after_flat is None else [round(float(v), 4) for v in after_flat],
        },
        "normal_clients": [{"client": app, "queries": count, "flagged": monitor.alarmed(app)}
                           for app, count in normal.items()],
        "false_alarms": sum(1 for app in normal if monitor.alarmed(app)),
        "device_report": None if report is None else report.to_json(),
    }
