"""Microcontrollers in a fleet: the device agent flashes an MCU through its A/B slots; reports count instructions."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.telemetry import ReportBuffer
from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import HealthCheckError, IntegrityError
from tinymlops.gateway.fleetstate import FleetState
from tinymlops.gateway.metrics import GatewayMetrics
from tinymlops.report import Report

TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm")


def mlp(seed: int) -> bytes:
    """16 -> Gemm(8) -> Relu -> Gemm(4) -> Softmax, weights drawn from `seed` (another seed: other bytes)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (16, 8)), ("b1", (8,)), ("w2", (8, 4)), ("b2", (4,)))]
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def report(**changes: Any) -> dict[str, Any]:
    base = Report(device="m4-0", namespace="default", fleet="f", device_class="mcu", arch="cortex-m4",
                  phase="Running", menu_version=1, sent_at=1.0, variant="tvm-cortex-m4", revision=1,
                  target_revision=1, inferences=2)
    return {**base.to_json(), **changes}


def test_instructions_ride_in_the_report_merge_in_the_outbox_and_count_at_the_gateway() -> None:
    assert "instructions" not in report()  # a device that counts none sends what it sent before the field
    assert Report.from_json(report(instructions=759_200)).instructions == 759_200
    with pytest.raises(Exception, match=r"report\.instructions: -1 is not an integer >= 0"):
        Report.from_json(report(instructions=-1))
    outbox = ReportBuffer()
    outbox.add(report(instructions=100))
    outbox.add(report(instructions=250, sent_at=2.0))  # same state: merged, the counts add up
    (merged,) = outbox.drain()
    assert merged["instructions"] == 350 and merged["inferences"] == 4
    state = FleetState()
    metrics = GatewayMetrics(state)
    parsed = Report.from_json(merged)
    metrics.observe_report(parsed, state.apply(parsed))
    text = metrics.exposition(None)[0].decode()
    assert 'tinymlops_device_instructions_total{device_class="mcu"' in text
    assert any(line.startswith("tinymlops_device_instructions_total") and line.endswith(" 350.0")
               for line in text.splitlines())


@needs_tools
def test_an_mcu_agent_flashes_through_its_slots_and_keeps_the_serving_image_when_a_write_is_corrupted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from tinymlops.faredge.flash import McuFlash, McuImage
    from tinymlops.store import DirectoryStore
    from tinymlops.variants import build_variants

    monkeypatch.setenv("TINYMLOPS_FIRMWARE_CACHE", str(tmp_path / "fw"))
    key = Ed25519PrivateKey.generate()
    entries, blobs = [], []
    for seed in (3, 4):
        menu = build_variants(mlp(seed), None, DirectoryStore(tmp_path / "store"), f"m{seed}", signing_key=key,
                              model_ref=("default", "m"), precisions=["fp32"], targets=["cortex-m4"],
                              synthetic_calibration=True, cache_dir=tmp_path / "c")
        entry = next(v for v in menu["variants"] if v["format"] == "c-source")
        entries.append(entry)
        blobs.append((tmp_path / "store" / f"m{seed}" / "blobs" / entry["sha256"]).read_bytes())
    caps = DeviceCapabilities("m4-0", "cortex-m4", "mcu", 0, 1024, ("c",), ram_kb=256)
    flash = McuFlash(caps.name, tmp_path / "mcu")
    agent = DeviceAgent(caps, key.public_key(), flash, watch_extraction=False)

    agent.install(entries[0], blobs[0], 1, "first")  # built, written to slot A, booted under its digest check
    assert agent.phase == "Running" and isinstance(agent.active.runner, McuImage)  # type: ignore[union-attr]
    first = agent.active.runner  # type: ignore[union-attr]
    assert first.slot == "slot-a"
    flash.serving = first.slot
    x = np.random.default_rng(2).standard_normal((1, 16)).astype(np.float32)
    expected = ort.InferenceSession(mlp(3)).run(None, {"input": x})[0][0]
    out = agent.infer(x[0])
    assert out is not None and np.abs(out - expected).max() <= 1e-5 and first.last_instructions[-1] > 0

    # The next image goes to slot B; this write is corrupted, so its first boot refuses it before it runs.
    flash.corrupt_next = True
    with pytest.raises(HealthCheckError, match="refused image"):
        agent.install(entries[1], blobs[1], 2, "second")
    assert agent.phase == "Failed" and agent.active is not None and agent.active.runner is first
    assert flash.slots["slot-b"].variant_id == entries[1]["id"] and first.elf.parent.name == "slot-a"
    out = agent.infer(x[0])  # slot A was never touched
    assert out is not None and np.abs(out - expected).max() <= 1e-5

    # A bundle altered at the edge node fails the menu's digest before anything is built or flashed.
    loads = flash.loads
    with pytest.raises(IntegrityError):
        agent.install(entries[1], blobs[1][:-1] + b"!", 3, "third")
    assert flash.loads == loads and agent.active.runner is first

    # A clean write of the second variant lands in slot B and serves from there.
    agent.install(entries[1], blobs[1], 4, "fourth")
    second = agent.active.runner
    assert isinstance(second, McuImage) and second.slot == "slot-b"
    out = agent.infer(x[0])
    assert out is not None and np.abs(out - ort.InferenceSession(mlp(4)).run(None, {"input": x})[0][0]).max() <= 1e-5


