"""Each component's function on its own (`.python_func`), plus the runner's in-process checks."""

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kfp import dsl

from tinymlops.errors import InvalidDataError, InvalidModelError, PipelineRunError, SignatureError, SpecError
from tinymlops.menu import verify_variant_dir
from tinymlops.model import DigitsArtifacts, prepare_digits
from tinymlops.signing import generate_key_pair, load_private_key
from tinymlops_pipelines.components import build_variant, check_source, publish_menu
from tinymlops_pipelines.errors import parse_reported_error, reported_errors
from tinymlops_pipelines.runner import PipelineRun, build_variants, run_variants_pipeline


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    return prepare_digits(tmp_path_factory.mktemp("digits"))


def artifact(kind: type, path: Path, metadata: dict[str, Any] | None = None) -> Any:
    return kind(uri=str(path), metadata=dict(metadata or {}))


def test_components_chain_by_hand(digits: DigitsArtifacts, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "sources").mkdir(parents=True)
    (store / "sources" / "digits.onnx").write_bytes(digits.model_path.read_bytes())
    base, data = artifact(dsl.Model, tmp_path / "base"), artifact(dsl.Dataset, tmp_path / "data")
    info = json.loads(check_source.python_func(
        source_uri="store://sources/digits.onnx", data_uri=f"file://{digits.data_path}", store_root=str(store),
        base=base, data=data,
    ))
    assert info["source"] == "store://sources/digits.onnx" and base.metadata["sha256"] == info["sha256"]
    assert data.metadata["present"] is True

    entries, variants = [], []
    for variant_id in ("int8-static", "fp32"):  # publish must restore the asked-for order
        variant = artifact(dsl.Model, tmp_path / f"variant-{variant_id}")
        entries.append(build_variant.python_func(
            base=base, data=data, variant_id=variant_id, accuracy_budget=0.01, cache_dir="", variant=variant,
        ))
        variants.append(variant)
    assert json.loads(entries[0])["lineage"]["parent"] == info["sha256"]
    assert variants[0].metadata["id"] == "int8-static"

    private, public = generate_key_pair(tmp_path / "keys")
    digest = publish_menu.python_func(
        base_info=json.dumps(info), entries=entries, variants=variants, variant_ids=["fp32", "int8-static"],
        store_root=str(store), namespace="team", name="digits", menu_version=4, signing_key_path=str(private),
        base=base, data=data,
    )
    menu_dir = store / "models" / "team" / "digits"
    assert len(digest) == 64
    menu = verify_variant_dir(menu_dir, load_private_key(private.read_bytes()).public_key())
    assert [v["id"] for v in menu["variants"]] == ["fp32", "int8-static"] and menu["version"] == 4
    assert menu["base"]["source"] == "store://sources/digits.onnx"
    assert menu["monitoring"]["rows"] > 0  # reference drift histograms of the checked data
    # Each variant's own output reference, from the blobs the build tasks produced (reference_monitoring).
    assert set(menu["monitoring"]["outputs"]) == {v["sha256"] for v in menu["variants"]}


def test_check_source_reports_a_bad_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    with pytest.raises(InvalidModelError):
        check_source.python_func(source_uri=str(bad), data_uri="", store_root="",
                                 base=artifact(dsl.Model, tmp_path / "b"), data=artifact(dsl.Dataset, tmp_path / "d"))
    reported = parse_reported_error(capsys.readouterr().out)
    assert reported is not None and reported[0] == "InvalidModelError" and str(bad) in reported[1]


def test_marker_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidDataError), reported_errors():
        raise InvalidDataError("data x.npz: has no array `x`")
    assert parse_reported_error("noise\n" + capsys.readouterr().out + "more noise\n") == (
        "InvalidDataError", "data x.npz: has no array `x`")
    assert parse_reported_error("TINYMLOPS_ERROR {broken") is None


