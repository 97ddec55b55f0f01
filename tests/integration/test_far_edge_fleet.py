"""Far-edge boards in the default demo's fleet: KubeEdge Devices behind an edge node, converged in the fleet's status.

Two emulated Cortex-M4 boards follow the DeviceFleet's signed plan through their edge node, get the
`tvm-cortex-m4` variant the operator predicted for them (flash and RAM fit their labels), boot it
under the firmware's own digest check, serve, and their signed reports reach the gateway: the fleet
counts them converged, and the gateway's metrics count their inferences and instructions.
Needs the firmware toolchain, qemu (gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm) and TVM.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.quiet import Quiet
from tinymlops.stack.demo import DemoOptions, run_demo
from tinymlops.stack.mcufleet import BOARDS, TARGET

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("arm-none-eabi-gcc", "qemu-system-arm")),
                       reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm"),
]
DEVICES, BOARD_COUNT = 3, 2


def test_the_boards_follow_the_fleet_plan_and_converge_in_its_status(
        tmp_path: Path, prometheus_bin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    monkeypatch.setenv("TINYMLOPS_FIRMWARE_CACHE", str(tmp_path / "firmware"))
    report = run_demo(DemoOptions(root=tmp_path / "demo", devices=DEVICES, far_edge_devices=BOARD_COUNT,
                                  timeout_s=400.0), Quiet())
    fleet = report["fleet"]
    # The operator counted the boards among the fleet's devices and the gateway saw them Running the plan.
    assert fleet["devices"] == fleet["converged"] == DEVICES + BOARD_COUNT
    # The boards' variant is a microcontroller build for their target (TVM's fp32 or emx's int8, whichever the
    # agent's choice ranks first for their labels), and all boards of one class choose alike.
    (chosen, count), = fleet["by_device_class"]["mcu"].items()
    assert count == BOARD_COUNT and chosen in (f"tvm-{TARGET}", f"emx-int8-{TARGET}")
    variant = next(v for v in report["variants"] if v["id"] == chosen)
    assert variant["accepted"] and variant["format"] == "c-source"
    far_edge = fleet["far_edge"]
    boards = {caps.name: caps for caps in BOARDS[:BOARD_COUNT]}
    assert {d["device"] for d in far_edge["devices"]} == set(boards)
    served = 0
    for device in far_edge["devices"]:
        caps, figures = boards[device["device"]], device["menu_figures"]
        assert device["phase"] == "Running" and device["variant"] == chosen and device["revision"] == 1
        assert 0 < figures["flash_bytes"] <= caps.model_storage_kb * 1024 and 0 < figures["ram_bytes"] <= caps.ram_bytes
        assert device["slot"] == "slot-a" and not device["refused"]
        assert device["inferences"] > 0 and device["instructions_per_inference"] > 0
        served += device["inferences"]
    # Their signed reports were accepted and counted: inferences and the instructions the boards' timers counted.
    metrics = far_edge["gateway_metrics"]
    assert 0 < metrics["inferences"] <= served and metrics["instructions"] > 0
    median = sorted(d["instructions_per_inference"] for d in far_edge["devices"])[0]
    assert abs(metrics["instructions"] / metrics["inferences"] - median) <= 0.1 * median
