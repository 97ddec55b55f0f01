"""FederatedTraining decisions as pure functions: when to train, what status says, where a revision goes,
and the SuperLink a cluster runs (its Deployment and Service, built here; the handler applies them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import SignatureError
from tinymlops.federated.nodekey import NODE_KEY_ANNOTATION, verified_node_key
from tinymlops.federated.spec import TrainingSpec
from tinymlops.labelselector import matches
from tinymlops.layout import SOURCES_ROOT
from tinymlops.signing import IDENTITY_ANNOTATION, load_public_key_base64
from tinymlops_operator.logic.conditions import set_condition

READY = "Ready"
SUPERLINK_PORT = 9092  # Flower 1.42's one HTTPS port (Fleet, Control and Runtime APIs) on a cluster


@dataclass(frozen=True)
class TrainingRequest:
    """Everything a training run needs, read by the handler; the runner does the rest off the event loop."""

    run_key: str
    namespace: str
    name: str
    generation: int
    spec: TrainingSpec
    source_uri: str
    data_uri: str  # held-out data for the promotion rule
    devices: tuple[str, ...]  # the fleet's devices that may take part
    revision_prefix: str  # where a promoted model is written in the store
    node_keys: tuple[tuple[str, bytes], ...] = ()  # (device, Flower node public key PEM), bound to its identity
    uid: str = ""  # the FederatedTraining's metadata.uid: which run, even after a delete and re-create


def run_key(namespace: str, name: str, generation: int) -> str:
    return f"{namespace}/{name}@{generation}"


def revision_prefix(namespace: str, model: str, training: str, generation: int) -> str:
    """The store folder of a promoted model: beside the other sources, named after the run that made it."""
    return f"{SOURCES_ROOT}/{namespace}/{model}/federated/{training}-g{generation}"


def drift_trigger(fleet_status: Mapping[str, Any] | None) -> str | None:
    """The lastTransitionTime of the fleet's Drifted condition while it is True (the drift to train for)."""
    for condition in (fleet_status or {}).get("conditions") or ():
        if condition.get("type") == "Drifted" and condition.get("status") == "True":
            return str(condition.get("lastTransitionTime") or "")
    return None


def needs_training(spec: Mapping[str, Any], status: Mapping[str, Any], generation: int,
                   fleet_status: Mapping[str, Any] | None) -> bool:
    """Once: each new generation trains once.  OnDrift: each time the fleet's Drifted condition turns True."""
    if status.get("phase") == "Training" and status.get("observedGeneration") == generation:
        return False
    if spec.get("schedule", "Once") == "OnDrift":
        trigger = drift_trigger(fleet_status)
        return trigger is not None and trigger != status.get("driftSeenAt")
    return status.get("observedGeneration") != generation


def selected(devices: Sequence[tuple[str, Mapping[str, str]]], fleet_selector: Mapping[str, Any],
             training_selector: Mapping[str, Any] | None) -> list[str]:
    """The fleet's devices (name, labels) that also match the training's own selector, by name."""
    return sorted(name for name, labels in devices
                  if matches(fleet_selector, labels) and matches(training_selector or {}, labels))


def run_settings(spec: TrainingSpec) -> str:
    """The run's settings as the Ready condition and the TrainingStarted Event say them."""
    secure = spec.secure_aggregation
    masked = "" if secure is None else (f" with SecAgg+ (shares {secure.shares:g}, reconstruction threshold "
                                        f"{secure.reconstruction_threshold:g})")
    return f"{spec.rounds} rounds of {spec.strategy}{masked}"


def secure_aggregation(spec: TrainingSpec) -> dict[str, Any] | None:
    return None if spec.secure_aggregation is None else spec.secure_aggregation.as_dict()


