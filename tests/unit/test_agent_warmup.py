"""Warm-up inferences after a switch, and the latency simulated devices report (modelled, not the host's)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper

from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.sessions import SessionCache
from tinymlops.agent.telemetry import WARMUP_INFERENCES, ReportBuffer, Telemetry
from tinymlops.devices import DeviceCapabilities
from tinymlops.fleet.latency import COLD_START_FACTOR, JITTER_SIGMA, ModelledLatency, modelled_ms
from tinymlops.fleet.profiles import DEVICE_CLASSES, make_fleet
from tinymlops.report import MAX_LATENCIES
from tinymlops.selection.energy import target_model


def tiny_variant(latency_ms: float = 2.0) -> tuple[dict[str, Any], bytes]:
    """A one-node ONNX model (Relu over 4 floats) and its menu entry, health check included."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(blob))
    variant = {"id": "tiny", "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob), "format": "onnx",
               "precision": "fp32", "target": "any", "metrics": {"latency_ms_p50": latency_ms},
               "health_check": {"atol": 1e-6, "inputs": [[-1.0, 0.0, 1.0, 2.0]], "outputs": [[0.0, 0.0, 1.0, 2.0]]}}
    return variant, blob


def agent(latency_model: Any = None) -> DeviceAgent:
    caps = DeviceCapabilities(name="dev-0", arch="x86_64", device_class="rpi4", ram_mb=4096, model_storage_kb=4096)
    return DeviceAgent(caps, Ed25519PrivateKey.generate().public_key(), SessionCache(), latency_model=latency_model)


SAMPLE = np.array([0.5, -0.5, 1.0, 0.0], dtype=np.float32)


def test_the_first_inferences_after_a_switch_are_reported_as_warm_up() -> None:
    device = agent()
    variant, blob = tiny_variant()
    device.install(variant, blob, 1, "test", revision=1)
    for _ in range(WARMUP_INFERENCES + 3):
        assert device.infer(SAMPLE) is not None
    report = device.report(namespace="ns", fleet="f")
    assert report.inferences == WARMUP_INFERENCES + 3  # every inference counts; only the latencies are apart
    assert len(report.warmup_latencies_ms) == WARMUP_INFERENCES and len(report.latencies_ms) == 3
    device.infer(SAMPLE)
    assert (len(device.telemetry.warmup_latencies_ms), len(device.telemetry.latencies_ms)) == (0, 1)
    # A new model (here the same bytes in a new install) is cold again.
    device.install(variant, blob, 2, "test", revision=2)
    device.infer(SAMPLE)
    assert (len(device.telemetry.warmup_latencies_ms), len(device.telemetry.latencies_ms)) == (1, 1)


def test_a_simulated_device_reports_the_modelled_latency_and_still_runs_the_model() -> None:
    asked: list[tuple[str, int]] = []

    def model(variant: Any, since_switch: int) -> float:
        asked.append((variant["id"], since_switch))
        return 100.0 + since_switch

    device = agent(model)
    variant, blob = tiny_variant()
    device.install(variant, blob, 1, "test")
    outputs = [device.infer(SAMPLE) for _ in range(WARMUP_INFERENCES + 2)]
    assert all(out is not None and np.allclose(out, np.maximum(SAMPLE, 0)) for out in outputs)  # real inference
    assert asked == [("tiny", k) for k in range(WARMUP_INFERENCES + 2)]
    report = device.report(namespace="ns", fleet="f")
    assert report.warmup_latencies_ms == tuple(100.0 + k for k in range(WARMUP_INFERENCES))
    assert report.latencies_ms == (100.0 + WARMUP_INFERENCES, 101.0 + WARMUP_INFERENCES)


