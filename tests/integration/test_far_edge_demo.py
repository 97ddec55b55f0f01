"""`tinymlops demo --scenario far-edge`, small: an edge node flashes emulated Cortex-M4 boards that fit.

Needs the firmware toolchain and qemu (gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.quiet import Quiet
from tinymlops.stack.demo import DemoOptions, run_demo
from tinymlops.stack.faredge import MCUS, SAMPLES

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("arm-none-eabi-gcc", "qemu-system-arm")),
                       reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm"),
]


def test_the_edge_node_flashes_the_boards_that_fit_and_refuses_the_rest(
        tmp_path: Path, prometheus_bin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    monkeypatch.setenv("TINYMLOPS_FIRMWARE_CACHE", str(tmp_path / "firmware"))
    report = run_demo(DemoOptions(root=tmp_path / "demo", devices=5, scenario="far-edge", timeout_s=300.0), Quiet())
    far_edge = report["far_edge"]
    devices = {d["device"]: d for d in far_edge["devices"]}
    assert set(devices) == {m.name for m in MCUS}
    for mcu in MCUS:
        device = devices[mcu.name]
        fits = device["flash_bytes"] is not None and device["flash_bytes"] <= mcu.model_storage_kb * 1024
        if device["variant"] is None:  # refused, naming both of its numbers and the device's
            assert any(str(mcu.model_storage_kb * 1024) in r and "bytes of RAM" in r for r in device["refusals"])
            continue
        assert fits and device["ram_bytes"] <= mcu.ram_bytes
        assert device["inferences"] == SAMPLES and device["instructions_per_inference"] > 0 and not device["errors"]
    assert "nucleo-g431rb-0" in devices and devices["nucleo-g431rb-0"]["variant"] is None  # 128 KB of flash
    (corrupted, outcome), = far_edge["corrupted_flash"].items()
    assert "refused image" in outcome and devices[corrupted]["variant"] == "tvm-cortex-m4"
