"""The operator's pure decisions, called directly."""

import dataclasses
from typing import Any

import pytest

from tinymlops import errors
from tinymlops.devices import LABEL_RAM_MB, DeviceCapabilities
from tinymlops.merge_patch import merge_patch
from tinymlops_operator.logic import devicefleet, edgemodel, rollout
from tinymlops_operator.logic.conditions import condition_status, set_condition
from tinymlops_operator.logic.strategy import Strategy


def variant(vid: str, size: int, accuracy: float, accepted: bool = True) -> dict[str, Any]:
    return {
        "id": vid, "sha256": vid * 4, "size_bytes": size, "format": "onnx", "precision": vid, "target": "any",
        "metrics": {"accuracy": accuracy, "latency_ms_p50": 0.1}, "requirements": {"arch": ["any"]},
        "accepted": accepted, "reason": "" if accepted else "accuracy drop 0.05 exceeds budget 0.01",
    }


MENU = {
    "version": 3,
    "base": {"sha256": "b" * 64},
    "variants": [variant("fp32", 200_000, 0.97), variant("int8", 60_000, 0.965)],
}


def device_labels(arch: str, storage_kb: int) -> dict[str, str]:
    caps = DeviceCapabilities(name="d", arch=arch, device_class="c", ram_mb=512, model_storage_kb=storage_kb)
    return {**caps.labels(), "app": "demo"}


def test_set_condition_keeps_transition_time_when_status_does_not_flip() -> None:
    first = set_condition(None, type="Ready", status=False, reason="Building", message="m", generation=1, now="t1")
    second = set_condition(first, type="Ready", status=False, reason="Still", message="m2", generation=1, now="t2")
    flipped = set_condition(second, type="Ready", status=True, reason="Done", message="m3", generation=1, now="t3")
    assert second[0]["lastTransitionTime"] == "t1" and second[0]["reason"] == "Still"
    assert flipped[0]["lastTransitionTime"] == "t3" and condition_status(flipped, "Ready") == "True"


def test_build_request_bumps_the_menu_version_and_applies_defaults() -> None:
    request = edgemodel.build_request(
        {"source": {"uri": "store://m.onnx"}}, namespace="ns", name="m", generation=4, previous_menu_version=7
    )
    assert request.menu_version == 8 and request.variants == ("fp32", "int8-static")
    assert request.run_key == "ns/m@4" == edgemodel.run_key("ns", "m", 4) and request.data_uri is None


def test_build_request_names_a_missing_source_field() -> None:
    with pytest.raises(errors.SpecError, match=r"spec\.source\.uri"):
        edgemodel.build_request({}, namespace="ns", name="m", generation=1, previous_menu_version=0)


def test_build_request_carries_the_tuning_budget_and_names_a_bad_one() -> None:
    from tinymlops.variants.tvm_tune import Tuning

    spec = {"source": {"uri": "store://m.onnx"},
            "variants": {"targets": ["x86_64"], "tuning": {"trials": 512, "timeBudget": "10m"}}}
    request = edgemodel.build_request(spec, namespace="ns", name="m", generation=1, previous_menu_version=0)
    assert request.tuning == Tuning(512, 600.0)
    untuned = edgemodel.build_request({"source": {"uri": "store://m.onnx"}}, namespace="ns", name="m",
                                      generation=1, previous_menu_version=0)
    assert untuned.tuning is None
    spec["variants"]["tuning"] = {"trials": 512, "timeBudget": "soon"}  # type: ignore[index]
    with pytest.raises(errors.SpecError, match=r"spec\.variants\.tuning\.timeBudget: 'soon'"):
        edgemodel.build_request(spec, namespace="ns", name="m", generation=1, previous_menu_version=0)


def test_each_generation_builds_once_and_a_new_generation_rebuilds() -> None:
    assert edgemodel.needs_build({}, 1, now=0)
    assert not edgemodel.needs_build({"observedGeneration": 1, "phase": "Ready"}, 1, now=0)
    assert not edgemodel.needs_build({"observedGeneration": 1, "phase": "Failed"}, 1, now=0)
    assert edgemodel.needs_build({"observedGeneration": 1, "phase": "Failed"}, 2, now=0)