def test_telemetry_keeps_warm_up_apart_and_bounded() -> None:
    telemetry = Telemetry()
    for k in range(MAX_LATENCIES + 10):
        telemetry.record(1.0, warmup=k % 2 == 0)
    assert telemetry.inferences == MAX_LATENCIES + 10
    assert len(telemetry.latencies_ms) == len(telemetry.warmup_latencies_ms) == (MAX_LATENCIES + 10) // 2
    outbox = ReportBuffer()
    state = {"phase": "Running", "variant": "a", "menu_version": 1, "reason": "", "inferences": 1}
    outbox.add({**state, "latencies_ms": [1.0], "warmup_latencies_ms": [9.0]})
    outbox.add({**state, "latencies_ms": [2.0], "warmup_latencies_ms": []})
    (merged,) = outbox.drain()
    assert merged["latencies_ms"] == [1.0, 2.0] and merged["warmup_latencies_ms"] == [9.0]


# --- the simulator's latency model (pure) ---------------------------------------------------------------------

def test_latency_comes_from_the_class_and_the_variant_and_cold_starts_fade() -> None:
    assert modelled_ms(2.0, 4.0, since_switch=50, log_jitter=0.0) == pytest.approx(8.0)
    assert modelled_ms(2.0, 4.0, since_switch=0, log_jitter=0.0) == pytest.approx(8.0 * COLD_START_FACTOR)
    assert modelled_ms(2.0, 4.0, since_switch=WARMUP_INFERENCES, log_jitter=0.0) < 8.0 * 1.05  # warm by then
    assert modelled_ms(2.0, 4.0, since_switch=50, log_jitter=math.log(1.5)) == pytest.approx(12.0)


def test_each_device_class_has_its_speed_and_the_jitter_is_seeded() -> None:
    variant, _ = tiny_variant(latency_ms=1.0)
    medians = {}
    for cls in DEVICE_CLASSES:
        device = ModelledLatency(cls.name, seed=f"0:{cls.name}")
        latencies = sorted(device(variant, 100) for _ in range(401))
        medians[cls.name] = latencies[200]
        spread = latencies[380] / latencies[200]  # p95 / median of a lognormal: exp(1.645 sigma)
        assert spread == pytest.approx(math.exp(1.645 * JITTER_SIGMA), rel=0.15)
    assert medians == pytest.approx({cls.name: target_model(cls.name).slowdown for cls in DEVICE_CLASSES}, rel=0.05)
    one, same, other = (ModelledLatency("rpi4", seed=seed) for seed in ("7:sim-0001", "7:sim-0001", "7:sim-0002"))
    first = [one(variant, 9) for _ in range(3)]
    assert first == [same(variant, 9) for _ in range(3)] and len(set(first)) == 3
    assert other(variant, 9) != first[0]


def test_every_simulated_class_is_slower_than_the_build_host_and_known_to_the_model() -> None:
    classes = {caps.device_class for caps in make_fleet(40)}
    assert classes == {cls.name for cls in DEVICE_CLASSES}
    assert all(target_model(cls.name).slowdown >= 1.0 for cls in DEVICE_CLASSES)
    variant, _ = tiny_variant(latency_ms=1.0)
    assert ModelledLatency("unknown-class", seed="0")(variant, 100) == pytest.approx(1.0, rel=0.8)


async def test_the_simulator_gives_each_device_its_class_latency_model() -> None:
    from tinymlops.fleet import FleetSimulator

    devices = make_fleet(10)
    simulator = FleetSimulator(devices, namespace="ns", fleet="f", gateway_url="http://127.0.0.1:9",
                               publisher_key=Ed25519PrivateKey.generate().public_key(),
                               samples=np.zeros((1, 4), dtype=np.float32), seed=3)
    await simulator.start()
    try:
        speeds = {cls.name: target_model(cls.name).slowdown for cls in DEVICE_CLASSES}
        for caps in devices:
            model = simulator.agents[caps.name].agent.latency_model
            assert isinstance(model, ModelledLatency) and model.speed == speeds[caps.device_class]
    finally:
        await simulator.stop()
