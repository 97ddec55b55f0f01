"""The per-device-class latency and energy model: a device's energy is its own, not the build host's."""

from __future__ import annotations

from typing import Any

import pytest

from tinymlops.devices import DeviceCapabilities
from tinymlops.fleet.profiles import DEVICE_CLASSES
from tinymlops.selection import DeviceContext, SelectionPolicy, choose
from tinymlops.selection.energy import (
    ARCH_MODELS,
    DEVICE_CLASS_MODELS,
    HOST,
    device_latency_ms,
    energy_mj,
    target_model,
)


def variant(vid: str, *, precision: str = "fp32", latency: float | None = 1.0, size: int = 400_000) -> dict[str, Any]:
    return {"id": vid, "sha256": vid * 8, "size_bytes": size, "format": "onnx", "precision": precision,
            "target": "any", "accepted": True,
            "metrics": {"accuracy": 0.97, "agreement": 1.0, "latency_ms_p50": latency},
            "requirements": {"arch": ["any"], "min_ram_mb": 1, "runtime": "onnxruntime"}}


def test_every_simulated_device_class_has_a_model_and_unknown_classes_fall_back_by_arch() -> None:
    assert {cls.name for cls in DEVICE_CLASSES} <= set(DEVICE_CLASS_MODELS)
    assert target_model("rpi4", "aarch64") == DEVICE_CLASS_MODELS["rpi4"]
    assert target_model("some-new-board", "aarch64") == ARCH_MODELS["aarch64"]
    assert target_model(None, "riscv64") == HOST and target_model() == HOST


def test_device_latency_scales_the_host_measurement_and_energy_follows_the_device() -> None:
    fp32 = variant("a", latency=0.5)
    zero = target_model("rpi-zero-2", "armv7l")
    assert device_latency_ms(fp32, HOST) == pytest.approx(0.5)
    assert device_latency_ms(fp32, zero) == pytest.approx(0.5 * zero.slowdown)
    # Compute (device latency x its power) plus the 0.4 MB of weights read from DRAM.
    assert energy_mj(fp32, zero) == pytest.approx(0.5 * zero.slowdown * zero.power_w + 0.4 * 0.16)
    assert energy_mj(fp32, HOST) == pytest.approx(0.5 + 0.4 * 0.16)


def test_energy_is_monotone_in_latency_and_cheaper_for_lower_precisions() -> None:
    rpi4 = target_model("rpi4")
    assert energy_mj(variant("a", latency=1.0), rpi4) < energy_mj(variant("a", latency=1.5), rpi4)
    int8, fp16, fp32 = (variant("a", precision=p) for p in ("int8", "fp16", "fp32"))
    assert energy_mj(int8, rpi4) < energy_mj(fp16, rpi4) < energy_mj(fp32, rpi4)
    # No host latency (cross-compiled): 1 ms per MB of artifact on the host, scaled to the device.
    assert energy_mj(variant("tvm", latency=None, size=300_000), HOST) == pytest.approx(0.3 + 0.3 * 0.16)


def test_the_energy_objective_picks_per_device_class() -> None:
    # Fast but big (DRAM-bound) against slow but small (compute-bound): on the build host's core the DRAM
    # traffic decides, on a slow board the compute does; one latency for every class could not tell.
    big_fast = variant("big-fast", latency=0.01, size=1_000_000)
    small_slow = variant("small-slow", latency=0.03, size=100_000)
    menu = [big_fast, small_slow]

    def pick(device_class: str, arch: str) -> str:
        caps = DeviceCapabilities(name="d", arch=arch, device_class=device_class, ram_mb=4096,
                                  model_storage_kb=1 << 20)
        return str(choose(menu, caps, SelectionPolicy(objective="energy"), DeviceContext()).variant["id"])

    assert energy_mj(small_slow, HOST) < energy_mj(big_fast, HOST)
    assert pick("beaglebone", "armv7l") == "big-fast"
    assert pick("rpi4", "aarch64") == "small-slow"
