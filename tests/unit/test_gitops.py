"""examples/gitops: the Argo CD health checks, run in a real Lua 5.1 (the language of Argo CD's gopher-lua) on
statuses the operator's own logic produces, so a change in the status shape breaks here before it breaks Argo
CD; and the Applications, the argocd-cm patch and the fleet manifests they sync."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.samples import MENU
from tinymlops import API_GROUP, errors
from tinymlops.kube.schema import load_crds
from tinymlops.merge_patch import merge_patch
from tinymlops_operator.logic import analysis, rollout
from tinymlops_operator.logic import devicefleet as fleet_logic
from tinymlops_operator.logic import edgemodel as model_logic
from tinymlops_operator.logic.strategy import Strategy, parse_strategy

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (test extra) runs the Lua health checks")

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "examples" / "gitops"
HEALTH = GITOPS / "health"
FLEET = GITOPS / "fleet"
REGISTRY = load_crds(ROOT / "crds")
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
# Argo CD runs custom health checks with the base, package and table libraries and a reduced os (util/lua/lua.go,
# unless useOpenLibs is set). Everything else goes, stricter than Argo CD on os: the scripts need none of it.
UNAVAILABLE = ("string", "math", "io", "os", "debug", "coroutine", "python")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- running a health check as Argo CD does -----------------------------------------------------------------

def sandbox() -> Any:
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    # Without the string library Argo CD's strings have no methods either ("x"):find fails there.
    runtime.execute("getmetatable('').__index = nil")
    names = runtime.table_from(list(UNAVAILABLE))
    runtime.execute("local names = ...; for _, n in ipairs(names) do _G[n] = nil; package.loaded[n] = nil end", names)
    return runtime


def to_lua(runtime: Any, value: Any) -> Any:
    """Argo CD's decodeValue: maps to tables, lists to 1-based tables, null to nil (the key is absent)."""
    if isinstance(value, Mapping):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[str(key)] = to_lua(runtime, item)
        return table
    if isinstance(value, list | tuple):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(runtime, item)
        return table
    return value


def health(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, message) the script for obj's kind returns, with obj as the global `obj`."""
    script = (HEALTH / f"{API_GROUP}_{obj['kind']}.lua").read_text()
    runtime = sandbox()
    runtime.globals().obj = to_lua(runtime, obj)
    hs = runtime.execute(script)
    assert lua51.lua_type(hs) == "table", "a health check returns a table"
    result = dict(hs.items())
    assert set(result) == {"status", "message"} and all(isinstance(v, str) for v in result.values()), result
    assert result["status"] in ARGO_HEALTH
    return result["status"], result["message"]


def resource(kind: str, status: Mapping[str, Any] | None, *, generation: int = 2) -> dict[str, Any]:
    """The fleet manifest of `kind` as it lives in the cluster, with `status` (validated against our CRD)."""
    (manifest,) = [doc for path in sorted(FLEET.glob("*.yaml")) for doc in documents(path) if doc["kind"] == kind]
    obj = {**manifest, "metadata": {**manifest["metadata"], "generation": generation, "uid": "u-1"}}
    if status is not None:
        obj["status"] = merge_patch({}, status)  # what the API server keeps of the patch
        assert REGISTRY.validate(obj) == [], f"the sample status does not fit the {kind} CRD"
    return obj


def phases(kind: str) -> set[str]:
    """The phases the CRD allows in status.phase."""
    crds = [documents(path)[0] for path in (ROOT / "crds").glob("*.yaml")]
    (crd,) = [c for c in crds if c["spec"]["names"]["kind"] == kind]
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return set(status["properties"]["phase"]["enum"])


# --- EdgeModel statuses from the operator's logic ------------------------------------------------------------

GENERATION = 2
NOTHING_ACCEPTED = {**MENU, "variants": [{**v, "accepted": False} for v in MENU["variants"]]}


