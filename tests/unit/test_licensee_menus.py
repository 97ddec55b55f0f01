"""Per-licensee watermarked menus in the fleet: the spec, the store layout, the plan and status (pure parts)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kfp import dsl

from tests.unit.samples import MENU
from tinymlops import API_GROUP, API_VERSION, errors
from tinymlops.kube.schema import load_crds
from tinymlops.layout import kept_menu, licensee_prefix, menu_prefix, model_prefix
from tinymlops.merge_patch import merge_patch
from tinymlops.model import DigitsArtifacts
from tinymlops.plan import menu_ref
from tinymlops.variants.lineage import through_watermark
from tinymlops_operator.logic import devicefleet as fleet_logic
from tinymlops_operator.logic import edgemodel as model_logic
from tinymlops_operator.logic import rollout
from tinymlops_operator.logic.plan import plan_for

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = load_crds(ROOT / "crds")
API = f"{API_GROUP}/{API_VERSION}"
WATERMARK = {"keySecretRef": {"name": "owner-key"}, "licensees": ["acme", "globex"]}
SPEC = {"source": {"uri": "store://m.onnx"}, "data": {"uri": "store://d.npz"}, "watermark": WATERMARK}


def model(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "EdgeModel", "metadata": {"name": "m", "namespace": "ns"}, "spec": spec,
            **({"status": status} if status is not None else {})}


def fleet(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": "f"},
            "spec": {"modelRef": {"name": "m"}, "selector": {"matchLabels": {"a": "b"}}, **spec}}


# --- the spec -------------------------------------------------------------------------------------


def test_the_schema_takes_a_watermark_and_defaults_the_secret_key() -> None:
    applied = REGISTRY.apply_defaults(model(SPEC))
    assert applied["spec"]["watermark"]["keySecretRef"] == {"name": "owner-key", "key": "watermark-key"}
    assert REGISTRY.validate(applied) == []
    assert model_logic.DEFAULT_WATERMARK_KEY == "watermark-key"  # the operator's default is the schema's


@pytest.mark.parametrize(("watermark", "field"), [
    ({"keySecretRef": {"name": "k"}, "licensees": []}, "spec.watermark.licensees"),
    ({"keySecretRef": {"name": "k"}, "licensees": ["Acme"]}, "spec.watermark.licensees[0]"),
    ({"keySecretRef": {"name": "k"}, "licensees": ["a", "a"]}, "spec.watermark.licensees"),
    ({"licensees": ["a"]}, "spec.watermark"),
])
def test_the_schema_refuses_bad_watermarks_naming_the_field(watermark: dict[str, Any], field: str) -> None:
    problems = REGISTRY.validate(REGISTRY.apply_defaults(model({**SPEC, "watermark": watermark})))
    assert problems and all(p.startswith(field) for p in problems), problems


def test_the_fleet_licensee_is_a_dns_label() -> None:
    assert REGISTRY.validate(REGISTRY.apply_defaults(fleet(licensee="acme"))) == []
    assert REGISTRY.validate(REGISTRY.apply_defaults(fleet(licensee="ACME/../x")))[0].startswith("spec.licensee")


def test_build_request_carries_the_watermark_without_the_key() -> None:
    request = model_logic.build_request(SPEC, namespace="ns", name="m", generation=1, previous_menu_version=0)
    assert request.watermark == model_logic.Watermarking(("owner-key", "watermark-key"), ("acme", "globex"))
    assert model_logic.build_request({"source": SPEC["source"]}, namespace="ns", name="m", generation=1,
                                     previous_menu_version=0).watermark is None


@pytest.mark.parametrize(("spec", "message"), [
    ({**SPEC, "data": None}, "spec.watermark: a watermark is learnt from data; give spec.data too"),
    ({**SPEC, "watermark": {"keySecretRef": {}, "licensees": ["a"]}}, "spec.watermark.keySecretRef.name"),
    ({**SPEC, "watermark": {**WATERMARK, "licensees": ["a/b"]}}, "spec.watermark.licensees[0]: 'a/b'"),
    ({**SPEC, "watermark": {**WATERMARK, "licensees": ["a", "a"]}}, "listed twice"),
])
def test_build_request_refuses_what_the_schema_would(spec: dict[str, Any], message: str) -> None:
    # The operator may meet objects no API server checked (an emulator, an older CRD): same refusal, permanent.
    with pytest.raises(errors.SpecError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        model_logic.build_request(spec, namespace="ns", name="m", generation=1, previous_menu_version=0)
    assert model_logic.is_permanent(caught.value)


# --- the store and the plan -----------------------------------------------------------------------


def test_a_licensee_menu_is_a_variant_directory_inside_the_model_folder() -> None:
    assert licensee_prefix("ns", "m", "acme") == "models/ns/m/licensees/acme"
    assert menu_prefix("ns", "m") == model_prefix("ns", "m")
    assert kept_menu("ns", "m", "a" * 64, "acme") == (f"models/ns/m/licensees/acme/menus/{'a' * 64}.json",
                                                      f"models/ns/m/licensees/acme/menus/{'a' * 64}.sig")
    assert kept_menu("ns", "m", "a" * 64) == (f"models/ns/m/menus/{'a' * 64}.json", f"models/ns/m/menus/{'a' * 64}.sig")


def test_the_plan_of_a_licensee_fleet_points_at_the_licensee_menu() -> None:
    ref = menu_ref(namespace="ns", model="m", menu_sha256="b" * 64, menu_version=2, revision=1, licensee="acme")
    assert ref["folder"] == "models/ns/m/licensees/acme/" and ref["path"].startswith(ref["folder"] + "menus/")
    assert ref["licensee"] == "acme"
    plain = menu_ref(namespace="ns", model="m", menu_sha256="b" * 64, menu_version=2, revision=1)
    assert plain["folder"] == "models/ns/m/" and "licensee" not in plain  # plans without one are unchanged

    target = rollout.Target("m", "b" * 64, 2, {}, "acme")
    decided = rollout.decide(rollout.RolloutState(), strategy=_strategy(), target=target, now=1000.0)
    plan = plan_for("ns", "f", decided.state, {"matchLabels": {"a": "b"}})
    assert plan["menu"] == ref


def test_the_licensee_survives_the_status_round_trip_and_a_rollback() -> None:
    acme = rollout.Target("m", "b" * 64, 2, {}, "acme")
    state = rollout.decide(rollout.RolloutState(), strategy=_strategy(), target=acme, now=1000.0).state
    held = merge_patch({}, state.as_status())
    assert held["rollout"]["stable"]["licensee"] == "acme"
    assert held["rollout"]["history"][-1]["licensee"] == "acme"
    again = rollout.RolloutState.from_status(held)
    assert again.stable is not None and again.stable.target == acme
    # Another licensee's menu is another revision: a fleet moved to a new licensee rolls out as any change does.
    assert rollout.Target("m", "c" * 64, 2, {}, "globex").key != acme.key


def _strategy() -> Any:
    from tinymlops_operator.logic.strategy import parse_strategy

    return parse_strategy({})


# --- status ---------------------------------------------------------------------------------------


def test_ready_status_lists_the_licensee_menus_and_fits_the_schema() -> None:
    entries = [model_logic.licensee_status("acme", MENU, "a" * 64), model_logic.licensee_status("globex", MENU,
                                                                                                "b" * 64)]
    ready = model_logic.ready_status({}, MENU, "c" * 64, 1, licensees=entries)
    assert [e["licensee"] for e in ready["licensees"]] == ["acme", "globex"]
    assert ready["licensees"][0]["menuVersion"] == MENU["version"]
    assert ready["licensees"][0]["accepted"] == sum(1 for v in MENU["variants"] if v["accepted"])
    assert "watermarked menus for acme, globex" in ready["conditions"][0]["message"]
    held = merge_patch({}, ready)
    assert REGISTRY.validate(model(SPEC, held)) == []
    # The watermark removed: the next ready status deletes the list (merge-patch null), and only then.
    assert model_logic.ready_status(held, MENU, "c" * 64, 2)["licensees"] is None
    assert "licensees" not in model_logic.ready_status({}, MENU, "c" * 64, 2)


def test_a_fleet_naming_a_licensee_its_model_does_not_list_is_named() -> None:
    spec = fleet(licensee="initech")["spec"]
    problem = fleet_logic.unknown_licensee(spec, model(SPEC), "ns")
    assert problem == "spec.licensee: 'initech' is not a licensee of EdgeModel ns/m " \
                      "(spec.watermark.licensees: acme, globex)"
    assert "it has no spec.watermark" in str(fleet_logic.unknown_licensee(spec, model({"source": {}}), "ns"))
    assert fleet_logic.unknown_licensee(fleet(licensee="acme")["spec"], model(SPEC), "ns") is None
    assert fleet_logic.unknown_licensee(spec, None, "ns") is None  # no model yet: the fleet waits, as any fleet does
    status = fleet_logic.invalid_status({}, generation=3, message=problem, reason="UnknownLicensee")
    assert status["phase"] == "Degraded" and status["conditions"][0]["reason"] == "UnknownLicensee"
    assert REGISTRY.validate({**fleet(licensee="initech"), "status": status}) == []


def test_a_fleet_follows_its_licensee_menu_or_waits_for_it() -> None:
    status = {"menuSha256": "c" * 64, "menuVersion": 3,
              "licensees": [{"licensee": "acme", "menuSha256": "a" * 64, "menuVersion": 3}]}
    assert fleet_logic.licensee_menu(status, "acme") == ("a" * 64, 3)
    assert fleet_logic.licensee_menu(status, "") == ("c" * 64, 3)
    assert fleet_logic.licensee_menu(status, "globex") is None
    waiting = fleet_logic.model_not_ready_status({}, generation=1, namespace="ns", model="m", exists=True,
                                                 licensee="globex")
    assert waiting["conditions"][0]["message"] == ("spec.modelRef.name: EdgeModel ns/m has no published menu for "
                                                   "licensee globex yet")


# --- lineage and the pipeline's watermark step ----------------------------------------------------


def test_lineage_starts_at_the_source_with_the_watermark_step_first() -> None:
    entry = {"id": "int8-static", "lineage": {"parent": "w" * 64, "transforms": [{"name": "quantize", "params": {}}],
                                              "tools": {}}}
    step = {"name": "watermark", "params": {"licensee": "acme", "code_bits": 64}}
    traced = through_watermark(entry, watermarked_sha256="w" * 64, source_sha256="s" * 64, transform=step)
    assert traced["lineage"]["parent"] == "s" * 64
    assert [t["name"] for t in traced["lineage"]["transforms"]] == ["watermark", "quantize"]
    assert entry["lineage"]["parent"] == "w" * 64  # the argument is left as it was
    with pytest.raises(errors.IntegrityError, match="not from the watermarked model"):
        through_watermark(entry, watermarked_sha256="x" * 64, source_sha256="s" * 64, transform=step)
    with pytest.raises(errors.IntegrityError, match="never carry the watermark key"):
        through_watermark(entry, watermarked_sha256="w" * 64, source_sha256="s" * 64,
                          transform={"name": "watermark", "params": {"key": "00"}})


def test_the_watermark_task_hands_the_base_on_without_a_licensee(tmp_path: Path) -> None:
    from tinymlops_pipelines.components import watermark

    (tmp_path / "base").write_bytes(b"onnx bytes")
    base = dsl.Model(uri=str(tmp_path / "base"), metadata={"sha256": "s" * 64, "source": "store://m.onnx"})
    out = dsl.Model(uri=str(tmp_path / "out"), metadata={})
    data = dsl.Dataset(uri=str(tmp_path / "data"), metadata={"present": False})
    assert watermark.python_func(base=base, data=data, licensee="", key_path="", store_root=str(tmp_path),
                                 watermarked=out) == ""
    assert (tmp_path / "out").read_bytes() == b"onnx bytes" and out.metadata["sha256"] == "s" * 64


def test_a_variant_built_from_a_watermarked_copy_traces_back_to_the_source(tmp_path: Path,
                                                                          digits: DigitsArtifacts) -> None:
    from tinymlops.store import sha256_bytes
    from tinymlops_pipelines.components import build_variant

    model = digits.model_path.read_bytes()  # stands in for the watermarked copy: same graph, other weights
    step = {"source_sha256": "s" * 64, "watermarked_sha256": sha256_bytes(model),
            "transform": {"name": "watermark", "params": {"licensee": "acme"}}}
    base = dsl.Model(uri=str(digits.model_path), metadata={"source": "store://m.onnx", "watermark": step})
    data = dsl.Dataset(uri=str(digits.data_path), metadata={"present": True})
    entry = json.loads(build_variant.python_func(base=base, data=data, variant_id="fp32", accuracy_budget=0.01,
                                                 cache_dir="", variant=dsl.Model(uri=str(tmp_path / "v"))))
    assert entry["lineage"]["parent"] == "s" * 64
    assert entry["lineage"]["transforms"][0] == step["transform"]


def test_the_watermark_task_embeds_registers_and_hands_the_step_on(tmp_path: Path, digits: DigitsArtifacts) -> None:
    pytest.importorskip("torch")
    from tinymlops.store import DirectoryStore, sha256_bytes
    from tinymlops.watermark import WatermarkRegistry, verify
    from tinymlops_pipelines.components import watermark

    key = bytes(range(32))
    (tmp_path / "owner.key").write_bytes(key)
    base = dsl.Model(uri=str(digits.model_path), metadata={"sha256": "x", "source": "store://m.onnx"})
    out = dsl.Model(uri=str(tmp_path / "out"), metadata={})
    data = dsl.Dataset(uri=str(digits.data_path), metadata={"present": True})
    returned = watermark.python_func(base=base, data=data, licensee="acme", key_path=str(tmp_path / "owner.key"),
                                    store_root=str(tmp_path / "store"), watermarked=out)
    marked = (tmp_path / "out").read_bytes()
    step = out.metadata["watermark"]
    assert json.loads(returned) == step and step["watermarked_sha256"] == sha256_bytes(marked) == out.metadata["sha256"]
    assert step["source_sha256"] == sha256_bytes(digits.model_path.read_bytes())
    assert step["transform"]["name"] == "watermark" and step["transform"]["params"]["licensee"] == "acme"
    registry = WatermarkRegistry(DirectoryStore(tmp_path / "store"))
    assert registry.licensees() == ["acme"] and verify(marked, key=key, registry=registry).licensee == "acme"
    # The key went nowhere but the task: not the registry, the metadata nor the output.
    stored = b"".join(path.read_bytes() for path in (tmp_path / "store").rglob("*") if path.is_file())
    assert key not in stored and key.hex() not in returned + json.dumps(out.metadata)


def test_the_watermark_task_refuses_to_learn_a_watermark_without_data(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tinymlops.watermark")
    from tinymlops_pipelines.components import watermark
    from tinymlops_pipelines.errors import parse_reported_error

    (tmp_path / "base").write_bytes(b"onnx bytes")
    with pytest.raises(errors.CalibrationDataMissingError):
        watermark.python_func(base=dsl.Model(uri=str(tmp_path / "base"), metadata={}),
                              data=dsl.Dataset(uri=str(tmp_path / "d"), metadata={"present": False}),
                              licensee="acme", key_path=str(tmp_path / "key"), store_root=str(tmp_path),
                              watermarked=dsl.Model(uri=str(tmp_path / "out"), metadata={}))
    reported = parse_reported_error(capsys.readouterr().out)
    assert reported is not None and "give the EdgeModel spec.data" in reported[1]


# --- the owner key from its Secret ----------------------------------------------------------------


class FakeCore:
    def __init__(self, data: dict[str, str] | None) -> None:
        self.data = data

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        if self.data is None:
            raise ApiException(status=404, reason="Not Found")
        return SimpleNamespace(data=self.data)


def test_the_owner_key_is_read_from_its_secret_into_a_private_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops_operator import secrets

    key = bytes(range(32))
    monkeypatch.setattr(secrets, "_core_api", lambda: FakeCore({"watermark-key": base64.b64encode(key).decode()}))
    path = secrets.watermark_key("ns", "owner-key", "watermark-key", keys_dir=tmp_path)
    assert path.read_bytes() == key and path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("data", "message"), [
    (None, "Secret ns/owner-key does not exist"),
    ({}, "has no key 'watermark-key'"),
    ({"watermark-key": "not base64!"}, "watermark-key is not base64"),
    ({"watermark-key": base64.b64encode(b"short").decode()}, "holds 5 bytes; a watermark key needs at least 32"),
])
def test_an_unusable_owner_key_is_named_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     data: dict[str, str] | None, message: str) -> None:
    from tinymlops_operator import secrets

    monkeypatch.setattr(secrets, "_core_api", lambda: FakeCore(data))
    with pytest.raises(errors.WatermarkKeyError, match=message) as caught:
        secrets.watermark_key("ns", "owner-key", "watermark-key", keys_dir=tmp_path)
    assert "spec.watermark.keySecretRef" in str(caught.value) and not list(tmp_path.iterdir())
    failed = model_logic.failed_status({}, caught.value, 1, 1000.0)
    assert failed["phase"] == "Retrying" and failed["conditions"][0]["reason"] == "WatermarkKeyUnavailable"
    assert json.dumps(failed).count(base64.b64encode(b"short").decode()) == 0


def test_a_watermark_that_cannot_be_embedded_waits_for_a_new_spec() -> None:
    conflict = errors.RegistryConflictError("licensee 'acme' already has a watermark in base model 1f04…")
    failed = model_logic.failed_status({}, conflict, 1, 1000.0)
    assert failed["phase"] == "Failed" and failed["conditions"][0]["reason"] == "WatermarkFailed"
