"""Which variants a device can run at all: the hard filters (pure).

Accepted, a runtime the device has, its architecture, the CPU features a build for one CPU
needs (`tinymlops.cpufeatures`), enough RAM and storage (for a microcontroller variant: the
flash and RAM its firmware measured, against the device's).
The choice among what passes is `tinymlops.selection.choice.choose`, which
applies these filters first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tinymlops.cpufeatures import NFD_CPUID_PREFIX, missing_features
from tinymlops.devices import DeviceCapabilities

Variant = Mapping[str, Any]

RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "tvm-lib": "tvm", "c-source": "c"}


def rejection_reason(variant: Variant, device: DeviceCapabilities) -> str | None:
    """Why `device` cannot run `variant`, or None when it can."""
    if not variant.get("accepted", False):
        return f"not accepted: {variant.get('reason', 'no reason given')}"
    runtime = RUNTIME_OF_FORMAT.get(str(variant.get("format")), str(variant.get("format")))
    if runtime not in device.runtimes:
        return f"needs runtime {runtime}"
    req: Mapping[str, Any] = variant.get("requirements", {})
    arches: Sequence[str] = req.get("arch", ["any"])
    if "any" not in arches and device.arch not in arches:
        return f"built for {', '.join(arches)}, device is {device.arch}"
    missing = missing_features(req.get("cpu_features", ()), device.cpu_features)
    if missing:  # a build for another CPU (a tuned TVM variant): on this one it would die of SIGILL
        stated = "states none" if device.cpu_features is None else "lacks them"
        return (f"needs CPU features {', '.join(missing)}; the device {stated} "
                f"({NFD_CPUID_PREFIX}<NAME> labels)")
    if "flash_bytes" in req or "ram_bytes" in req:  # a microcontroller variant: measured on its board
        return firmware_fit(req, device)
    if device.ram_mb < int(req.get("min_ram_mb", 0)):
        return f"needs {req['min_ram_mb']} MB RAM, device has {device.ram_mb}"
    size_kb = -(-int(variant.get("size_bytes", 0)) // 1024)
    if size_kb > device.model_storage_kb:
        return f"{size_kb} KB does not fit the device's {device.model_storage_kb} KB model storage"
    return None


def firmware_fit(req: Mapping[str, Any], device: DeviceCapabilities) -> str | None:
    """Why a firmware variant does not fit `device`'s flash (model storage) and RAM, naming both numbers."""
    flash, ram = int(req.get("flash_bytes", 0)), int(req.get("ram_bytes", 0))
    flash_room, ram_room = device.model_storage_kb * 1024, device.ram_bytes
    if flash <= flash_room and ram <= ram_room:
        return None
    return (f"firmware needs {flash} bytes of flash and {ram} bytes of RAM, device has {flash_room} and "
            f"{ram_room}")