def model_statuses() -> dict[str, dict[str, Any]]:
    (model,) = documents(FLEET / "edgemodel.yaml")
    request = model_logic.build_request(model["spec"], namespace="default", name="digits", generation=GENERATION,
                                        previous_menu_version=2)
    building = model_logic.building_status({}, request)
    try:
        model_logic.build_request({"variants": {}}, namespace="default", name="digits", generation=GENERATION,
                                  previous_menu_version=2)
        raise AssertionError("a spec without source must be refused")
    except errors.SpecError as exc:
        invalid = exc
    return {
        "Building": building,
        "Ready": model_logic.ready_status(building, MENU, "c" * 64, GENERATION),
        "NoAcceptedVariant": model_logic.ready_status(building, NOTHING_ACCEPTED, "c" * 64, GENERATION),
        "InvalidSpec": model_logic.failed_status(building, invalid, GENERATION, 1000.0),
        "Retrying": model_logic.failed_status(building, RuntimeError("artifact store unreachable"), GENERATION,
                                              1000.0),
        # In the CRD's enum for a status written before the first build; the operator itself goes to Building.
        "Pending": {"phase": "Pending", "observedGeneration": GENERATION},
    }


MODEL = model_statuses()


@pytest.mark.parametrize(("sample", "expected", "words"), [
    ("Building", "Progressing", ["variants pipeline running for store://sources/digits/model.onnx",
                                 "menu version 3"]),
    ("Ready", "Healthy", ["menu v3: 1/2 variants accepted (fp32)"]),
    ("NoAcceptedVariant", "Degraded", ["NoAcceptedVariant: menu v3: no variant met the accuracy budget"]),
    ("InvalidSpec", "Degraded", ["InvalidSpec: spec.source.uri is required"]),
    ("Retrying", "Progressing", ["retrying after attempt 1", "PipelineFailed: artifact store unreachable"]),
    ("Pending", "Progressing", ["Pending"]),
])
def test_edgemodel_health_follows_its_phase(sample: str, expected: str, words: list[str]) -> None:
    status, message = health(resource("EdgeModel", MODEL[sample]))
    assert status == expected
    for word in words:
        assert word in message


def test_edgemodel_samples_cover_every_phase_of_the_crd() -> None:
    assert {s["phase"] for s in MODEL.values()} == phases("EdgeModel")


def test_a_failed_edgemodel_names_the_condition_message() -> None:
    status = MODEL["InvalidSpec"]
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert status["phase"] == "Failed"
    assert health(resource("EdgeModel", status)) == ("Degraded", f"{ready['reason']}: {ready['message']}")


def test_edgemodel_retries_count_their_attempts() -> None:
    again = model_logic.failed_status(MODEL["Retrying"], RuntimeError("artifact store unreachable"), GENERATION,
                                      1005.0)
    assert health(resource("EdgeModel", again))[1].startswith("retrying after attempt 2: ")


def test_a_ready_edgemodel_of_an_older_spec_is_progressing() -> None:
    # A commit changed the spec (generation 3); the Ready status still describes generation 2.
    status, message = health(resource("EdgeModel", MODEL["Ready"], generation=GENERATION + 1))
    assert (status, message) == ("Progressing", "waiting for the operator to observe generation 3 "
                                                "(status is for generation 2)")


# --- DeviceFleet statuses from the operator's logic ----------------------------------------------------------

V1 = rollout.Target("digits", "1" * 64, 1, {"objective": "accuracy"})
V2 = rollout.Target("digits", "2" * 64, 2, {"objective": "accuracy"})
ASSIGNED = fleet_logic.Assignment(by_variant={"fp32": 3}, devices=3)
T0 = 1000.0


def fleet_strategy() -> Strategy:
    (fleet,) = documents(FLEET / "devicefleet.yaml")
    return parse_strategy(fleet["spec"])


STRATEGY = fleet_strategy()  # 10% / pause 10s / 50% / pause 10s / 100%, analysis every 5 s
UNTIL_PROMOTED = parse_strategy({"strategy": {"canary": {"steps": [{"setWeight": 25}, {"pause": {}},
                                                                   {"setWeight": 100}]}}})


def run(verdict: str, at: float) -> analysis.AnalysisRun:
    spec = STRATEGY.analysis
    assert spec is not None
    texts = analysis.queries(spec, namespace="default", fleet="digits-fleet", canary=2, stable=1)
    # The latency check reads histogram series per revision and device class: the same on both sides here.
    latency = [({"revision": str(revision), "device_class": "rpi4", "le": le}, count)
               for revision in (2, 1) for le, count in (("0.005", 80.0), ("0.01", 200.0), ("+Inf", 200.0))]
    values = {"error-rate": 0.5 if verdict == "Failed" else 0.01, "health-check-failures": 0.0,
              "latency-p95-ratio": latency, "devices-reporting": 0.0 if verdict == "Inconclusive" else 10.0}
    result = analysis.evaluate(spec, texts, values, at=at, canary=2, stable=1)
    assert result.verdict == verdict
    return result