def test_the_demo_adds_boards_its_fleet_selects_and_a_target_its_model_builds() -> None:
    from tinymlops.bundled import examples_dir
    from tinymlops.devices import capabilities_from_device
    from tinymlops.fleet.identities import FleetIdentities
    from tinymlops.labelselector import matches
    from tinymlops.signing import IDENTITY_ANNOTATION
    from tinymlops.stack import mcufleet
    from tinymlops.stack.kube import load_manifests

    examples = load_manifests(sorted(examples_dir().glob("*.yaml")))
    model = next(m for m in examples if m["kind"] == "EdgeModel")
    fleet = next(m for m in examples if m["kind"] == "DeviceFleet")
    assert mcufleet.with_target(model)["spec"]["variants"]["targets"] == ["cortex-m4"]
    assert mcufleet.with_target(mcufleet.with_target(model)) == mcufleet.with_target(model)  # added once
    assert model["spec"]["variants"].get("targets") is None  # the caller's manifest is not changed
    identities = FleetIdentities()
    boards = mcufleet.boards(2)
    objects = mcufleet.manifests(boards, namespace="default", gateway_url="http://gw", fleet="digits-fleet",
                                 identities=identities)
    assert objects[0]["kind"] == "DeviceModel" and objects[0]["metadata"]["name"] == "mcu-inference"
    selector = mcufleet.with_arch(fleet)["spec"]["selector"]
    for caps, device in zip(boards, objects[1:], strict=True):
        labels = device["metadata"]["labels"]
        assert device["spec"]["nodeName"] == mcufleet.EDGE_NODE
        assert device["metadata"]["annotations"][IDENTITY_ANNOTATION] == identities.public_base64(caps.name)
        assert capabilities_from_device(device) == caps  # what the operator reads back is the board
        assert matches(selector, labels) and not matches(fleet["spec"]["selector"], labels)
    with pytest.raises(ValueError, match="far-edge devices: 4 is not in 0..3"):
        mcufleet.boards(4)


def test_without_the_toolchain_the_demo_names_why_and_adds_no_board(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    from tinymlops.stack import demo
    from tinymlops.variants.mcu import firmware

    monkeypatch.setattr(firmware.shutil, "which", lambda tool: None if tool == "qemu-system-arm" else "/bin/true")
    mcus, skipped = demo._far_edge_devices(demo.DemoOptions(root=tmp_path, far_edge_devices=2))
    assert mcus == [] and skipped is not None
    assert skipped.startswith("far-edge devices skipped: ") and "qemu-system-arm" in skipped
    assert demo._far_edge_devices(demo.DemoOptions(root=tmp_path, scenario="canary")) == ([], None)
    assert demo._far_edge_devices(demo.DemoOptions(root=tmp_path, far_edge_devices=0)) == ([], None)
