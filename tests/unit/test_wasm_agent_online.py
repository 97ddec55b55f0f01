"""An online device and a variant's pre/post modules: fetched with the variant, loaded before it serves, and a new
module for the same model bytes is a change, not a keep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.test_agent_online import Node
from tinymlops.agent import DeviceAgent, SessionCache
from tinymlops.agent.online import OnlineAgent
from tinymlops.devices import DeviceCapabilities
from tinymlops.layout import model_prefix
from tinymlops.model import DigitsArtifacts
from tinymlops.plan import build_plan, menu_ref, plan_bytes
from tinymlops.publish import write_variant_dir
from tinymlops.signing import sign
from tinymlops.store import DirectoryStore, sha256_bytes
from tinymlops.variants import build_variants

wasmtime = pytest.importorskip("wasmtime", reason="wasmtime is not installed (pip install 'tinymlops[wasm]')")

KEY = Ed25519PrivateKey.generate()
HOST = DeviceCapabilities(name="host", arch="x86_64", device_class="pc", ram_mb=4096, model_storage_kb=1 << 20)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"
PRE, POST = (EXAMPLES / "pre_digits.wasm").read_bytes(), (EXAMPLES / "post_topk.wasm").read_bytes()
PLAN = "plans/ns/f/plan.json"


def served(menu_dir: Path, version: int, serial: int) -> dict[str, bytes]:
    """The store as the gateway serves it: the menu under its digest, its blobs, and a plan naming it."""
    menu_json = (menu_dir / "menu.json").read_bytes()
    ref = menu_ref(namespace="ns", model="digits", menu_sha256=sha256_bytes(menu_json), menu_version=version,
                   revision=version)
    files = {ref["path"]: menu_json, ref["signature"]: (menu_dir / "menu.sig").read_bytes()}
    files.update({f"{ref['folder']}blobs/{blob.name}": blob.read_bytes() for blob in (menu_dir / "blobs").iterdir()})
    plan = plan_bytes(build_plan(namespace="ns", fleet="f", model="digits", menu=ref, serial=serial,
                                 policy={"objective": "accuracy"}))
    files[PLAN], files["plans/ns/f/plan.sig"] = plan, sign(KEY, plan).encode()
    return files


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> Path:
    root = tmp_path_factory.mktemp("store")
    with np.load(digits.data_path) as npz:
        np.savez(root / "raw.npz", x=(npz["x"] * 16).astype(np.float32), y=npz["y"])
    build_variants(digits.model_path, root / "raw.npz", DirectoryStore(root), model_prefix("ns", "digits"),
                   signing_key=KEY, model_ref=("ns", "digits"), precisions=("fp32",), pre=PRE, post=POST)
    return root / model_prefix("ns", "digits")


async def test_a_poll_fetches_and_loads_the_modules_then_serves_raw_inputs(built: Path) -> None:
    files = served(built, 1, 1)
    node = Node(files)
    device = OnlineAgent(DeviceAgent(HOST, KEY.public_key(), SessionCache()), namespace="ns", fleet="f",
                         node=node)  # type: ignore[arg-type]
    await device.sync()
    agent = device.agent
    assert agent.phase == "Running" and agent.active is not None and agent.active.modules is not None
    assert {key.rsplit("/", 1)[1] for key in node.asked} >= {sha256_bytes(PRE), sha256_bytes(POST)}
    out = agent.infer(np.full(64, 16, np.float32))
    assert out is not None and out.shape == (6,) and 0 <= out[0] <= 9


async def test_the_same_model_with_another_module_is_installed_not_kept(built: Path, tmp_path: Path) -> None:
    node = Node(served(built, 1, 1))
    device = OnlineAgent(DeviceAgent(HOST, KEY.public_key(), SessionCache()), namespace="ns", fleet="f",
                         node=node)  # type: ignore[arg-type]
    await device.sync()
    # v2, re-signed: the same variant bytes, and a post module with two bytes appended (another digest)
    menu = json.loads((built / "menu.json").read_bytes())
    blobs = {p.name: p.read_bytes() for p in (built / "blobs").iterdir()}
    other = POST + b"\0\0"  # trailing bytes after the last section are not valid wasm: the install must fail
    for module in menu["modules"]:
        if module["role"] == "post":
            module["sha256"], module["size_bytes"] = sha256_bytes(other), len(other)
    for variant in menu["variants"]:
        variant["modules"]["post"] = sha256_bytes(other)
    menu["version"] = 2
    del blobs[sha256_bytes(POST)]
    blobs[sha256_bytes(other)] = other
    write_variant_dir(tmp_path / "v2", menu, blobs, KEY)
    node.files = served(tmp_path / "v2", 2, 2)
    await device.sync()
    agent = device.agent
    assert agent.phase == "Failed" and "post module" in agent.reason and "still serving fp32" in agent.reason
    assert agent.active is not None and agent.active.modules is not None
    assert agent.active.modules.digests["post"] == sha256_bytes(POST)  # the previous modules keep serving
    assert agent.infer(np.full(64, 16, np.float32)) is not None
