"""The CRDs in crds/: structural, documented, and in step with the operator that writes their status."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.samples import MENU
from tinymlops import API_GROUP, API_VERSION
from tinymlops.kube.schema import load_crds, structural_problems
from tinymlops.merge_patch import merge_patch
from tinymlops_operator.logic import analysis, rollout
from tinymlops_operator.logic import devicefleet as fleet_logic
from tinymlops_operator.logic import edgemodel as model_logic
from tinymlops_operator.logic.strategy import parse_strategy

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").rglob("*.yaml"))
OURS = [path for path in CRD_FILES if path.parent == ROOT / "crds"]
REGISTRY = load_crds(ROOT / "crds")
API = f"{API_GROUP}/{API_VERSION}"


def crd(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def versions(path: Path) -> list[dict[str, Any]]:
    return list(crd(path)["spec"]["versions"])


def test_every_crd_file_is_found() -> None:
    names = {path.name for path in CRD_FILES}
    assert names == {
        "edgemodels.tinymlops.io.yaml",
        "devicefleets.tinymlops.io.yaml",
        "licenses.tinymlops.io.yaml",
        "devices.kubeedge.io_devices.yaml",
        "devices.kubeedge.io_devicemodels.yaml",
        "clusterkopfpeerings.kopf.dev.yaml",  # kopf's, for peering among operator replicas
        "federatedtrainings.tinymlops.io.yaml",
    }
    assert len(REGISTRY.crds) == len(names)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_structural(path: Path) -> None:
    for version in versions(path):
        assert structural_problems(version["schema"]["openAPIV3Schema"]) == [], version["name"]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_file_name_is_the_crd_name(path: Path) -> None:
    document = crd(path)
    spec = document["spec"]
    assert document["apiVersion"] == "apiextensions.k8s.io/v1"
    assert document["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    if spec["group"] == "tinymlops.io":  # ours: the plural is the kind's, as tests that look objects up assume
        assert spec["names"]["plural"] == f"{spec['names']['kind'].lower()}s"
    assert path.name.endswith(".yaml") and (spec["group"] in path.name)
    assert [v["name"] for v in spec["versions"] if v["storage"]] and sum(v["storage"] for v in spec["versions"]) == 1


@pytest.mark.parametrize("path", OURS, ids=lambda p: p.name)
def test_our_crds_follow_the_contract(path: Path) -> None:
    spec = crd(path)["spec"]
    assert spec["group"] == API_GROUP and spec["scope"] == "Namespaced"
    assert [v["name"] for v in spec["versions"]] == [API_VERSION]
    assert spec["names"]["categories"] == ["tinymlops"]
    assert spec["names"]["shortNames"]
    (version,) = spec["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"


def walk_fields(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every declared field below `node`, as (path, schema)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name, sub in (node.get("properties") or {}).items():
        found.append((f"{path}.{name}", sub))
        found.extend(walk_fields(sub, f"{path}.{name}"))
    if isinstance(node.get("items"), dict):
        found.extend(walk_fields(node["items"], f"{path}[]"))
    if isinstance(node.get("additionalProperties"), dict):
        found.extend(walk_fields(node["additionalProperties"], f"{path}{{}}"))
    return found


@pytest.mark.parametrize("path", OURS, ids=lambda p: p.name)
def test_every_spec_and_status_field_is_described(path: Path) -> None:
    schema = versions(path)[0]["schema"]["openAPIV3Schema"]
    fields = [(p, s) for p, s in walk_fields(schema) if p.startswith((".spec", ".status"))]
    assert len(fields) > 20
    undescribed = [p for p, s in fields if not str(s.get("description", "")).strip()]
    assert undescribed == []


def resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    """The schema a printer-column JSONPath points at (None when it leaves the schema)."""
    tokens = re.findall(r"\.([A-Za-z0-9_]+)|(\[[^\]]*\])", json_path)
    assert "".join(f".{f}" if f else b for f, b in tokens) == json_path, f"cannot parse {json_path}"
    node = schema
    for field, bracket in tokens:
        if node is schema["properties"]["metadata"]:
            return {"type": "string", "format": "date-time"} if field == "creationTimestamp" else None
        if bracket:
            if node.get("type") != "array":
                return None
            node = node["items"]
        else:
            child = (node.get("properties") or {}).get(field)
            if child is None:
                return None
            node = child
    return node


COLUMN_TYPES = {"string": {"string"}, "integer": {"integer"}, "number": {"number", "integer"}, "date": {"string"}}


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_printer_columns_point_at_schema_fields(path: Path) -> None:
    for version in versions(path):
        schema = version["schema"]["openAPIV3Schema"]
        for column in version.get("additionalPrinterColumns", []):
            target = resolve(schema, column["jsonPath"])
            assert target is not None, f"{column['name']}: {column['jsonPath']} is not in the schema"
            assert target.get("type") in COLUMN_TYPES[column["type"]], column["name"]


def test_printer_column_resolver_rejects_unknown_fields() -> None:
    schema = versions(ROOT / "crds" / "edgemodels.tinymlops.io.yaml")[0]["schema"]["openAPIV3Schema"]
    assert resolve(schema, ".status.nope") is None
    assert resolve(schema, ".spec.source[*].uri") is None
    assert resolve(schema, '.status.conditions[?(@.type=="Ready")].status') == schema["properties"]["status"][
        "properties"
    ]["conditions"]["items"]["properties"]["status"]


def test_defaults_fill_a_minimal_edgemodel() -> None:
    minimal = {"apiVersion": API, "kind": "EdgeModel", "metadata": {"name": "m"},
               "spec": {"source": {"uri": "store://m.onnx"}, "signingKeySecret": {"name": "keys"}}}
    spec = REGISTRY.apply_defaults(minimal)["spec"]
    assert spec["variants"] == {"precisions": ["fp32", "int8"]}
    assert spec["accuracyBudget"] == 0.01
    assert spec["signingKeySecret"] == {"name": "keys", "key": "signing-key.pem"}
    assert REGISTRY.validate(minimal) == []
    assert "variants" not in minimal["spec"], "apply_defaults must not change its argument"


def test_defaults_match_the_operator() -> None:
    spec = REGISTRY.apply_defaults(
        {"apiVersion": API, "kind": "EdgeModel", "spec": {"source": {"uri": "store://m.onnx"}}}
    )["spec"]
    assert tuple(spec["variants"]["precisions"]) == model_logic.DEFAULT_PRECISIONS
    assert spec["accuracyBudget"] == model_logic.DEFAULT_ACCURACY_BUDGET


def test_defaults_fill_a_minimal_devicefleet() -> None:
    minimal = {"apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": "f"},
               "spec": {"modelRef": {"name": "m"}, "selector": {"matchLabels": {"a": "b"}}, "policy": None}}
    spec = REGISTRY.apply_defaults(minimal)["spec"]
    assert spec["deviceKind"] == "Device"
    # A null policy is pruned, then defaulted, as the server does.
    assert spec["policy"] == {"objective": "accuracy", "lowBatteryPct": 20,
                              "telemetry": {"upload": "any", "consentRequired": False}}
    assert REGISTRY.validate(minimal) == []


def with_status(kind: str, status: dict[str, Any]) -> dict[str, Any]:
    spec = {"source": {"uri": "store://m.onnx"}} if kind == "EdgeModel" else {
        "modelRef": {"name": "m"}, "selector": {"matchLabels": {"a": "b"}}}
    return {"apiVersion": API, "kind": kind, "metadata": {"name": "x"}, "spec": spec, "status": status}


def test_operator_edgemodel_statuses_fit_the_schema() -> None:
    request = model_logic.build_request(
        {"source": {"uri": "store://m.onnx"}}, namespace="ns", name="m", generation=2, previous_menu_version=2
    )
    building = model_logic.building_status({}, request)
    ready = model_logic.ready_status(building, MENU, "c" * 64, 2,
                                     run={"id": "0b1c", "url": "http://kfp.example/#/runs/details/0b1c"})
    retrying = model_logic.failed_status(ready, RuntimeError("gateway down"), 3, 1000.0)
    assert ready["variants"][1]["accuracy"] is None  # nullable in the schema, not pruned
    for status in (building, ready, retrying):
        held = merge_patch({}, status)  # as the server holds it after the merge patch
        assert REGISTRY.validate(with_status("EdgeModel", held)) == [], status["phase"]


def test_operator_devicefleet_statuses_fit_the_schema() -> None:
    assignment = fleet_logic.Assignment(by_variant={"fp32": 2}, devices=3, problems={"d3": "no variant fits"})
    waiting = fleet_logic.waiting_status({}, generation=1, reason="ModelNotReady", message="EdgeModel m is building")
    strategy = parse_strategy({"strategy": {"canary": {
        "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}],
        "analysis": {"metrics": [{"name": "error-rate", "max": 0.05}]}}}})
    first = rollout.decide(rollout.RolloutState(), strategy=strategy, target=rollout.Target("m", "1" * 64, 1, {}),
                           now=1000.0)
    canary = rollout.decide(first.state, strategy=strategy, target=rollout.Target("m", "2" * 64, 2, {}), now=1001.0)
    texts = analysis.queries(strategy.analysis, namespace="ns", fleet="f", canary=2, stable=1)
    failed = rollout.decide(canary.state, strategy=strategy, target=rollout.Target("m", "2" * 64, 2, {}), now=1002.0,
                            run=analysis.evaluate(strategy.analysis, texts, {"error-rate": 0.5,
                                                                             "devices-reporting": 4}, at=1002.0))
    summary = {"converged": 2, "failed": 0, "by_phase": {"Running": 2}, "by_revision": {"1": {"Running": 2}},
               "running_by_revision": {"1": {"fp32": 2}}}
    statuses = [waiting] + [
        fleet_logic.fleet_status(waiting, generation=1, assignment=assignment, menu_version=3, plan_sha256="d" * 64,
                                 plan_published_at=1000.0, summary=summary, decision=decision, strategy=strategy)
        for decision in (first, canary, failed)
    ]
    assert [s["phase"] for s in statuses] == ["Pending", "Degraded", "Paused", "Degraded"]
    for status in statuses:
        # A merge patch deletes the keys set to None, nested ones too; the rest must fit the schema.
        kept = merge_patch({}, status)
        assert REGISTRY.validate(with_status("DeviceFleet", kept)) == [], status["phase"]


def test_a_devicefleet_status_in_the_earlier_layout_is_kept_until_a_reconcile_moves_it() -> None:
    """Operators before the move under status.rollout wrote the analysis and history at the top of status: the
    schema still declares them (deprecated), or the server would prune them before logic/upgrade.py moves them."""
    strategy = parse_strategy({"strategy": {"canary": {
        "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}],
        "analysis": {"metrics": [{"name": "error-rate", "max": 0.05}]}}}})
    texts = analysis.queries(strategy.analysis, namespace="ns", fleet="f", canary=2, stable=1)
    v1, v2 = rollout.Target("m", "1" * 64, 1, {}), rollout.Target("m", "2" * 64, 2, {})
    canary = rollout.decide(rollout.decide(rollout.RolloutState(), strategy=strategy, target=v1, now=1000.0).state,
                            strategy=strategy, target=v2, now=1001.0)
    failed = rollout.decide(canary.state, strategy=strategy, target=v2, now=1002.0,
                            run=analysis.evaluate(strategy.analysis, texts, {"error-rate": 0.5,
                                                                             "devices-reporting": 4}, at=1002.0))
    status = merge_patch({}, failed.state.as_status())
    rollout_fields = {k: v for k, v in status["rollout"].items() if k not in ("analysis", "history")}
    earlier = {**status, "analysis": status["rollout"]["analysis"], "history": status["rollout"]["history"],
               "rollout": rollout_fields}
    assert REGISTRY.validate(with_status("DeviceFleet", earlier)) == []
    described = crd(ROOT / "crds" / "devicefleets.tinymlops.io.yaml")["spec"]["versions"][0]["schema"]
    for key in ("analysis", "history"):
        assert described["openAPIV3Schema"]["properties"]["status"]["properties"][key]["description"].startswith(
            "Deprecated")


def test_status_fields_the_schema_does_not_declare_are_reported() -> None:
    # A real API server would silently prune them: the operator would lose what it wrote.
    errors = REGISTRY.validate(with_status("EdgeModel", {"phase": "Ready", "menuVersoin": 3}))
    assert errors == ["status.menuVersoin: unknown field"]


def test_the_output_policy_is_validated_as_the_agent_reads_it() -> None:
    from tinymlops.protection.policy import OutputPolicy

    def fleet(output_policy: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": "f"},
                "spec": {"modelRef": {"name": "m"}, "selector": {"matchLabels": {"a": "b"}},
                         "policy": {"protection": {"outputPolicy": output_policy}}}}

    good = REGISTRY.apply_defaults(fleet({"mode": "rounded"}))
    assert REGISTRY.validate(good) == []
    assert OutputPolicy.from_policy(good["spec"]["policy"]) == OutputPolicy(mode="rounded", decimals=2, apply_to="all")
    for bad in ({"mode": "noise"}, {"decimals": 7}, {"applyTo": "some"}):
        assert REGISTRY.validate(fleet(bad)) != []


def test_the_personalisation_policy_is_validated_as_the_agent_reads_it() -> None:
    from tinymlops.errors import SpecError
    from tinymlops.personalise import PersonalisationPolicy

    def fleet(section: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": API, "kind": "DeviceFleet", "metadata": {"name": "f"},
                "spec": {"modelRef": {"name": "m"}, "selector": {"matchLabels": {"a": "b"}},
                         "policy": {"personalisation": section}}}

    good = REGISTRY.apply_defaults(fleet({"enabled": True}))
    assert REGISTRY.validate(good) == []
    # The schema's defaults are the agent's: a fleet that only enables it gets what a device assumes.
    assert PersonalisationPolicy.from_policy(good["spec"]["policy"]) == PersonalisationPolicy(enabled=True)
    for bad in ({"enabled": "yes"}, {"minImprovement": 2}, {"validationFraction": 1}, {"minSamples": 2},
                {"l2": -1}, {"steps": 0}):
        assert REGISTRY.validate(fleet(bad)) != [], bad
        with pytest.raises(SpecError):
            PersonalisationPolicy.from_policy({"personalisation": bad})
