"""examples/: every valid example passes the CRD schemas; every invalid one fails for the reason it states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tinymlops.devices import capabilities_from_device
from tinymlops.kube.schema import load_crds
from tinymlops.labelselector import matches

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# examples/gitops/*.yaml are Argo CD objects (Applications, the argocd-cm patch; tests/unit/test_gitops.py checks
# them); the manifests they sync, in examples/gitops/fleet/, are ours and validated here.
VALID = sorted(p for p in EXAMPLES.rglob("*.yaml")
               if "invalid" not in p.relative_to(EXAMPLES).parts and p.parent != EXAMPLES / "gitops")
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
# Ours from crds/, KubeEdge kinds from crds/kubeedge/ (the registry holds both).
REGISTRY = load_crds(ROOT / "crds")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <error text>'"
    return first.removeprefix("# expect: ").strip()


def test_there_are_examples_of_each_kind() -> None:
    kinds = {doc["kind"] for path in VALID for doc in documents(path)}
    assert kinds == {"EdgeModel", "DeviceFleet", "License", "FederatedTraining", "Device", "DeviceModel"}
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_valid_example_passes_its_crd_schema(path: Path) -> None:
    for doc in documents(path):
        assert REGISTRY.validate(doc) == [], f"{path.name}: {doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_naming_the_field(path: Path) -> None:
    expected = expectation(path)
    (doc,) = documents(path)
    errors = REGISTRY.validate(doc)
    assert any(expected in error for error in errors), f"{path.name}: expected {expected!r} in {errors}"


def test_the_demo_fleet_selects_the_sample_raspberry_pi() -> None:
    (fleet,) = documents(EXAMPLES / "devicefleet-digits.yaml")
    (model,) = documents(EXAMPLES / "edgemodel-digits.yaml")
    (device,) = documents(EXAMPLES / "kubeedge" / "device-raspberry-pi.yaml")
    (device_model,) = documents(EXAMPLES / "kubeedge" / "devicemodel-raspberry-pi.yaml")
    assert fleet["spec"]["modelRef"]["name"] == model["metadata"]["name"] == "digits"
    assert fleet["metadata"]["namespace"] == model["metadata"]["namespace"] == device["metadata"]["namespace"]
    assert device["spec"]["deviceModelRef"]["name"] == device_model["metadata"]["name"]
    assert matches(fleet["spec"]["selector"], device["metadata"]["labels"])
    capabilities = capabilities_from_device(device)
    assert (capabilities.arch, capabilities.ram_mb) == ("aarch64", 4096)


def test_the_demo_model_matches_the_documented_contract() -> None:
    (model,) = documents(EXAMPLES / "edgemodel-digits.yaml")
    assert model["spec"] == {
        "source": {"uri": "store://sources/digits/model.onnx"},
        "data": {"uri": "store://sources/digits/data.npz"},
        "variants": {"precisions": ["fp32", "int8"]},
        "accuracyBudget": 0.01,
    }
