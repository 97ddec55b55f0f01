"""Pre/post modules through the factory, the signed menu and the agent: built with the real preprocessing, verified
before they run, and a bad one never replaces what serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.agent.install import install_from_dir
from tinymlops.agent.standalone import infer, open_agent
from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import IntegrityError, InvalidDataError, WasmModuleError
from tinymlops.layout import model_prefix
from tinymlops.menu import split_parts, verify_variant_dir
from tinymlops.model import DigitsArtifacts
from tinymlops.publish import write_variant_dir
from tinymlops.signing import public_key_pem
from tinymlops.store import DirectoryStore, sha256_bytes
from tinymlops.variants import build_variants

wasmtime = pytest.importorskip("wasmtime", reason="wasmtime is not installed (pip install 'tinymlops[wasm]')")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"
PRE, POST = (EXAMPLES / "pre_digits.wasm").read_bytes(), (EXAMPLES / "post_topk.wasm").read_bytes()
KEY = Ed25519PrivateKey.generate()
PUB = public_key_pem(KEY.public_key())
HOST = DeviceCapabilities(name="host", arch="x86_64", device_class="pc", ram_mb=4096, model_storage_kb=1 << 20)
# A pre module that passes values through, and traps when the first one is negative: a fault a device can meet.
TRAPS_ON_NEGATIVE = wasmtime.wat2wasm(
    '(module (memory (export "memory") 1) (func (export "process") (param i32) (result i32) '
    '(if (f32.lt (f32.load (i32.const 0)) (f32.const 0)) (then unreachable)) local.get 0))')


def raw_digits(digits: DigitsArtifacts, path: Path) -> Path:
    """The sample data as a sensor gives it: pixel intensities 0..16 (data.npz holds them divided by 16)."""
    with np.load(digits.data_path) as npz:
        np.savez(path, x=(npz["x"] * 16).astype(np.float32), y=npz["y"])
    return path


def build(root: Path, data: Path, **modules: bytes) -> dict[str, Any]:
    return build_variants(Path(root / "model.onnx"), data, DirectoryStore(root), model_prefix("ns", "digits"),
                          signing_key=KEY, model_ref=("ns", "digits"), precisions=("fp32",), **modules)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> Path:
    root = tmp_path_factory.mktemp("store")
    (root / "model.onnx").write_bytes(digits.model_path.read_bytes())
    return root


@pytest.fixture(scope="module")
def with_modules(store: Path, digits: DigitsArtifacts) -> dict[str, Any]:
    return build(store, raw_digits(digits, store / "raw.npz"), pre=PRE, post=POST)


def directory(store: Path) -> Path:
    return store / model_prefix("ns", "digits")


def test_the_menu_lists_the_modules_and_links_them_to_every_variant(with_modules: dict[str, Any],
                                                                    store: Path) -> None:
    modules = {m["role"]: m for m in with_modules["modules"]}
    assert modules["pre"]["sha256"] == sha256_bytes(PRE) and modules["post"]["sha256"] == sha256_bytes(POST)
    assert (modules["pre"]["inputs"], modules["pre"]["outputs"]) == (64, 64)
    assert (modules["post"]["inputs"], modules["post"]["outputs"]) == (10, 6)
    for variant in with_modules["variants"]:
        digests = {"pre": sha256_bytes(PRE), "post": sha256_bytes(POST)}
        assert variant["modules"] == digests and variant["lineage"]["modules"] == digests
        golden = variant["health_check"]["modules"]
        np.testing.assert_allclose(golden["pre"]["outputs"], variant["health_check"]["inputs"], atol=1e-7)
        assert golden["post"]["inputs"] == [list(map(float, o)) for o in variant["health_check"]["outputs"]]
    assert verify_variant_dir(directory(store), KEY.public_key()) == with_modules


def test_accuracy_is_measured_through_the_pre_module(with_modules: dict[str, Any], store: Path,
                                                     digits: DigitsArtifacts, tmp_path: Path) -> None:
    # The module divides by 16 exactly, as the model's training did: raw data through it scores as scaled data.
    scaled = build_variants(digits.model_path, digits.data_path, DirectoryStore(tmp_path), "m",
                            signing_key=KEY, model_ref=("ns", "digits"), precisions=("fp32",))
    assert with_modules["variants"][0]["metrics"]["accuracy"] == scaled["variants"][0]["metrics"]["accuracy"]


def test_a_pre_module_needs_raw_data_that_fits_the_model(store: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidDataError, match="a pre module needs DATA.npz"):
        build(store, None, pre=PRE)  # type: ignore[arg-type]
    np.savez(tmp_path / "short.npz", x=np.ones((8, 32), np.float32))
    with pytest.raises(InvalidDataError, match="makes 32 values of each sample, model input input needs"):
        build(store, tmp_path / "short.npz", pre=PRE)


def test_verify_names_a_tampered_module(with_modules: dict[str, Any], store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "v"
    write_variant_dir(copy, with_modules, _blobs(store, with_modules), KEY)
    (copy / "blobs" / sha256_bytes(POST)).write_bytes(POST[:-1] + b"\1")
    with pytest.raises(IntegrityError, match="post module .*sha256 is"):
        verify_variant_dir(copy, KEY.public_key())


def _blobs(store: Path, menu: dict[str, Any]) -> dict[str, bytes]:
    digests = [v["sha256"] for v in menu["variants"]] + [m["sha256"] for m in menu.get("modules", [])]
    digests += [part["sha256"] for v in menu["variants"] for _, part in split_parts(v)]
    return {d: (directory(store) / "blobs" / d).read_bytes() for d in digests}


def test_a_device_runs_raw_inputs_through_pre_model_post(with_modules: dict[str, Any], store: Path,
                                                         digits: DigitsArtifacts, tmp_path: Path) -> None:
    install_from_dir(directory(store), tmp_path, pubkey_pem=PUB, caps=HOST)
    with np.load(store / "raw.npz") as npz:
        raw, labels = npz["x"][:20], npz["y"][:20]
    with np.load(digits.data_path) as npz:
        expected = open_agent(tmp_path).active.runner.many(npz["x"][:20]).argmax(axis=1)  # type: ignore[union-attr]
    predictions = infer(tmp_path, raw)
    assert predictions.post_module == sha256_bytes(POST)
    assert predictions.scores.shape == (20, 6)
    np.testing.assert_array_equal(predictions.scores[:, 0], expected)  # the post module's top class
    assert np.all(np.diff(predictions.scores[:, 1::2], axis=1) <= 0)  # best first
    assert np.mean(predictions.scores[:, 0] == labels) > 0.8


def republished(store: Path, menu: dict[str, Any], role: str, blob: bytes, path: Path) -> Path:
    """The same variants, signed by the publisher, with `blob` as their `role` module (as a careless or compromised
    build would publish it: the signature holds, the module is bad)."""
    menu = json.loads(json.dumps(menu))
    blobs = _blobs(store, menu)
    for module in menu["modules"]:
        if module["role"] == role:
            old, module["sha256"], module["size_bytes"] = module["sha256"], sha256_bytes(blob), len(blob)
    for variant in menu["variants"]:
        variant["modules"][role] = sha256_bytes(blob)
    menu["version"] += 1
    blobs[sha256_bytes(blob)] = blob
    del blobs[old]
    write_variant_dir(path, menu, blobs, KEY)
    return path


@pytest.mark.parametrize(("blob", "error", "named"), [
    (wasmtime.wat2wasm('(module (import "env" "clock" (func)) (memory (export "memory") 1) '
                       '(func (export "process") (param i32) (result i32) local.get 0))'),
     WasmModuleError, "imports env.clock"),
    (TRAPS_ON_NEGATIVE, WasmModuleError, "golden sample 0 differs"),  # the identity is not the scaling it replaced
])
def test_a_bad_module_never_replaces_what_serves(with_modules: dict[str, Any], store: Path, tmp_path: Path,
                                                 blob: bytes, error: type[Exception], named: str) -> None:
    install_from_dir(directory(store), tmp_path / "state", pubkey_pem=PUB, caps=HOST)
    bad = republished(store, with_modules, "pre", blob, tmp_path / "bad")
    with pytest.raises(error, match=named):
        install_from_dir(bad, tmp_path / "state", caps=HOST)
    agent = open_agent(tmp_path / "state")
    assert agent.active is not None and agent.active.modules is not None
    assert agent.active.modules.digests["pre"] == sha256_bytes(PRE)


def test_a_module_that_fails_one_inference_is_counted_and_the_device_serves_on(
        store: Path, digits: DigitsArtifacts, tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / "model.onnx").write_bytes(digits.model_path.read_bytes())
    build(root, digits.data_path, pre=TRAPS_ON_NEGATIVE)  # data.npz is already scaled: the module passes it
    install_from_dir(directory(root), tmp_path / "state", pubkey_pem=PUB, caps=HOST)
    agent = open_agent(tmp_path / "state")
    sample = np.full(64, 0.5, np.float32)
    assert agent.infer(-sample) is None
    assert agent.telemetry.module_failures == {"trap": 1} and agent.telemetry.errors == 1
    assert "trapped" in str(agent.module_error)
    out = agent.infer(sample)
    assert out is not None and out.shape == (10,)
    assert agent.telemetry.inferences == 1