def summary(running: int, *, failed: int = 0, revision: int = 1) -> dict[str, Any]:
    """The gateway's fleet summary with `running` devices on `revision`."""
    return {"converged": running, "failed": failed, "by_phase": {"Running": running, "Failed": failed},
            "by_revision": {str(revision): {"Running": running}},
            "running_by_revision": {str(revision): {"fp32": running}}, "last_converged_at": T0 + 2}


def status_of(decision: rollout.Decision, *, strategy: Strategy = STRATEGY, running: int = 3, failed: int = 0,
              assignment: fleet_logic.Assignment = ASSIGNED) -> dict[str, Any]:
    return fleet_logic.fleet_status(
        {}, generation=GENERATION, assignment=assignment, menu_version=1, plan_sha256="d" * 64,
        plan_published_at=T0, summary=summary(running, failed=failed), decision=decision, strategy=strategy)


def decide(state: rollout.RolloutState, now: float, *, strategy: Strategy = STRATEGY,
           target: rollout.Target = V2, **kwargs: Any) -> rollout.Decision:
    return rollout.decide(state, strategy=strategy, target=target, now=now, **kwargs)


def fleet_statuses() -> dict[str, dict[str, Any]]:
    first = decide(rollout.RolloutState(), T0, target=V1)
    canary = decide(first.state, T0 + 100)  # 10%, then the 10 s pause of step 1 starts
    at_50 = decide(canary.state, T0 + 111, run=run("Passed", T0 + 111))  # the pause passed: 50%, step 3
    healthy = status_of(first)
    try:
        parse_strategy({"strategy": {"canary": {"steps": [{"setWeight": 50}, {"setWeight": 20}]}}})
        raise AssertionError("shrinking weights must be refused")
    except errors.SpecError as exc:
        invalid = fleet_logic.invalid_status(healthy, generation=GENERATION, message=str(exc))
    waiting = fleet_logic.waiting_status(
        {}, generation=GENERATION, reason="ModelNotReady",
        message="spec.modelRef.name: EdgeModel default/digits has no published menu yet")
    promote_wait = decide(decide(rollout.RolloutState(), T0, target=V1, strategy=UNTIL_PROMOTED).state, T0 + 100,
                          strategy=UNTIL_PROMOTED)
    return {
        "ModelNotReady": waiting,
        "NoDevices": status_of(first, assignment=fleet_logic.Assignment(by_variant={}, devices=0), running=0),
        "Healthy": healthy,
        "Converging": status_of(first, running=1),
        "CanaryPausing": status_of(canary),
        "PausedBySpec": status_of(decide(at_50.state, T0 + 112, commands=rollout.Commands(paused=True))),
        "PausedUntilPromoted": status_of(promote_wait, strategy=UNTIL_PROMOTED),
        "AnalysisInconclusive": status_of(decide(at_50.state, T0 + 122, run=run("Inconclusive", T0 + 122))),
        "RolledBack": status_of(decide(canary.state, T0 + 105, run=run("Failed", T0 + 105))),
        # No analysis run for longer than progressDeadlineSeconds (300): the operator keeps the phase Progressing.
        "DeadlineExceeded": status_of(decide(canary.state, T0 + 500)),
        "DevicesFailing": status_of(first, running=2, failed=1),
        # The operator patches only phase, observedGeneration and conditions over what the status held.
        "InvalidSpec": {**healthy, **invalid},
    }


FLEET_STATUS = fleet_statuses()