def node_keys(members: Sequence[str], bindings: Mapping[str, tuple[str | None, str | None]]
              ) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The Flower node keys to register for `members`: (device, PEM) for each whose Device carries a node key
    binding (`tinymlops.io/flower-node-key`) that verifies under its identity annotation, and, for the others
    that carry a binding, why not.  `bindings`: device -> (binding annotation, identity annotation)."""
    accepted, problems = [], []
    for device in members:
        binding, identity = bindings.get(device, (None, None))
        if binding is None:
            continue  # not provisioned for federated training: it cannot take part, and that is no error
        source = f"Device {device}"
        try:
            if identity is None:
                raise SignatureError(f"{source}: a node key binding but no {IDENTITY_ANNOTATION} to verify it")
            key = load_public_key_base64(identity, source=f"{source}: annotation {IDENTITY_ANNOTATION}")
            accepted.append((device, verified_node_key(binding, key, source=f"{source}: {NODE_KEY_ANNOTATION}")))
        except SignatureError as exc:
            problems.append(str(exc))
    return accepted, problems


def training_status(status: Mapping[str, Any], request: TrainingRequest, drift_seen_at: str | None,
                    now: str | None = None) -> dict[str, Any]:
    return {
        "observedGeneration": request.generation, "phase": "Training", "strategy": request.spec.strategy,
        "secureAggregation": secure_aggregation(request.spec),
        "clientsAvailable": len(request.devices), "roundsDone": 0, "rounds": [], "driftSeenAt": drift_seen_at,
        "verdict": None, "revision": None, "epsilon": None, "delta": None, "accuracy": None, "baseAccuracy": None,
        "conditions": set_condition(status.get("conditions"), type=READY, status=False, reason="Training",
                                    message=f"{run_settings(request.spec)} on up to {len(request.devices)} "
                                            "devices", generation=request.generation,
                                    now=now),
    }


def finished_status(status: Mapping[str, Any], result: Mapping[str, Any], generation: int,
                    now: str | None = None) -> dict[str, Any]:
    """Status once the rounds ran: `result` is what the runner returns (rounds, accuracy, ε, verdict, revision)."""
    verdict = result["verdict"]
    promoted = bool(verdict["promote"])
    return {
        "observedGeneration": generation, "phase": "Promoted" if promoted else "Rejected",
        "clientsAvailable": result["clientsAvailable"], "roundsDone": len(result["rounds"]),
        "rounds": result["rounds"], "baseAccuracy": result["baseAccuracy"], "accuracy": result["accuracy"],
        "epsilon": result.get("epsilon"), "delta": result.get("delta"), "verdict": verdict,
        "revision": result.get("revision"),
        "conditions": set_condition(status.get("conditions"), type=READY, status=True,
                                    reason="Promoted" if promoted else "Rejected", message=str(verdict["reason"]),
                                    generation=generation, now=now),
    }


def failed_status(status: Mapping[str, Any], error: BaseException, generation: int,
                  now: str | None = None) -> dict[str, Any]:
    """Failed, the condition's reason the error's class (NotEnoughClientsError, SpecError, ...), its message why."""
    return {
        "observedGeneration": generation, "phase": "Failed",
        "conditions": set_condition(status.get("conditions"), type=READY, status=False,
                                    reason=type(error).__name__, message=str(error), generation=generation,
                                    now=now),
    }


def source_patch(uri: str, sha256: str) -> dict[str, Any]:
    """The EdgeModel merge patch that makes the promoted model its source: the pipeline rebuilds the menu."""
    return {"spec": {"source": {"uri": uri, "sha256": sha256}}}


def lineage(request: TrainingRequest, result: Mapping[str, Any], parent_sha256: str) -> dict[str, Any]:
    """What the published revision records about its training (`tinymlops.variants.lineage.TRAINING_FIELDS`,
    stamped into the model and every variant's lineage): never a device's data, nor which device sent what."""
    privacy = request.spec.privacy
    return {"namespace": request.namespace, "name": request.name, "uid": request.uid,
            "generation": request.generation, "parentSource": request.source_uri, "parentSha256": parent_sha256,
            "strategy": request.spec.strategy, "strategyParams": dict(request.spec.strategy_params),
            "secureAggregation": secure_aggregation(request.spec),
            "rounds": len(result["rounds"]), "clientsPerRound": [r["clients"] for r in result["rounds"]],
            "localEpochs": request.spec.local_epochs,
            "privacy": None if privacy is None else {"clipNorm": privacy.clip_norm,
                                                     "noiseMultiplier": privacy.noise_multiplier},
            "epsilon": result.get("epsilon"), "delta": result.get("delta"),
            "accuracy": result["accuracy"], "baseAccuracy": result["baseAccuracy"]}


def superlink_manifests(namespace: str, name: str, *, image: str, tls_secret: str) -> list[dict[str, Any]]:
    """A SuperLink for a cluster: one replica (it holds the run's state) with TLS from `tls_secret`
    (ca.crt, tls.crt, tls.key) and SuperNode authentication on, and a Service for its API port.  Flower 1.42
    serves the Fleet, Control and Runtime APIs over HTTPS on one port; devices reach it through the Service,
    and the operator registers their node keys and submits runs through it."""
    labels = {"app.kubernetes.io/name": "flower-superlink", "app.kubernetes.io/part-of": "tinymlops",
              "tinymlops.io/federated-training": name}
    certs = "/var/run/tinymlops/superlink-tls"
    container = {
        "name": "superlink", "image": image,
        "command": ["flower-superlink", "--ssl-ca-certfile", f"{certs}/ca.crt", "--ssl-certfile",
                    f"{certs}/tls.crt", "--ssl-keyfile", f"{certs}/tls.key", "--enable-supernode-auth",
                    "--isolation", "subprocess", "--host", "0.0.0.0", "--port", str(SUPERLINK_PORT),
                    "--disable-runtime-dependency-installation"],
        "env": [{"name": "FLWR_TELEMETRY_ENABLED", "value": "0"}, {"name": "FLWR_DISABLE_UPDATE_CHECK", "value": "1"}],
        "ports": [{"name": "superlink", "containerPort": SUPERLINK_PORT}],
        "volumeMounts": [{"name": "tls", "mountPath": certs, "readOnly": True}],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{name}-superlink", "namespace": namespace, "labels": labels},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [container],
                                       "volumes": [{"name": "tls", "secret": {"secretName": tls_secret}}]}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"{name}-superlink", "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "superlink", "port": SUPERLINK_PORT,
                                                "targetPort": "superlink"}]},
    }
    return [deployment, service]
