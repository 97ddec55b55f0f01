"""The wider matrix on the digits model: fp16, int8 dynamic, pruning, composition, not-built variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.cli import main
from tinymlops.errors import SpecError, UnsupportedOperatorError
from tinymlops.menu import validate_menu
from tinymlops.model import DigitsArtifacts
from tinymlops.store import DirectoryStore
from tinymlops.variants import (
    Dataset,
    SourceModel,
    build_variant,
    build_variants,
    spec_for,
    variant_matrix,
)
from tinymlops.variants.transforms import Prune


@pytest.fixture(scope="module")
def built(base: SourceModel, dataset: Dataset) -> dict[str, dict[str, Any]]:
    ids = ["fp32", "fp16", "int8-static", "int8-dynamic", "pruned-75", "pruned-75-int8-static"]
    return {vid: build_variant(base, dataset, vid, accuracy_budget=0.5).entry for vid in ids}


def test_matrix_order_and_composition() -> None:
    assert variant_matrix(["fp32", "int8"], sparsities=[0.5, 0.75], targets=["aarch64"]) == [
        "fp32", "int8-static", "pruned-50", "pruned-50-int8-static", "pruned-75", "pruned-75-int8-static",
        "tvm-aarch64",
    ]
    assert [step.name for step in spec_for("pruned-75-int8-static").steps] == ["magnitude_prune", "quantize_static"]
    with pytest.raises(SpecError, match="'fp8'"):
        spec_for("fp8")
    with pytest.raises(SpecError, match="not a precision a pruned model"):
        spec_for("pruned-50-bogus")


def test_fp16_halves_the_weights_and_keeps_float32_io(built: dict[str, dict[str, Any]], base: SourceModel) -> None:
    fp16, fp32 = built["fp16"], built["fp32"]
    assert fp16["precision"] == "fp16" and fp16["size_bytes"] < 0.65 * fp32["size_bytes"]
    assert fp16["metrics"]["agreement"] >= 0.99
    assert fp16["health_check"]["input_name"] == base.input_name  # callers feed float32 as before


def test_int8_dynamic_needs_no_calibration_and_shrinks(built: dict[str, dict[str, Any]]) -> None:
    dynamic, fp32 = built["int8-dynamic"], built["fp32"]
    assert dynamic["size_bytes"] <= 0.35 * fp32["size_bytes"]
    assert fp32["metrics"]["accuracy"] - dynamic["metrics"]["accuracy"] <= 0.01
    assert "DynamicQuantizeLinear" in dynamic["metrics"]["op_histogram"]


def test_pruning_reaches_the_asked_sparsity_and_zeros_compress(built: dict[str, dict[str, Any]]) -> None:
    pruned, fp32 = built["pruned-75"], built["fp32"]
    # Biases are not pruned, so the share over all parameters is a little under 0.75.
    assert 0.74 <= pruned["metrics"]["sparsity"] <= 0.75
    assert pruned["size_bytes"] == fp32["size_bytes"]  # dense storage: same file size...
    assert pruned["metrics"]["compressed_bytes"] < 0.4 * fp32["metrics"]["compressed_bytes"]  # ...but it compresses
    assert pruned["lineage"]["transforms"] == [
        {"name": "magnitude_prune", "params": {"sparsity": 0.75, "scope": "per-tensor", "criterion": "magnitude"}}
    ]


def test_pruned_then_int8_is_the_smallest_on_the_wire(built: dict[str, dict[str, Any]]) -> None:
    combined = built["pruned-75-int8-static"]
    assert [t["name"] for t in combined["lineage"]["transforms"]] == ["magnitude_prune", "quantize_static"]
    assert combined["precision"] == "int8"
    smallest = min(built.values(), key=lambda e: e["metrics"]["compressed_bytes"])
    assert smallest["id"] == "pruned-75-int8-static"


def test_every_variant_reports_graph_statistics(built: dict[str, dict[str, Any]]) -> None:
    for entry in built.values():
        metrics = entry["metrics"]
        assert metrics["params"] >= 50_826 and metrics["op_histogram"]
        assert metrics["compressed_bytes"] > 0 and metrics["memory_bytes"] > 0


def test_prune_rejects_an_impossible_sparsity() -> None:
    with pytest.raises(SpecError, match="strictly between 0 and 1"):
        Prune(1.0)


def test_a_variant_its_target_cannot_run_is_listed_as_not_built(
    digits: DigitsArtifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinymlops.variants import transforms

    def refuse(self: Any, model: bytes, *, variant_id: str) -> None:
        raise UnsupportedOperatorError(f"variant {variant_id}: operator MatMul is not supported here")

    monkeypatch.setattr(transforms.Fp16, "check_supported", refuse)
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(tmp_path), "m",
                          signing_key=Ed25519PrivateKey.generate(), model_ref=("ns", "m"),
                          precisions=["fp32", "fp16"])
    validate_menu(menu)
    assert [v["id"] for v in menu["variants"]] == ["fp32"]
    assert menu["not_built"] == [{"id": "fp16", "reason": "variant fp16: operator MatMul is not supported here"}]


def test_cli_build_leaves_nothing_behind_on_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    out = tmp_path / "variants"
    result = CliRunner().invoke(main, ["variants", "build", str(bad), "--out", str(out), "--precisions", "fp32",
                                       "--key", str(_key(tmp_path))])
    assert result.exit_code == 1 and str(bad) in result.output
    # Neither the output directory nor its staging directory is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "keys"]


def test_cli_build_rejects_an_unknown_target_naming_it(tmp_path: Path, digits: DigitsArtifacts) -> None:
    result = CliRunner().invoke(main, ["variants", "build", str(digits.model_path), "--out", str(tmp_path / "v"),
                                       "--targets", "riscv", "--key", str(_key(tmp_path))])
    # A usage error that names the flag, not the EdgeModel field the same check reports for the operator.
    assert result.exit_code == 2 and "--targets: 'riscv' is not one of" in result.output


def _key(tmp_path: Path) -> Path:
    from tinymlops.signing import generate_key_pair

    private, _ = generate_key_pair(tmp_path / "keys")
    return private


def test_onnx_checker_accepts_every_onnx_variant(built: dict[str, dict[str, Any]], base: SourceModel,
                                                 dataset: Dataset) -> None:
    for vid in ("fp16", "int8-dynamic", "pruned-75"):
        blob = build_variant(base, dataset, vid, accuracy_budget=1.0).blob
        onnx.checker.check_model(onnx.load_model_from_string(blob))
