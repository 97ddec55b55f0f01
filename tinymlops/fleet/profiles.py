"""Device classes of a heterogeneous fleet and a deterministic mix of them (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from tinymlops.devices import DeviceCapabilities

FLEET_LABEL = "app.kubernetes.io/part-of"
FLEET_LABEL_VALUE = "tinymlops-demo"


@dataclass(frozen=True)
class DeviceClass:
    name: str
    arch: str
    ram_mb: int
    model_storage_kb: int
    share: int  # relative frequency in the mix
    description: str
    # How much slower than the build host a class runs, and what it draws: tinymlops.selection.energy (one model
    # for the simulator's reported latency and the energy estimate).
    # Its vector extensions as Node Feature Discovery labels them (tinymlops.cpufeatures); None: not labelled.
    cpu_features: frozenset[str] | None = None


# Storage is what the device sets aside for models: the small ones cannot hold the
# fp32 digits model (~200 KB) and must run the int8 one, whatever the objective.
DEVICE_CLASSES = (
    # A gateway PC of the AVX2 generation, without AVX-512: a TVM build tuned on an AVX-512 server is not for it.
    DeviceClass("industrial-pc", "x86_64", 8192, 4_194_304, 2, "x86-64 gateway PC",
                frozenset({"AVX", "AVX2", "FMA3"})),
    DeviceClass("rpi4", "aarch64", 4096, 1_048_576, 4, "Raspberry Pi 4, 4 GiB", frozenset({"ASIMD"})),
    DeviceClass("jetson-nano", "aarch64", 4096, 2_097_152, 1, "Jetson Nano, CPU only", frozenset({"ASIMD"})),
    DeviceClass("rpi-zero-2", "armv7l", 512, 128, 2, "Raspberry Pi Zero 2 W, 128 KB model partition"),
    DeviceClass("beaglebone", "armv7l", 512, 65_536, 1, "BeagleBone Black"),
)


def make_fleet(count: int, *, prefix: str = "sim") -> list[DeviceCapabilities]:
    """`count` devices whose classes follow the shares in DEVICE_CLASSES, interleaved, same every run."""
    if count < 0:
        raise ValueError(f"device count must be >= 0, got {count}")
    cycle = [cls for cls in DEVICE_CLASSES for _ in range(cls.share)]
    width = max(4, len(str(count)))
    devices = []
    for index in range(count):
        cls = cycle[(index * 7) % len(cycle)]  # 7 is coprime with the cycle length: classes interleave
        devices.append(
            DeviceCapabilities(
                name=f"{prefix}-{cls.name}-{index:0{width}d}",
                arch=cls.arch,
                device_class=cls.name,
                ram_mb=cls.ram_mb,
                model_storage_kb=cls.model_storage_kb,
                cpu_features=cls.cpu_features,
            )
        )
    return devices