@pytest.mark.parametrize(("sample", "expected", "message"), [
    ("ModelNotReady", "Progressing",
     "ModelNotReady: spec.modelRef.name: EdgeModel default/digits has no published menu yet"),
    ("NoDevices", "Progressing", "NoDevices: no device matches spec.selector"),
    ("Healthy", "Healthy", "3/3 devices run stable revision 1"),
    ("Converging", "Progressing", "1/3 devices run stable revision 1"),
    ("CanaryPausing", "Progressing", "canary revision 2 at 10% (step 1); Pausing: step 1: pause 10s, 10s left"),
    ("PausedBySpec", "Suspended",
     "canary revision 2 at 50% (step 3); PausedBySpec: spec.paused is true; set it to false to resume"),
    ("PausedUntilPromoted", "Suspended", "canary revision 2 at 25% (step 1); PausedUntilPromoted: step 1: paused "
                                         "until promoted (annotate tinymlops.io/promote=step)"),
    ("AnalysisInconclusive", "Suspended", "canary revision 2 at 50% (step 3); AnalysisInconclusive: step 3: "
                                          "analysis inconclusive (0 canary devices reporting, fewer than "
                                          "minDevicesReporting 3); waiting"),
    ("DeadlineExceeded", "Degraded", "ProgressDeadlineExceeded: step 1 made no progress for 300s "
                                     "(progressDeadlineSeconds)"),
    ("DevicesFailing", "Degraded", "DevicesFailing: 2/3 converged, 1 failed, 0 unassignable"),
])
def test_devicefleet_health_follows_its_phase(sample: str, expected: str, message: str) -> None:
    assert health(resource("DeviceFleet", FLEET_STATUS[sample])) == (expected, message)


def test_devicefleet_samples_cover_every_phase_of_the_crd() -> None:
    assert {s["phase"] for s in FLEET_STATUS.values()} == phases("DeviceFleet")


def test_a_rolled_back_fleet_is_degraded_naming_the_abort_and_its_reason() -> None:
    status = FLEET_STATUS["RolledBack"]
    assert status["phase"] == "Degraded" and status.get("canaryRevision") is None
    health_status, message = health(resource("DeviceFleet", status))
    assert health_status == "Degraded"
    assert message.startswith("RolloutAborted: analysis failed: error-rate 0.5 > 0.05")
    assert message.endswith("; running stable revision 1")


def test_an_invalid_fleet_spec_is_degraded_naming_the_field() -> None:
    health_status, message = health(resource("DeviceFleet", FLEET_STATUS["InvalidSpec"]))
    assert health_status == "Degraded"
    assert message.startswith("InvalidSpec: spec.strategy.canary.steps[1].setWeight: 20 is below the 50")


def test_a_paused_fleet_of_an_older_spec_is_progressing() -> None:
    # Resuming in git (spec.paused: false) makes generation 3; until the operator acts the status says Paused.
    obj = resource("DeviceFleet", FLEET_STATUS["PausedBySpec"], generation=GENERATION + 1)
    assert health(obj) == ("Progressing", "waiting for the operator to observe generation 3 "
                                          "(status is for generation 2)")


# --- what Argo CD may hand the scripts --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["EdgeModel", "DeviceFleet"])
@pytest.mark.parametrize("shape", [
    lambda obj: obj,  # just created: no status yet
    lambda obj: {**obj, "status": {}},
    lambda obj: {**obj, "status": {"phase": "Ready"}},  # no observedGeneration, no conditions
    lambda obj: {**obj, "status": {"observedGeneration": 2}},
    lambda obj: {**obj, "metadata": {}},
    lambda obj: {"kind": obj["kind"]},
], ids=["no-status", "empty-status", "phase-only", "generation-only", "no-generation", "bare"])
def test_health_checks_never_fail_on_partial_objects(kind: str, shape: Callable[[dict[str, Any]], Any]) -> None:
    status, message = health(shape(resource(kind, None)))
    assert status == "Progressing" and message


@pytest.mark.parametrize("kind", ["EdgeModel", "DeviceFleet"])
def test_an_unknown_phase_is_progressing_and_named(kind: str) -> None:
    obj = {**resource(kind, None), "status": {"phase": "Rebalancing", "observedGeneration": GENERATION,
                                              "conditions": [{"type": "Ready", "status": "Odd"}]}}
    assert health(obj) == ("Progressing", "phase Rebalancing is unknown to this health check")


@pytest.mark.parametrize("kind", ["EdgeModel", "DeviceFleet"])
def test_a_generation_given_as_a_string_is_not_stale(kind: str) -> None:
    # Argo CD hands numbers it kept as json.Number to Lua as strings.
    status = MODEL["Ready"] if kind == "EdgeModel" else FLEET_STATUS["Healthy"]
    obj = resource(kind, status)
    obj["metadata"]["generation"] = str(GENERATION)
    assert health(obj)[0] == "Healthy"


def test_the_sandbox_is_as_bare_as_argo_cds() -> None:
    runtime = sandbox()
    assert runtime.execute("return string == nil and os == nil and io == nil and math == nil") is True
    assert runtime.execute("return (pcall(function() return ('x'):upper() end))") is False