def run_kwargs(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    private, _ = generate_key_pair(tmp_path / "keys")
    kwargs: dict[str, Any] = dict(
        source_uri=str(tmp_path / "missing.onnx"), data_uri=None, store_root=tmp_path / "store",
        namespace="team", name="m", variants=["fp32", "int8-static"], accuracy_budget=0.01, menu_version=1,
        signing_key_path=private, pipeline_root=tmp_path / "root", cache_dir=None, kfp_host=None,
    )
    kwargs.update(overrides)
    return kwargs


def test_runner_checks_in_process_before_launching(tmp_path: Path, digits: DigitsArtifacts) -> None:
    with pytest.raises(InvalidModelError, match=r"missing\.onnx"):
        run_variants_pipeline(**run_kwargs(tmp_path))
    with pytest.raises(InvalidDataError, match=r"model\.onnx"):
        run_variants_pipeline(**run_kwargs(tmp_path, source_uri=str(digits.model_path),
                                           data_uri=str(digits.model_path)))
    with pytest.raises(SpecError, match="fp8"):
        run_variants_pipeline(**run_kwargs(tmp_path, variants=["fp32", "fp8"]))
    with pytest.raises(SignatureError, match="nokey.pem"):
        run_variants_pipeline(**run_kwargs(tmp_path, signing_key_path=tmp_path / "nokey.pem"))
    assert not (tmp_path / "root").exists()  # nothing was launched


def publish_fp32(digits: DigitsArtifacts, tmp_path: Path, store: Path, private: Path, *, version: int,
                 source_uri: str) -> None:
    """What a variants pipeline run publishes: the fp32 variant of the digits model, in a signed menu."""
    base, data = artifact(dsl.Model, tmp_path / "base"), artifact(dsl.Dataset, tmp_path / "data")
    info = check_source.python_func(source_uri=source_uri, data_uri="", store_root=str(store), base=base, data=data)
    variant = artifact(dsl.Model, tmp_path / "variant-fp32")
    entry = build_variant.python_func(base=base, data=data, variant_id="fp32", accuracy_budget=0.01, cache_dir="",
                                      variant=variant)
    publish_menu.python_func(base_info=info, entries=[entry], variants=[variant], variant_ids=["fp32"],
                             store_root=str(store), namespace="team", name="m", menu_version=version,
                             signing_key_path=str(private), base=base, data=data)


class FakeKfp:
    """kfp.Client against a backend whose runs publish `published_version` of the menu into the shared store."""

    published_version = 0
    digits: DigitsArtifacts
    tmp_path: Path

    def __init__(self, host: str) -> None:
        self.host = host

    def create_run_from_pipeline_package(self, package: str, *, arguments: dict[str, Any], run_name: str,
                                         experiment_name: str) -> Any:
        publish_fp32(self.digits, self.tmp_path, Path(arguments["store_root"]), Path(arguments["signing_key_path"]),
                     version=self.published_version, source_uri=arguments["source_uri"])
        return SimpleNamespace(run_id="5e0c1f7a-run")

    def wait_for_run_completion(self, run_id: str, timeout: int) -> Any:
        return SimpleNamespace(state="SUCCEEDED", error=None)


def test_a_remote_run_is_linked_and_the_menu_it_left_in_the_store_is_checked(
    tmp_path: Path, digits: DigitsArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kfp

    store = tmp_path / "store"
    (store / "sources").mkdir(parents=True)
    (store / "sources" / "digits.onnx").write_bytes(digits.model_path.read_bytes())
    FakeKfp.digits, FakeKfp.tmp_path, FakeKfp.published_version = digits, tmp_path, 2
    monkeypatch.setattr(kfp, "Client", FakeKfp)
    kwargs = run_kwargs(tmp_path, source_uri="store://sources/digits.onnx", variants=["fp32"], menu_version=2,
                        kfp_host="kfp.example:8080")
    built = build_variants(**kwargs)
    assert built.menu["version"] == 2 and [v["id"] for v in built.menu["variants"]] == ["fp32"]
    assert built.run == PipelineRun("5e0c1f7a-run", "http://kfp.example:8080/#/runs/details/5e0c1f7a-run")
    assert built.run.as_status() == {"id": "5e0c1f7a-run", "url": built.run.url}

    # The run succeeded, but the store holds another build's menu (an older version): not taken for this one.
    FakeKfp.published_version = 1
    with pytest.raises(PipelineRunError, match=r"run 5e0c1f7a-run succeeded but .* holds team/m v1 .* not team/m v2"):
        build_variants(**kwargs)


def test_static_int8_without_data_is_not_built_naming_spec_data(digits: DigitsArtifacts, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "sources").mkdir(parents=True)
    (store / "sources" / "digits.onnx").write_bytes(digits.model_path.read_bytes())
    base, data = artifact(dsl.Model, tmp_path / "base"), artifact(dsl.Dataset, tmp_path / "data")
    check_source.python_func(source_uri="store://sources/digits.onnx", data_uri="", store_root=str(store),
                             base=base, data=data)
    assert data.metadata["present"] is False

    int8 = artifact(dsl.Model, tmp_path / "int8")
    entry = json.loads(build_variant.python_func(base=base, data=data, variant_id="int8-static",
                                                 accuracy_budget=0.01, cache_dir="", variant=int8))
    assert entry["not_built"] is True and "spec.data" in entry["reason"] and int8.metadata["built"] is False

    fp32 = artifact(dsl.Model, tmp_path / "fp32")  # the rest of the matrix still builds, scored by agreement
    built = json.loads(build_variant.python_func(base=base, data=data, variant_id="fp32",
                                                 accuracy_budget=0.01, cache_dir="", variant=fp32))
    assert "not_built" not in built and built["metrics"]["eval_data"] == "synthetic"
