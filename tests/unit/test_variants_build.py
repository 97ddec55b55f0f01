"""The variant factory on the digits model: int8 shrinks within budget, rejection, caching, golden outputs."""

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from tinymlops.errors import InvalidDataError, SpecError
from tinymlops.variants import (
    Dataset,
    SourceModel,
    Transform,
    build_variant,
    load_dataset,
    parse_precision,
    spec_for,
    variant_matrix,
)
from tinymlops.variants import transforms as transforms_module
from tinymlops.variants.transforms import Int8Static


@pytest.fixture(scope="module")
def fp32(base: SourceModel, dataset: Dataset) -> dict[str, Any]:
    return build_variant(base, dataset, "fp32", accuracy_budget=0.01).entry


@pytest.fixture(scope="module")
def int8(base: SourceModel, dataset: Dataset) -> Any:
    return build_variant(base, dataset, "int8", accuracy_budget=0.01)


def test_fp32_is_the_base_itself(fp32: dict[str, Any], base: SourceModel) -> None:
    assert fp32["sha256"] == base.sha256 and fp32["size_bytes"] == len(base.data)
    assert fp32["metrics"]["agreement"] == 1.0 and fp32["metrics"]["max_abs_diff"] == 0.0
    assert fp32["lineage"] == {"parent": base.sha256, "transforms": [], "tools": fp32["lineage"]["tools"]}
    assert fp32["accepted"] is True


def test_int8_is_at_most_035x_and_within_one_point(int8: Any, fp32: dict[str, Any]) -> None:
    entry = int8.entry
    assert entry["id"] == "int8-static" and entry["precision"] == "int8"
    assert entry["size_bytes"] <= 0.35 * fp32["size_bytes"]
    assert fp32["metrics"]["accuracy"] - entry["metrics"]["accuracy"] <= 0.01
    assert entry["accepted"] is True and "within budget" in entry["reason"]
    assert entry["metrics"]["agreement"] >= 0.98
    assert entry["metrics"]["memory_bytes"] < fp32["metrics"]["memory_bytes"]


def test_int8_records_lineage_requirements_and_metrics(int8: Any, base: SourceModel) -> None:
    entry = int8.entry
    (step,) = entry["lineage"]["transforms"]
    assert step["name"] == "quantize_static" and step["params"]["format"] == "QDQ"
    assert step["params"]["per_channel"] is False  # resolved from "auto": the MLP has no Conv
    assert entry["lineage"]["parent"] == base.sha256
    assert set(entry["lineage"]["tools"]) >= {"onnx", "onnxruntime"}
    requirements = entry["requirements"]
    assert requirements["arch"] == ["any"] and requirements["runtime"] == "onnxruntime"
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= set(requirements["operators"])
    assert requirements["min_ram_mb"] >= 1
    metrics = entry["metrics"]
    assert metrics["threads"] == 1 and 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p95"]
    assert metrics["eval_data"] == "labelled" and metrics["eval_samples"] == 360


def test_health_check_reproduces_with_onnxruntime(int8: Any) -> None:
    check = int8.entry["health_check"]
    session = ort.InferenceSession(int8.blob, providers=["CPUExecutionProvider"])
    inputs = np.asarray(check["inputs"], dtype=np.float32)
    outputs = session.run([check["output_name"]], {check["input_name"]: inputs})[0]
    np.testing.assert_allclose(outputs, np.asarray(check["outputs"]), atol=check["atol"])


class ZeroWeights(Transform):
    """A deliberately destructive transform: every weight becomes zero."""

    variant_id = "int8-static"
    precision = "int8"
    name = "zero_weights"

    def apply(self, model: bytes, calibration: NDArray[np.float32] | None, input_name: str) -> bytes:
        proto = onnx.load_model_from_string(model)
        for init in proto.graph.initializer:
            array = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(array), init.name))
        return proto.SerializeToString()