def test_invalid_source_is_permanent_and_names_the_source() -> None:
    error = errors.InvalidModelError("source store://missing.onnx: not found")
    status = edgemodel.failed_status({}, error, generation=2, now=100.0)
    assert status["phase"] == "Failed" and "nextAttemptAt" not in status
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSource")
    assert "store://missing.onnx" in ready["message"]


def test_transient_failures_retry_with_growing_backoff() -> None:
    first = edgemodel.failed_status({}, RuntimeError("kfp down"), generation=1, now=100.0)
    assert first["phase"] == "Retrying" and first["nextAttemptAt"] == "1970-01-01T00:01:45.000Z"
    assert not edgemodel.needs_build(first, 1, now=104.0) and edgemodel.needs_build(first, 1, now=105.0)
    second = edgemodel.failed_status(first, RuntimeError("kfp down"), generation=1, now=200.0)
    assert second["attempts"] == 2 and second["nextAttemptAt"] == "1970-01-01T00:03:35.000Z"
    request = edgemodel.build_request({"source": {"uri": "store://m.onnx"}}, namespace="ns", name="m",
                                      generation=1, previous_menu_version=0)
    assert edgemodel.building_status(second, request)["nextAttemptAt"] is None  # the retry is under way


def test_a_retry_time_in_unix_seconds_from_an_older_operator_is_still_honoured() -> None:
    older = {"observedGeneration": 1, "phase": "Retrying", "attempts": 1, "nextAttemptAt": 105.0}
    assert not edgemodel.needs_build(older, 1, now=104.0) and edgemodel.needs_build(older, 1, now=105.0)


def test_ready_status_lists_variants_and_rejects_with_reason() -> None:
    menu = {**MENU, "variants": [variant("fp32", 200_000, 0.97), variant("int8", 60_000, 0.9, accepted=False)]}
    status = edgemodel.ready_status({}, menu, "c" * 64, generation=2)
    assert status["phase"] == "Ready" and status["menuVersion"] == 3
    assert [(v["id"], v["accepted"]) for v in status["variants"]] == [("fp32", True), ("int8", False)]
    assert "budget" in status["variants"][1]["reason"]


def test_no_accepted_variant_is_not_ready() -> None:
    menu = {**MENU, "variants": [variant("int8", 60_000, 0.5, accepted=False)]}
    assert edgemodel.ready_status({}, menu, "c" * 64, generation=1)["phase"] == "Failed"


def test_assignment_follows_hardware() -> None:
    devices = [("big", device_labels("aarch64", 16_384)), ("small", device_labels("armv7l", 96)),
               ("tiny", device_labels("armv7l", 16))]
    assignment = devicefleet.assign(MENU["variants"], devices, {"objective": "accuracy"})
    assert assignment.by_variant == {"fp32": 1, "int8": 1}
    assert set(assignment.problems) == {"tiny"} and "model storage" in assignment.problems["tiny"]


def test_each_unassignable_device_is_named_in_its_own_problem() -> None:
    tiny = device_labels("armv7l", 16)
    unlabelled = {k: v for k, v in device_labels("x86_64", 65_536).items() if k != LABEL_RAM_MB}
    devices = [("tiny-1", tiny), ("tiny-2", tiny), ("odd-1", unlabelled), ("odd-2", unlabelled),
               ("big", device_labels("x86_64", 65_536))]
    assignment = devicefleet.assign(MENU["variants"], devices, {"objective": "accuracy"})
    assert assignment.by_variant == {"fp32": 1} and assignment.devices == 5
    for name in ("tiny-1", "tiny-2"):
        assert assignment.problems[name].startswith(f"device {name} can run no variant (fp32: ")
    for name in ("odd-1", "odd-2"):
        assert assignment.problems[name] == f"device {name}: label {LABEL_RAM_MB} is missing"


FIRST = rollout.decide(rollout.RolloutState(), strategy=Strategy(),
                       target=rollout.Target("m", "s" * 64, 3, {}), now=100.0)