# --- manifests ------------------------------------------------------------------------------------------

def test_argocd_cm_installs_the_health_scripts_byte_for_byte() -> None:
    (patch,) = documents(GITOPS / "argocd-cm.yaml")
    # A strategic-merge patch of the existing argocd-cm: only data, so labels and other settings stay.
    assert set(patch) == {"apiVersion", "kind", "metadata", "data"}
    assert (patch["apiVersion"], patch["kind"], patch["metadata"]) == (
        "v1", "ConfigMap", {"name": "argocd-cm", "namespace": "argocd"})
    scripts = {f"resource.customizations.health.{path.stem}": path.read_text() for path in HEALTH.glob("*.lua")}
    assert sorted(scripts) == [f"resource.customizations.health.{API_GROUP}_{kind}" for kind in
                               ("DeviceFleet", "EdgeModel")]
    assert patch["data"] == scripts
    assert "kubectl -n argocd patch configmap argocd-cm --patch-file examples/gitops/argocd-cm.yaml" in (
        GITOPS / "argocd-cm.yaml").read_text()


def applications() -> dict[str, dict[str, Any]]:
    apps = {}
    for path in sorted(GITOPS.glob("application-*.yaml")):
        (app,) = documents(path)
        assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application"), path.name
        apps[path.name] = app
    assert sorted(apps) == ["application-fleet.yaml", "application-tinymlops.yaml"]
    return apps


@pytest.mark.parametrize("name", ["application-tinymlops.yaml", "application-fleet.yaml"])
def test_applications_sync_paths_of_this_repository(name: str) -> None:
    spec = applications()[name]["spec"]
    source = spec["source"]
    assert source["repoURL"] == "https://github.com/tinymlops/tinymlops.git" and source["targetRevision"] == "main"
    assert (ROOT / source["path"]).is_dir(), f"{source['path']} does not exist in the repository"
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]
    assert spec["destination"]["server"] == "https://kubernetes.default.svc"


def test_the_platform_application_installs_the_chart_with_valid_values() -> None:
    spec = applications()["application-tinymlops.yaml"]["spec"]
    assert spec["source"]["path"] == "helm/tinymlops" and (ROOT / "helm/tinymlops/Chart.yaml").is_file()
    assert spec["destination"]["namespace"] == "tinymlops"
    assert spec["syncPolicy"]["syncOptions"] == ["CreateNamespace=true", "ServerSideApply=true"]
    values = spec["source"]["helm"]["valuesObject"]
    assert values["operator"]["prometheusURL"].startswith("http")
    jsonschema.validate(values, json.loads((ROOT / "helm/tinymlops/values.schema.json").read_text()))


def test_the_fleet_application_syncs_the_fleet_directory() -> None:
    spec = applications()["application-fleet.yaml"]["spec"]
    assert spec["source"]["path"] == "examples/gitops/fleet"
    assert "ignoreDifferences" not in spec  # Argo CD never diffs status


def test_fleet_manifests_pass_our_crds_and_the_model_comes_first() -> None:
    waves = {}
    for path in sorted(FLEET.glob("*.yaml")):
        for doc in documents(path):
            assert REGISTRY.validate(doc) == [], f"{path.name}: {doc['kind']}"
            annotations = doc["metadata"].get("annotations") or {}
            # Argo CD reads the wave as a string; one-shot commands must never sit in git.
            assert not [key for key in annotations if key.startswith(f"{API_GROUP}/")], path.name
            waves[doc["kind"]] = int(annotations["argocd.argoproj.io/sync-wave"])
    assert waves["EdgeModel"] < waves["DeviceFleet"]
    (fleet,) = documents(FLEET / "devicefleet.yaml")
    (model,) = documents(FLEET / "edgemodel.yaml")
    assert fleet["spec"]["modelRef"]["name"] == model["metadata"]["name"]


@pytest.mark.parametrize(("copy", "original"), [("edgemodel.yaml", "edgemodel-digits.yaml"),
                                                ("devicefleet.yaml", "devicefleet-digits.yaml")])
def test_fleet_manifests_are_the_examples_with_waves(copy: str, original: str) -> None:
    (ours,) = documents(FLEET / copy)
    (theirs,) = documents(ROOT / "examples" / original)
    annotations = ours["metadata"].pop("annotations")
    assert set(annotations) == {"argocd.argoproj.io/sync-wave"}
    assert ours == theirs
