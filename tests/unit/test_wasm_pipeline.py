"""EdgeModel spec.pre/spec.post through the operator's build request and the pipeline's components."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kfp import dsl

from tinymlops.errors import IntegrityError, SpecError
from tinymlops.menu import verify_variant_dir
from tinymlops.model import DigitsArtifacts
from tinymlops.signing import generate_key_pair, load_private_key
from tinymlops.store import sha256_bytes
from tinymlops_operator.logic import edgemodel
from tinymlops_pipelines.components import build_variant, check_source, publish_menu

pytest.importorskip("wasmtime", reason="wasmtime is not installed (pip install 'tinymlops[wasm]')")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"


def request(spec: dict[str, Any]) -> edgemodel.BuildRequest:
    return edgemodel.build_request({"source": {"uri": "store://m.onnx"}, **spec}, namespace="ns", name="m",
                                   generation=1, previous_menu_version=0)


def test_the_build_request_carries_the_module_uris() -> None:
    built = request({"data": {"uri": "store://raw.npz"}, "pre": {"uri": "store://pre.wasm"},
                     "post": {"uri": "file:///modules/post.wasm"}})
    assert (built.pre_uri, built.post_uri) == ("store://pre.wasm", "file:///modules/post.wasm")
    assert request({}).pre_uri is None and request({"post": {"uri": "store://p.wasm"}}).post_uri == "store://p.wasm"


def test_a_pre_module_without_data_is_a_spec_error_naming_both_fields() -> None:
    with pytest.raises(SpecError, match="spec.pre needs spec.data"):
        request({"pre": {"uri": "store://pre.wasm"}})


def artifact(kind: type, path: Path, metadata: dict[str, Any] | None = None) -> Any:
    return kind(uri=str(path), metadata=dict(metadata or {}))


def test_components_build_with_modules(digits: DigitsArtifacts, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "sources").mkdir(parents=True)
    (store / "sources" / "digits.onnx").write_bytes(digits.model_path.read_bytes())
    for name in ("pre_digits.wasm", "post_topk.wasm"):
        (store / "sources" / name).write_bytes((EXAMPLES / name).read_bytes())
    with np.load(digits.data_path) as npz:
        np.savez(store / "sources" / "raw.npz", x=(npz["x"] * 16).astype(np.float32), y=npz["y"])
    modules = {"pre_uri": "store://sources/pre_digits.wasm", "post_uri": "store://sources/post_topk.wasm"}
    base, data = artifact(dsl.Model, tmp_path / "base"), artifact(dsl.Dataset, tmp_path / "data")
    info = check_source.python_func(source_uri="store://sources/digits.onnx", data_uri="store://sources/raw.npz",
                                    store_root=str(store), base=base, data=data, **modules)
    with np.load(tmp_path / "data") as npz:  # the build tasks see the model's inputs, made by the module
        assert float(npz["x"].max()) <= 1.0 and float(npz["x_raw"].max()) == 16.0
    variant = artifact(dsl.Model, tmp_path / "variant")
    entry = build_variant.python_func(base=base, data=data, variant_id="fp32", accuracy_budget=0.01, cache_dir="",
                                      variant=variant)
    private, _ = generate_key_pair(tmp_path / "keys")
    arguments = dict(base_info=info, entries=[entry], variants=[variant], variant_ids=["fp32"],
                     store_root=str(store), namespace="team", name="digits", menu_version=1,
                     signing_key_path=str(private), base=base, data=data)
    publish_menu.python_func(**arguments, **modules)
    menu = verify_variant_dir(store / "models" / "team" / "digits",
                              load_private_key(private.read_bytes()).public_key())
    assert {m["role"] for m in menu["modules"]} == {"pre", "post"}
    assert menu["variants"][0]["modules"]["pre"] == sha256_bytes((EXAMPLES / "pre_digits.wasm").read_bytes())
    assert json.loads(entry)["metrics"]["accuracy"] == menu["variants"][0]["metrics"]["accuracy"] > 0.9
    # A module that changed between the tasks is named, not published.
    (store / "sources" / "post_topk.wasm").write_bytes((EXAMPLES / "pre_digits.wasm").read_bytes())
    changed = r"post module store://sources/post_topk.wasm \(changed during the build\): sha256 is"
    with pytest.raises(IntegrityError, match=changed):
        publish_menu.python_func(**arguments, **modules)


def test_fetch_names_a_changed_module(tmp_path: Path) -> None:
    from tinymlops.variants.modules import fetch_modules

    (tmp_path / "pre.wasm").write_bytes(b"\0asm")
    with pytest.raises(IntegrityError, match=r"pre module store://pre.wasm \(changed during the build\)"):
        fetch_modules({"pre": "store://pre.wasm"}, tmp_path, expected={"pre": "0" * 64})
