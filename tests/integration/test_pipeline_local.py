"""The variants pipeline end to end through kfp.local (SubprocessRunner), on the digits model."""

import builtins
from pathlib import Path
from typing import Any

import pytest

from tinymlops.errors import InvalidModelError
from tinymlops.menu import verify_variant_dir
from tinymlops.model import DigitsArtifacts, prepare_digits
from tinymlops.signing import generate_key_pair, load_public_key
from tinymlops_pipelines import runner

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    return prepare_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def setup(tmp_path: Path, digits: DigitsArtifacts) -> dict[str, Any]:
    store = tmp_path / "store"
    (store / "sources").mkdir(parents=True)
    (store / "sources" / "digits.onnx").write_bytes(digits.model_path.read_bytes())
    (store / "sources" / "digits.npz").write_bytes(digits.data_path.read_bytes())
    private, public = generate_key_pair(tmp_path / "keys")
    return dict(
        kwargs=dict(
            source_uri="store://sources/digits.onnx", data_uri="store://sources/digits.npz", store_root=store,
            namespace="team", name="digits", variants=["fp32", "int8-static"], accuracy_budget=0.01, menu_version=1,
            signing_key_path=private, pipeline_root=tmp_path / "pipeline-root", cache_dir=tmp_path / "cache",
            kfp_host=None,
        ),
        public=load_public_key(public.read_bytes()),
        store=store,
    )


def test_pipeline_publishes_a_verified_menu(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    original_print = builtins.print
    menu = runner.run_variants_pipeline(**setup["kwargs"])
    assert capsys.readouterr().out == ""  # kfp.local's chatter stays out of the caller's stdout
    assert builtins.print is original_print  # kfp.local's indenting print does not leak
    assert [v["id"] for v in menu["variants"]] == ["fp32", "int8-static"]
    assert all(v["accepted"] for v in menu["variants"])
    assert menu["base"]["source"] == "store://sources/digits.onnx"
    fp32, int8 = menu["variants"]
    assert int8["size_bytes"] <= 0.35 * fp32["size_bytes"]
    assert fp32["metrics"]["accuracy"] - int8["metrics"]["accuracy"] <= 0.01
    assert verify_variant_dir(setup["store"] / "models" / "team" / "digits", setup["public"]) == menu

    # A new generation: a newer menu, the same blobs (the variant cache keeps digests stable).
    again = runner.run_variants_pipeline(**{**setup["kwargs"], "menu_version": 2})
    assert again["version"] == 2
    assert [v["sha256"] for v in again["variants"]] == [v["sha256"] for v in menu["variants"]]


def test_a_failing_task_surfaces_the_domain_error(setup: dict[str, Any], tmp_path: Path) -> None:
    # Skip the in-process check to prove the component's own error reaches the caller.
    (setup["store"] / "sources" / "digits.onnx").write_bytes(b"corrupted after the check")
    kwargs = setup["kwargs"]
    arguments = {
        "source_uri": kwargs["source_uri"], "data_uri": kwargs["data_uri"], "store_root": str(kwargs["store_root"]),
        "namespace": "team", "name": "digits", "variants": ["fp32"], "accuracy_budget": 0.01,
        "menu_version": 1, "signing_key_path": str(kwargs["signing_key_path"]), "cache_dir": "",
    }
    with pytest.raises(InvalidModelError, match=r"model store://sources/digits\.onnx: not a valid ONNX model"):
        runner._run_local(arguments, tmp_path / "root")


def test_the_full_matrix_runs_as_parallel_tasks(setup: dict[str, Any]) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    ids = ["fp32", "fp16", "int8-dynamic", "pruned-50-int8-static", "tvm-x86-64", "tvm-cortex-m4"]
    menu = runner.run_variants_pipeline(**{**setup["kwargs"], "variants": ids})
    assert [v["id"] for v in menu["variants"]] == ids
    by_id = {v["id"]: v for v in menu["variants"]}
    assert by_id["tvm-x86-64"]["format"] == "tvm-lib" and by_id["tvm-x86-64"]["metrics"]["latency_ms_p50"] > 0
    assert by_id["tvm-cortex-m4"]["format"] == "c-source"
    assert by_id["tvm-cortex-m4"]["requirements"]["arch"] == ["cortex-m4"]
    assert by_id["tvm-cortex-m4"]["metrics"]["latency_ms_p50"] is None  # not measurable on this host
    assert [t["name"] for t in by_id["pruned-50-int8-static"]["lineage"]["transforms"]] == [
        "magnitude_prune", "quantize_static"]
    assert verify_variant_dir(setup["store"] / "models" / "team" / "digits", setup["public"]) == menu
