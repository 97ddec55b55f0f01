"""What a device is (architecture, class, RAM, model storage, runtimes), read from its labels (pure).

Capabilities live in labels so that fleets select on them with ordinary
label selectors, and so `kubectl get devices -L tinymlops.io/arch` shows them.
`capabilities_from_labels` reads them (the operator predicts each device's
variant from its labels), `capabilities_from_device` from a KubeEdge `Device`
object.  Which variants fit them is `tinymlops.selection.filters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.cpufeatures import feature_labels, features_from_labels
from tinymlops.errors import SpecError

LABEL_ARCH = "tinymlops.io/arch"
LABEL_CLASS = "tinymlops.io/device-class"
LABEL_RAM_MB = "tinymlops.io/ram-mb"
LABEL_MODEL_STORAGE_KB = "tinymlops.io/model-storage-kb"
LABEL_RUNTIMES = "tinymlops.io/runtimes"  # dot-separated, labels allow no commas
LABEL_RAM_KB = "tinymlops.io/ram-kb"  # a microcontroller's RAM, which whole megabytes cannot state

KNOWN_ARCHES = ("x86_64", "aarch64", "armv7l", "cortex-m4", "cortex-m7", "cortex-m33")


@dataclass(frozen=True)
class DeviceCapabilities:
    name: str
    arch: str
    device_class: str
    ram_mb: int
    model_storage_kb: int
    runtimes: tuple[str, ...] = field(default=("onnxruntime",))
    ram_kb: int | None = None  # set on microcontrollers; otherwise ram_mb says it
    # Vector extensions by Node Feature Discovery's names (AVX2, AVX512F, ASIMDDP...; `tinymlops.cpufeatures`);
    # None: not stated, so no variant that needs any (a tuned TVM build) is chosen.
    cpu_features: frozenset[str] | None = None

    @property
    def ram_bytes(self) -> int:
        return (self.ram_kb if self.ram_kb is not None else self.ram_mb * 1024) * 1024

    def labels(self) -> dict[str, str]:
        labels = {
            LABEL_ARCH: self.arch,
            LABEL_CLASS: self.device_class,
            LABEL_RAM_MB: str(self.ram_mb),
            LABEL_MODEL_STORAGE_KB: str(self.model_storage_kb),
            LABEL_RUNTIMES: ".".join(self.runtimes),
        }
        if self.ram_kb is not None:
            labels[LABEL_RAM_KB] = str(self.ram_kb)
        if self.cpu_features is not None:
            labels.update(feature_labels(self.cpu_features))
        return labels


def capabilities_from_device(obj: Mapping[str, Any]) -> DeviceCapabilities:
    """Read capabilities from a `devices.kubeedge.io` Device (or edge Node) object."""
    meta = obj.get("metadata", {})
    return capabilities_from_labels(meta.get("labels") or {}, name=meta.get("name", "?"))


def capabilities_from_labels(labels: Mapping[str, str], *, name: str) -> DeviceCapabilities:
    """Read the capabilities of device `name` from its labels; an error names the device and the label."""

    def number(label: str) -> int:
        raw = labels.get(label)
        if raw is None:
            raise SpecError(f"device {name}: label {label} is missing")
        try:
            return int(raw)
        except ValueError as exc:
            raise SpecError(f"device {name}: label {label}={raw!r} is not an integer") from exc

    arch = labels.get(LABEL_ARCH) or labels.get("kubernetes.io/arch", "")
    arch = {"amd64": "x86_64", "arm64": "aarch64", "arm": "armv7l"}.get(arch, arch)
    if arch not in KNOWN_ARCHES:
        raise SpecError(f"device {name}: label {LABEL_ARCH}={arch!r} is not one of {', '.join(KNOWN_ARCHES)}")
    runtimes = tuple(r for r in labels.get(LABEL_RUNTIMES, "onnxruntime").split(".") if r)
    return DeviceCapabilities(
        name=name,
        arch=arch,
        device_class=labels.get(LABEL_CLASS, "unknown"),
        ram_mb=number(LABEL_RAM_MB),
        model_storage_kb=number(LABEL_MODEL_STORAGE_KB),
        runtimes=runtimes,
        ram_kb=number(LABEL_RAM_KB) if LABEL_RAM_KB in labels else None,
        cpu_features=features_from_labels(labels),
    )
