"""Which variant a device runs: hard filters, then the fleet's objective (pure).

The operator calls this to predict and count assignments; each device agent
calls the very same function on the signed menu, so both always agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import NoCompatibleVariantError

Variant = Mapping[str, Any]

OBJECTIVES = ("accuracy", "latency", "size")
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
    if device.ram_mb < int(req.get("min_ram_mb", 0)):
        return f"needs {req['min_ram_mb']} MB RAM, device has {device.ram_mb}"
    size_kb = -(-int(variant.get("size_bytes", 0)) // 1024)
    if size_kb > device.model_storage_kb:
        return f"{size_kb} KB does not fit the device's {device.model_storage_kb} KB model storage"
    return None


def _rank(variant: Variant, objective: str) -> tuple[float, ...]:
    metrics: Mapping[str, Any] = variant.get("metrics", {})
    accuracy = float(metrics.get("accuracy", metrics.get("agreement", 0.0)))
    latency = float(metrics.get("latency_ms_p50", float("inf")))
    size = float(variant.get("size_bytes", float("inf")))
    if objective == "latency":
        return (latency, -accuracy, size)
    if objective == "size":
        return (size, -accuracy, latency)
    return (-accuracy, size, latency)


def choose_variant(
    variants: Iterable[Variant], device: DeviceCapabilities, objective: str = "accuracy"
) -> Variant:
    """The best variant `device` can run under `objective`; ties break on id for determinism."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    reasons: dict[str, str] = {}
    candidates = []
    for variant in variants:
        reason = rejection_reason(variant, device)
        if reason is None:
            candidates.append(variant)
        else:
            reasons[str(variant.get("id"))] = reason
    if not candidates:
        detail = "; ".join(f"{vid}: {why}" for vid, why in sorted(reasons.items())) or "menu is empty"
        raise NoCompatibleVariantError(f"device {device.name} can run no variant ({detail})")
    return min(candidates, key=lambda v: (*_rank(v, objective), str(v.get("id"))))