def fleet(assignment: devicefleet.Assignment, summary: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return devicefleet.fleet_status(
        kwargs.pop("status", {}), generation=1, assignment=assignment, menu_version=3,
        plan_sha256=kwargs.pop("plan_sha256", "p"), plan_published_at=100.0, summary=summary,
        decision=kwargs.pop("decision", FIRST), strategy=kwargs.pop("strategy", Strategy()),
    )


def test_fleet_is_healthy_when_every_device_runs_the_stable_revision() -> None:
    devices = [(f"d{i}", device_labels("x86_64", 65_536)) for i in range(3)]
    assignment = devicefleet.assign(MENU["variants"], devices, {"objective": "accuracy"})
    summary = {"failed": 0, "by_phase": {"Running": 3}, "last_converged_at": 112.5,
               "by_revision": {"1": {"Running": 3}}}
    status = fleet(assignment, summary)
    assert status["phase"] == "Healthy" and status["secondsToConverge"] == 12.5
    assert status["stableRevision"] == 1 and status["canaryRevision"] is None
    assert condition_status(status["conditions"], "Converged") == "True"
    partial = fleet(assignment, {**summary, "by_revision": {"1": {"Running": 1}}})
    assert partial["phase"] == "Progressing" and "secondsToConverge" not in partial
    # completeWhen.convergedPct counts online devices: one offline device does not hold the fleet back.
    offline = {**summary, "by_phase": {"Running": 2, "Offline": 1}, "by_revision": {"1": {"Running": 2}}}
    assert fleet(assignment, offline, strategy=Strategy(complete_pct=90))["phase"] == "Healthy"


def test_failed_devices_degrade_the_fleet() -> None:
    device = [("d", device_labels("x86_64", 65_536))]
    assignment = devicefleet.assign(MENU["variants"], device, {"objective": "accuracy"})
    status = fleet(assignment, {"failed": 1, "by_phase": {"Failed": 1}})
    assert status["phase"] == "Degraded"


def test_status_writes_wait_for_a_significant_change() -> None:
    current = {"phase": "Progressing", "devices": 1000, "converged": 500, "byPhase": {"Running": 500}}
    assert not devicefleet.significant_change(current, {**current, "converged": 520, "byPhase": {"Running": 520}})
    assert devicefleet.significant_change(current, {**current, "converged": 560})  # crossed a 5% step
    assert devicefleet.significant_change(current, {**current, "phase": "Healthy"})
    assert devicefleet.significant_change(current, {**current, "currentStepIndex": 2})


def test_a_healthy_fleet_whose_status_the_server_holds_is_not_written_again() -> None:
    devices = [(f"d{i}", device_labels("x86_64", 65_536)) for i in range(40)]
    assignment = devicefleet.assign(MENU["variants"], devices, {"objective": "accuracy"})
    summary = {"failed": 0, "by_phase": {"Running": 40}, "last_converged_at": 112.5,
               "by_revision": {"1": {"Running": 40}}, "running_by_revision": {"1": {"fp32": 40}}}
    desired = fleet(assignment, summary)
    assert desired["phase"] == "Healthy"
    # Nested Nones: the merge patch deletes these keys, so the server never holds them.
    assert desired["rollout"]["canary"] is None and desired["rollout"]["blockedKey"] is None
    held = merge_patch({}, desired)
    assert "canary" not in held["rollout"]
    assert not devicefleet.significant_change(held, desired)
    assert not devicefleet.status_changed(held, desired)
    # The next tick: one device switched variants on its own (its battery ran low), nothing significant.
    moved = {**summary, "running_by_revision": {"1": {"fp32": 39, "int8": 1}}}
    assert not devicefleet.significant_change(held, fleet(assignment, moved))
    # A nested change is seen: the rollout's state is what a restarted operator continues from.
    blocked = {**desired, "rollout": {**desired["rollout"], "blockedKey": "k"}}
    assert devicefleet.significant_change(held, blocked) and devicefleet.status_changed(held, blocked)


def test_stale_devices_show_in_status_and_a_fleet_without_any_costs_no_write() -> None:
    devices = [(f"d{i}", device_labels("x86_64", 65_536)) for i in range(40)]
    assignment = devicefleet.assign(MENU["variants"], devices, {"objective": "accuracy"})
    summary = {"failed": 0, "by_phase": {"Running": 40}, "last_converged_at": 112.5, "stale": 0,
               "by_revision": {"1": {"Running": 40}}, "running_by_revision": {"1": {"fp32": 40}}}
    held = merge_patch({}, fleet(assignment, summary))
    assert "stale" not in held and not devicefleet.significant_change(held, fleet(assignment, summary))
    # A frozen mirror: three devices get no fresh plan. Still Running, still converged, and one write says so.
    frozen = fleet(assignment, {**summary, "stale": 3})
    assert frozen["phase"] == "Healthy" and frozen["converged"] == 40 and frozen["stale"] == 3
    assert devicefleet.significant_change(held, frozen)
    stale = merge_patch(held, frozen)
    assert not devicefleet.significant_change(stale, fleet(assignment, {**summary, "stale": 5}))  # rides along
    thawed = fleet(assignment, summary, status=stale)
    assert thawed["stale"] is None and devicefleet.significant_change(stale, thawed)  # null deletes the count
    assert "stale" not in merge_patch(stale, thawed)


def test_a_new_plan_starts_a_new_convergence() -> None:
    devices = [(f"d{i}", device_labels("x86_64", 65_536)) for i in range(3)]
    assignment = devicefleet.assign(MENU["variants"], devices, {"objective": "accuracy"})
    healthy = {"failed": 0, "by_phase": {"Running": 3}, "last_converged_at": 112.5,
               "by_revision": {"1": {"Running": 3}}}
    converged = merge_patch({}, fleet(assignment, healthy))
    assert converged["planSha256"] == "p" and converged["secondsToConverge"] == 12.5
    assert fleet(assignment, {**healthy, "last_converged_at": 130.0}, status=converged)["secondsToConverge"] == 12.5
    converging = {**healthy, "by_revision": {"1": {"Running": 1}}}
    replanned = fleet(assignment, converging, status=converged, plan_sha256="q")
    assert replanned["phase"] == "Progressing" and replanned["secondsToConverge"] is None  # null deletes it


def test_a_fleet_waits_for_a_model_that_has_no_menu() -> None:
    missing = devicefleet.model_not_ready_status({}, generation=2, namespace="ns", model="m", exists=False)
    assert missing["phase"] == "Pending" and missing["observedGeneration"] == 2
    assert missing["conditions"][0]["message"] == "spec.modelRef.name: EdgeModel ns/m does not exist"
    building = devicefleet.model_not_ready_status({}, generation=2, namespace="ns", model="m", exists=True)
    assert building["conditions"][0]["reason"] == "ModelNotReady"
    assert building["conditions"][0]["message"].endswith("has no published menu yet")


def test_a_reconcile_tells_transitions_problems_the_plan_and_a_new_phase_in_that_order() -> None:
    desired = {"phase": "Healthy", "conditions": [{"type": "Converged", "message": "3/3 devices run it"}]}
    events = devicefleet.fleet_events(FIRST, ["annotation tinymlops.io/promote: 'x' is not step or full"],
                                      plan_message="stable revision 1", phase_before="Pending", desired=desired)
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "RolloutCompleted"), ("Warning", "InvalidAnnotation"), ("Normal", "PlanPublished"),
        ("Normal", "Healthy")]
    assert events[-1].message == "3/3 devices run it"
    quiet = devicefleet.fleet_events(dataclasses.replace(FIRST, events=()), [], plan_message=None,
                                     phase_before="Healthy", desired=desired)
    assert quiet == []


