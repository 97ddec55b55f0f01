"""Device capabilities read from labels: what the agent, the simulator and the operator's prediction see."""

import pytest

from tinymlops.devices import (
    LABEL_ARCH,
    LABEL_MODEL_STORAGE_KB,
    LABEL_RAM_MB,
    DeviceCapabilities,
    capabilities_from_device,
    capabilities_from_labels,
)
from tinymlops.errors import SpecError

PI = DeviceCapabilities(name="pi-1", arch="aarch64", device_class="rpi4", ram_mb=4096, model_storage_kb=65_536,
                        runtimes=("onnxruntime", "tvm"))


def test_labels_round_trip_and_a_device_object_reads_the_same() -> None:
    assert capabilities_from_labels(PI.labels(), name="pi-1") == PI
    assert capabilities_from_device({"metadata": {"name": "pi-1", "labels": PI.labels()}}) == PI


def test_kubernetes_arch_names_and_defaults() -> None:
    labels = {"kubernetes.io/arch": "arm64", LABEL_RAM_MB: "512", LABEL_MODEL_STORAGE_KB: "1024"}
    caps = capabilities_from_labels(labels, name="n")
    assert (caps.arch, caps.device_class, caps.runtimes) == ("aarch64", "unknown", ("onnxruntime",))


@pytest.mark.parametrize(("change", "message"), [
    ({LABEL_RAM_MB: None}, f"device pi-1: label {LABEL_RAM_MB} is missing"),
    ({LABEL_MODEL_STORAGE_KB: "lots"}, f"device pi-1: label {LABEL_MODEL_STORAGE_KB}='lots' is not an integer"),
    ({LABEL_ARCH: "riscv64"}, f"device pi-1: label {LABEL_ARCH}='riscv64' is not one of x86_64, aarch64"),
])
def test_a_bad_label_is_a_spec_error_naming_the_device_and_the_label(
    change: dict[str, str | None], message: str
) -> None:
    labels = {k: v for k, v in {**PI.labels(), **change}.items() if v is not None}
    with pytest.raises(SpecError) as err:
        capabilities_from_labels(labels, name="pi-1")
    assert str(err.value).startswith(message)
    with pytest.raises(SpecError) as err:
        capabilities_from_device({"metadata": {"name": "pi-1", "labels": labels}})
    assert str(err.value).startswith(message)
