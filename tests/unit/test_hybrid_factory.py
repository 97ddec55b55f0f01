"""EdgeModel spec.hybrid.splitParts: through the operator's build request to the pipeline's publish step, which
publishes each exact split point's head and tail (never with encryption); and the fleet's hybrid section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kfp import dsl

from tinymlops.envelope import device_public_pem, generate_device_key
from tinymlops.errors import SpecError
from tinymlops.menu import verify_variant_dir
from tinymlops.model import DigitsArtifacts
from tinymlops.selection.hybrid import HybridPolicy
from tinymlops.signing import generate_key_pair, load_private_key
from tinymlops_operator.logic import edgemodel
from tinymlops_pipelines.components import build_variant, check_source, publish_menu


def request(spec: dict[str, Any]) -> edgemodel.BuildRequest:
    return edgemodel.build_request({"source": {"uri": "store://m.onnx"}, **spec}, namespace="ns", name="m",
                                   generation=1, previous_menu_version=0)


def test_split_parts_ride_in_the_build_request_and_refuse_encryption() -> None:
    assert request({"hybrid": {"splitParts": True}}).split_parts and not request({}).split_parts
    pem = device_public_pem(generate_device_key().public_key()).decode()
    encrypted = {"encryption": {"recipients": [{"name": "a", "publicKey": pem}]}}
    with pytest.raises(SpecError, match=r"spec.hybrid.splitParts cannot be used with spec.encryption"):
        request({"hybrid": {"splitParts": True}, **encrypted})


def test_the_publish_step_publishes_heads_and_tails(digits: DigitsArtifacts, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "sources").mkdir(parents=True)
    (store / "sources" / "digits.onnx").write_bytes(digits.model_path.read_bytes())
    (store / "sources" / "data.npz").write_bytes(digits.data_path.read_bytes())
    base, data = dsl.Model(uri=str(tmp_path / "base")), dsl.Dataset(uri=str(tmp_path / "data"))
    info = check_source.python_func(source_uri="store://sources/digits.onnx", data_uri="store://sources/data.npz",
                                    store_root=str(store), base=base, data=data)
    variant = dsl.Model(uri=str(tmp_path / "variant"))
    entry = build_variant.python_func(base=base, data=data, variant_id="fp32", accuracy_budget=0.01, cache_dir="",
                                      variant=variant)
    private, _ = generate_key_pair(tmp_path / "keys")
    arguments = dict(base_info=info, entries=[entry], variants=[variant], variant_ids=["fp32"],
                     store_root=str(store), namespace="team", name="digits", menu_version=1,
                     signing_key_path=str(private), base=base, data=data)
    publish_menu.python_func(**arguments, split_parts=True)
    folder = store / "models" / "team" / "digits"
    menu = verify_variant_dir(folder, load_private_key(private.read_bytes()).public_key())
    points = [p for p in menu["variants"][0]["split"]["points"] if p["exact"]]
    assert points and all((folder / "blobs" / p[part]["sha256"]).is_file() for p in points for part in ("head", "tail"))
    key = tmp_path / "data.key"
    key.write_text("00" * 32)
    with pytest.raises(SpecError, match="encryption"):
        publish_menu.python_func(**{**arguments, "menu_version": 2}, split_parts=True, data_key_path=str(key))


def test_the_fleet_hybrid_section_is_checked_by_field() -> None:
    policy = HybridPolicy.from_policy({"hybrid": {"cloud": {"variant": "fp32", "threshold": 0.8, "maxMs": 50},
                                                  "batterySaverPct": 20}})
    assert (policy.cloud_variant, policy.threshold, policy.max_ms) == ("fp32", 0.8, 50)
    with pytest.raises(SpecError, match="batterySaverPct"):
        HybridPolicy.from_policy({"hybrid": {"batterySaverPct": 120}})