def test_merge_patch_is_a_json_merge_patch() -> None:
    # RFC 7386: objects merge at every depth, null deletes, lists and scalars replace.
    current = {"a": {"b": 1, "c": {"d": 2}}, "list": [1, 2], "keep": "x"}
    patch = {"a": {"b": None, "c": {"e": 3}}, "list": [3], "gone": None, "new": {"n": None, "m": 1}}
    assert merge_patch(current, patch) == {
        "a": {"c": {"d": 2, "e": 3}}, "list": [3], "keep": "x", "new": {"m": 1}}
    assert current == {"a": {"b": 1, "c": {"d": 2}}, "list": [1, 2], "keep": "x"}  # not changed in place
    assert merge_patch({"a": 1}, {"a": {"b": None}}) == {"a": {}}


def test_build_request_expands_the_matrix_and_names_bad_fields() -> None:
    spec = {"source": {"uri": "store://m.onnx"}, "signingKeySecret": {"name": "team-key"},
            "variants": {"precisions": ["fp32", "int8"], "sparsities": [0.5], "targets": ["aarch64"]}}
    request = edgemodel.build_request(spec, namespace="ns", name="m", generation=1, previous_menu_version=0)
    assert request.variants == ("fp32", "int8-static", "pruned-50", "pruned-50-int8-static", "tvm-aarch64")
    assert request.signing_secret == ("team-key", "signing-key.pem")
    with pytest.raises(errors.SpecError, match="spec.variants.targets: 'riscv'"):
        edgemodel.build_request({**spec, "variants": {"targets": ["riscv"]}}, namespace="ns", name="m",
                                generation=1, previous_menu_version=0)