def test_variant_over_budget_is_rejected_with_a_reason(
    base: SourceModel, dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(transforms_module.TRANSFORMS, "int8", ZeroWeights)
    entry = build_variant(base, dataset, "int8", accuracy_budget=0.01).entry
    assert entry["accepted"] is False
    assert "accuracy drop" in entry["reason"] and "exceeds budget 1.00" in entry["reason"]


def test_cache_reuses_the_blob(
    base: SourceModel, dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_variant(base, dataset, "int8", accuracy_budget=0.01, cache_dir=tmp_path)
    assert not first.cached
    assert len(list((tmp_path / base.sha256).glob("*.onnx"))) == 1

    def refuse(*_: Any) -> bytes:
        raise AssertionError("quantized again despite the cache")

    monkeypatch.setattr(Int8Static, "apply", refuse)
    second = build_variant(base, dataset, "int8", accuracy_budget=0.02, cache_dir=tmp_path)
    assert second.cached and second.blob == first.blob
    assert second.entry["sha256"] == first.entry["sha256"]


def test_quantization_is_deterministic(base: SourceModel, dataset: Dataset, int8: Any) -> None:
    assert build_variant(base, dataset, "int8", accuracy_budget=0.01).blob == int8.blob


def test_without_data_agreement_on_synthetic_inputs(base: SourceModel) -> None:
    entry = build_variant(base, load_dataset(None, base), "int8", accuracy_budget=1.0,
                          synthetic_calibration=True).entry
    assert "accuracy" not in entry["metrics"] and entry["metrics"]["eval_data"] == "synthetic"
    assert "agreement with the base on synthetic inputs (not accuracy)" in entry["reason"]


def test_without_data_a_calibrated_variant_is_refused_unless_asked_for(base: SourceModel) -> None:
    synthetic = load_dataset(None, base)
    with pytest.raises(InvalidDataError, match="int8-static: calibrated on DATA.npz, and no data was given"):
        build_variant(base, synthetic, "int8", accuracy_budget=1.0)
    with pytest.raises(InvalidDataError, match="pruned-50-int8-static"):
        build_variant(base, synthetic, "pruned-50-int8-static", accuracy_budget=1.0)
    # Variants that need no calibration are built on synthetic inputs as before.
    assert build_variant(base, synthetic, "int8-dynamic", accuracy_budget=1.0).entry["metrics"]["eval_data"] == \
        "synthetic"


def test_precision_names_round_trip() -> None:
    assert variant_matrix(["fp32", "int8-static"]) == variant_matrix(["fp32", "int8"]) == ["fp32", "int8-static"]
    assert [parse_precision(p) for p in ("int8", "int8-static", "INT8", "fp16", "int8-dynamic")] == \
        ["int8", "int8", "int8", "fp16", "int8-dynamic"]
    with pytest.raises(SpecError, match=r"spec.variants.precisions: \['int8', 'int8'\] lists a value twice"):
        variant_matrix(["int8", "int8-static"])
    assert spec_for("pruned-50-int8").id == "pruned-50-int8-static"
    assert variant_matrix(["fp32"], targets=["x86-64"]) == variant_matrix(["fp32"], targets=["x86_64"])


def test_the_matrix_names_the_inputs_as_its_caller_calls_them() -> None:
    flags = {"precisions": "--precisions", "sparsities": "--sparsities", "targets": "--targets"}
    cases = [((["fp8"], [], []), "--precisions"), ((["fp32"], [0.333], []), "--sparsities"),
             ((["fp32"], [], ["riscv"]), "--targets")]
    for (precisions, sparsities, targets), flag in cases:
        with pytest.raises(SpecError) as caught:
            variant_matrix(precisions, sparsities, targets, fields=flags)
        assert str(caught.value).startswith(f"{flag}: ") and "spec." not in str(caught.value)


def test_the_matrix_is_checked_naming_the_field() -> None:
    assert variant_matrix(["fp32", "int8"]) == ["fp32", "int8-static"]
    with pytest.raises(SpecError, match="precisions: 'fp8' has no transform"):
        variant_matrix(["fp8"])
    with pytest.raises(SpecError, match="precisions: .* twice"):
        variant_matrix(["int8", "int8"])
    with pytest.raises(SpecError, match="at least one"):
        variant_matrix([])
    with pytest.raises(SpecError, match="sparsities: 0.333"):
        variant_matrix(["fp32"], sparsities=[0.333])
    with pytest.raises(SpecError, match="targets: 'riscv'"):
        variant_matrix(["fp32"], targets=["riscv"])
