"""Latency and energy of one inference on a device class, estimated from the menu (pure).

The menu carries one latency per variant, measured on the build host (x86-64, one thread).  A
Raspberry Pi Zero runs the same kernels many times slower and draws far less power while doing so,
so the host's latency is no estimate of a device's energy: each device class gets a `TargetModel`
(how much slower than the build host one of its cores runs the variant, and the power that core adds
while it does), and energy = device latency x that power x the precision's factor + the weights
read from DRAM.  The figures below are assumptions from public measurements of these boards (idle
vs one loaded core; single-thread benchmark ratios against a current x86-64 server core), not
measured here: they set the balance between compute and memory traffic per class, and a device
that meters its own power should replace them.  `device_latency_ms` scales a menu latency to a
device; the fleet simulator (`tinymlops.fleet.latency`) applies the same `slowdown`, with jitter and
cold starts, to the latencies its devices report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Variant = Mapping[str, Any]


@dataclass(frozen=True)
class TargetModel:
    slowdown: float  # latency on one core of this device / latency on the build host, same variant
    power_w: float  # power one busy core adds above idle, in W


# The build host itself (and any device the model does not know): latencies as measured, 1 W.
HOST = TargetModel(slowdown=1.0, power_w=1.0)
DEVICE_CLASS_MODELS: Mapping[str, TargetModel] = {
    # x86-64 gateway PC: a core like the build host's, drawing what a desktop core does under load.
    "industrial-pc": TargetModel(slowdown=1.0, power_w=10.0),
    # Cortex-A72 at 1.5 GHz: ~4x slower per thread; the board goes from ~2.7 W idle to ~6.4 W on 4 cores.
    "rpi4": TargetModel(slowdown=4.0, power_w=0.9),
    # Cortex-A57 at 1.43 GHz (CPU only, 10 W mode): ~5x slower; ~1.2 W per loaded core.
    "jetson-nano": TargetModel(slowdown=5.0, power_w=1.2),
    # Cortex-A53 at 1 GHz running a 32-bit OS: ~10x slower; ~0.6 W idle to ~3 W on 4 cores.
    "rpi-zero-2": TargetModel(slowdown=10.0, power_w=0.6),
    # One Cortex-A8 at 1 GHz with a weak FPU: ~20x slower; ~1.1 W idle to ~2 W loaded.
    "beaglebone": TargetModel(slowdown=20.0, power_w=0.9),
}
# Devices of a class not listed: the most conservative class of their architecture.
ARCH_MODELS: Mapping[str, TargetModel] = {
    "x86_64": DEVICE_CLASS_MODELS["industrial-pc"],
    "aarch64": DEVICE_CLASS_MODELS["jetson-nano"],
    "armv7l": DEVICE_CLASS_MODELS["beaglebone"],
    # Cortex-M4 at ~100 MHz: ~300x slower, tens of mW.
    "cortex-m4": TargetModel(slowdown=300.0, power_w=0.03),
}

# Latency already carries the speed-up of a precision; these carry the lower draw per unit of time:
# an 8-bit integer multiply-add costs ~1/20 of an fp32 one and moves a quarter of the bytes
# (Horowitz, ISSCC 2014), but static power, caches and control dominate a whole SoC, so measured
# system-level savings are far smaller; we assume 40% less for int8 and 20% less for fp16.
# Pruned variants keep their precision's draw: dense kernels do not skip zeros.
PRECISION_POWER_FACTOR = {"fp32": 1.0, "fp16": 0.8, "int8": 0.6}
DEFAULT_POWER_FACTOR = 1.0  # unknown precisions are assumed as costly as fp32
# Cross-compiled variants have no host latency: assume 1 ms per MB of artifact on the build host, about
# what the same module built for the host measures there (untuned TVM: 0.7 ms/MB on digits).
PROXY_MS_PER_MB = 1.0
# Memory traffic: a small device streams its weights from DRAM on every inference (they do not fit
# its caches), and an off-chip byte costs far more than the arithmetic on it: ~160 pJ per byte of
# LPDDR access (Horowitz, ISSCC 2014: ~1.3-2.6 nJ per 64-bit DRAM access), i.e. 0.16 mJ per MB.
# This is why int8 saves energy even where it does not save time on a desktop CPU.
DRAM_MJ_PER_MB = 0.16


def target_model(device_class: str | None = None, arch: str | None = None) -> TargetModel:
    """The model of a device class, else of its architecture, else the build host's."""
    if device_class in DEVICE_CLASS_MODELS:
        return DEVICE_CLASS_MODELS[str(device_class)]
    return ARCH_MODELS.get(str(arch), HOST)


def host_latency_ms(variant: Variant) -> float:
    """Measured p50 latency on the build host, or the size-based proxy when the variant could not run there."""
    measured = variant.get("metrics", {}).get("latency_ms_p50")
    if measured is not None:
        return float(measured)
    return float(variant.get("size_bytes", 0)) / 1e6 * PROXY_MS_PER_MB


def device_latency_ms(variant: Variant, target: TargetModel = HOST) -> float:
    """One inference's latency on `target`, scaled from the build host's."""
    return host_latency_ms(variant) * target.slowdown


def energy_mj(variant: Variant, target: TargetModel = HOST) -> float:
    """Energy per inference in mJ on `target`: its latency (ms) x its power (W) x the precision's factor,
    plus the weights read from DRAM (size x DRAM_MJ_PER_MB)."""
    factor = PRECISION_POWER_FACTOR.get(str(variant.get("precision", "")).lower(), DEFAULT_POWER_FACTOR)
    memory = float(variant.get("size_bytes", 0)) / 1e6 * DRAM_MJ_PER_MB
    return device_latency_ms(variant, target) * target.power_w * factor + memory