def test_ready_status_lists_variants_that_could_not_be_built() -> None:
    menu = {**MENU, "not_built": [{"id": "tvm-cortex-m4", "reason": "operator LSTM"}]}
    status = edgemodel.ready_status({}, menu, "c" * 64, 2)
    entry = next(v for v in status["variants"] if v["id"] == "tvm-cortex-m4")
    assert entry == {"id": "tvm-cortex-m4", "accepted": False, "built": False, "reason": "operator LSTM"}
    assert "not built: tvm-cortex-m4" in status["conditions"][0]["message"]


def test_encryption_recipients_must_be_x25519_keys() -> None:
    from tinymlops.envelope import device_public_pem, generate_device_key

    pem = device_public_pem(generate_device_key().public_key()).decode()
    spec = {"source": {"uri": "store://m.onnx"}, "encryption": {"recipients": [{"name": "pi", "publicKey": pem}]}}
    request = edgemodel.build_request(spec, namespace="ns", name="m", generation=1, previous_menu_version=0)
    assert request.recipients == (pem,)
    bad = {**spec, "encryption": {"recipients": [{"name": "pi", "publicKey": "not a key"}]}}
    with pytest.raises(errors.SpecError, match=r"spec.encryption.recipients\[0\].publicKey"):
        edgemodel.build_request(bad, namespace="ns", name="m", generation=1, previous_menu_version=0)


def test_a_microcontroller_variant_without_a_host_latency_is_listed_with_none() -> None:
    mcu = {**variant("tvm-cortex-m4", 1_239_040, 0.97), "format": "c-source",
           "metrics": {"accuracy": 0.97, "latency_ms_p50": None, "latency_ms_estimate": 3.163}}
    status = edgemodel.ready_status({}, {**MENU, "variants": [*MENU["variants"], mcu]}, "c" * 64, 2)
    entry = next(v for v in status["variants"] if v["id"] == "tvm-cortex-m4")
    assert entry["latencyMs"] is None and entry["accuracy"] == 0.97 and entry["built"] is True


def test_a_phase_no_device_is_in_any_more_leaves_by_phase() -> None:
    devices = [(f"d{i}", device_labels("x86_64", 65_536)) for i in range(3)]
    assignment = devicefleet.assign(MENU["variants"], devices, {"objective": "accuracy"})
    summary = {"failed": 0, "by_phase": {"Running": 3}, "by_revision": {"1": {"Running": 3}}}
    status = fleet(assignment, summary, status={"byPhase": {"Pending": 2, "Running": 1}})
    assert status["byPhase"] == {"Pending": None, "Running": 3}  # a merge patch: null deletes Pending
    assert merge_patch({"byPhase": {"Pending": 2, "Running": 1}}, status)["byPhase"] == {"Running": 3}
