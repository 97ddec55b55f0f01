"""FederatedTraining IO: start a run when due, follow it, publish its status, Events and metrics, and point the
EdgeModel at a promoted model (the variants pipeline then rebuilds the menu and the fleet's canary rolls it out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from tinymlops import API_GROUP, API_VERSION
from tinymlops.errors import SpecError
from tinymlops.federated.spec import parse_spec
from tinymlops_operator import secrets
from tinymlops_operator.federated import result_summary
from tinymlops_operator.logic import federated as logic
from tinymlops_operator.runtime import Runtime

Models = Mapping[tuple[str, str], Any]  # kopf index: (namespace, name) -> [{"source": uri, "data": uri}]
Fleets = Mapping[tuple[str, str], Any]  # kopf index: (namespace, name) -> [{"selector": ..., "status": ...}]


def _one(index: Mapping[tuple[str, str], Any], key: tuple[str, str]) -> Mapping[str, Any] | None:
    entries = index.get(key)
    return next(iter(entries), None) if entries else None


def reconcile(*, runtime: Runtime, spec: Mapping[str, Any], status: Mapping[str, Any], name: str, namespace: str,
              generation: int, models: Models, fleets: Fleets, devices: Sequence[tuple[str, Mapping[str, str]]],
              body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger,
              node_key_bindings: Mapping[str, tuple[str | None, str | None]] | None = None) -> None:
    """Timer: start a due run, or finish the running one."""
    key = logic.run_key(namespace, name, generation)
    if status.get("phase") == "Training" and status.get("observedGeneration") == generation:
        if runtime.trainings.knows(key):
            _announce_superlink(runtime, key, status, body, patch)
            _finish(runtime, key, status, name, namespace, generation, body, patch, logger)
            return
        logger.info("training %s was lost in a restart; starting it again", key)
    fleet = _one(fleets, (namespace, str((spec.get("fleet") or {}).get("name"))))
    if not logic.needs_training(spec, status, generation, (fleet or {}).get("status")):
        return
    try:
        request, problems = _request(spec, name, namespace, generation, models, fleet, devices,
                                     node_key_bindings or {}, str(body.metadata.uid or ""))
    except SpecError as exc:
        patch.status.update(logic.failed_status(status, exc, generation))
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        return
    for problem in problems:
        kopf.warn(body, reason="NodeKeyRefused", message=f"{problem}; the device cannot take part")
    runtime.trainings.submit(request)
    patch.status.update(logic.training_status(status, request, logic.drift_trigger((fleet or {}).get("status"))))
    runtime.metrics.federated_runs.labels(namespace, "started").inc()
    kopf.info(body, reason="TrainingStarted",
              message=f"{logic.run_settings(request.spec)} on up to {len(request.devices)} devices of fleet "
                      f"{request.spec.fleet}")


def _request(spec: Mapping[str, Any], name: str, namespace: str, generation: int, models: Models,
             fleet: Mapping[str, Any] | None, devices: Sequence[tuple[str, Mapping[str, str]]],
             bindings: Mapping[str, tuple[str | None, str | None]], uid: str = ""
             ) -> tuple[logic.TrainingRequest, list[str]]:
    parsed = parse_spec(spec)
    model = _one(models, (namespace, parsed.model))
    if model is None:
        raise SpecError(f"spec.model.name: EdgeModel {namespace}/{parsed.model} does not exist")
    if fleet is None:
        raise SpecError(f"spec.fleet.name: DeviceFleet {namespace}/{parsed.fleet} does not exist")
    data_uri = parsed.promotion.data_uri or model.get("data")
    if not data_uri:
        raise SpecError(f"spec.promotion.data: EdgeModel {parsed.model} has no spec.data to hold out; name the "
                        "held-out data here")
    members = logic.selected(devices, fleet.get("selector") or {}, parsed.fleet_selector)
    keys, problems = logic.node_keys(members, bindings) if parsed.runtime == "SuperLink" else ([], [])
    return logic.TrainingRequest(
        run_key=logic.run_key(namespace, name, generation), namespace=namespace, name=name, generation=generation,
        spec=parsed, source_uri=str(model["source"]), data_uri=str(data_uri), devices=tuple(members),
        revision_prefix=logic.revision_prefix(namespace, parsed.model, name, generation),
        node_keys=tuple(keys), uid=uid), problems


def _announce_superlink(runtime: Runtime, key: str, status: Mapping[str, Any], body: kopf.Body,
                        patch: kopf.Patch) -> None:
    """Once the run's SuperLink is up, status says where devices connect (and the CA they pin)."""
    endpoint = runtime.trainings.endpoint(key)
    if endpoint is not None and status.get("superlink") != endpoint:
        patch.status["superlink"] = endpoint
        kopf.info(body, reason="SuperLinkReady", message=f"devices connect to {endpoint['address']}; "
                                                         f"{endpoint['registered']} node keys registered")


def _finish(runtime: Runtime, key: str, status: Mapping[str, Any], name: str, namespace: str, generation: int,
            body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    request = runtime.trainings.request(key)
    outcome = runtime.trainings.poll(key)
    if outcome is None:
        return
    metrics = runtime.metrics
    if outcome.error is not None or outcome.result is None:
        error = outcome.error or RuntimeError("the training ended without a result")
        patch.status.update(logic.failed_status(status, error, generation))
        if status.get("superlink"):
            patch.status["superlink"] = None
        metrics.federated_runs.labels(namespace, "failed").inc()
        kopf.warn(body, reason="TrainingFailed", message=str(error))
        logger.warning("federated training %s failed: %s", key, error)
        return
    result = outcome.result
    for entry in result["rounds"]:
        kopf.info(body, reason="RoundDone", message=f"round {entry['round']}: {entry['clients']} clients, held-out "
                                                    f"accuracy {entry['accuracy']:.2%}, dropped {entry['dropped']}")
        metrics.federated_rounds.labels(namespace, name).inc()
        for reason, count in entry["dropped"].items():
            metrics.federated_dropped.labels(namespace, reason).inc(count)
    metrics.federated_accuracy.labels(namespace, name).set(result["accuracy"])
    if result.get("epsilon") is not None:
        metrics.federated_epsilon.labels(namespace, name).set(result["epsilon"])
    verdict = result["verdict"]
    if verdict["promote"] and request is not None:
        revision = result["revision"]
        _patch_edgemodel(namespace, request.spec.model, logic.source_patch(revision["uri"], revision["sha256"]))
        metrics.federated_runs.labels(namespace, "promoted").inc()
        kopf.info(body, reason="Promoted", message=f"{result_summary(result)}; EdgeModel {request.spec.model} now "
                                                   f"builds from {revision['uri']}: {verdict['reason']}")
    else:
        metrics.federated_runs.labels(namespace, "rejected").inc()
        kopf.warn(body, reason="Rejected", message=f"{result_summary(result)}; nothing ships: {verdict['reason']}")
    patch.status.update(logic.finished_status(status, result, generation))
    if status.get("superlink"):
        patch.status["superlink"] = None  # the run's SuperLink is gone


def _patch_edgemodel(namespace: str, name: str, body: Mapping[str, Any]) -> None:
    """A merge patch on the EdgeModel's spec (the `kubernetes` client, as secrets.py reads Secrets)."""
    from kubernetes import client

    client.CustomObjectsApi(secrets.api_client()).patch_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "edgemodels", name, dict(body))
