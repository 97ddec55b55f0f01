"""Registers the operator's kopf handlers; every handler forwards to `handlers/`.

Run it with `tinymlops operator run` (or `kopf run -m tinymlops_operator.main`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import kopf

from tinymlops import API_GROUP, API_VERSION
from tinymlops.federated.nodekey import NODE_KEY_ANNOTATION
from tinymlops.signing import IDENTITY_ANNOTATION
from tinymlops_operator import identity
from tinymlops_operator.config import Settings
from tinymlops_operator.handlers import devicefleet, edgemodel, federated, registry
from tinymlops_operator.handlers import license as license_handler
from tinymlops_operator.runtime import Runtime, create_runtime

EDGEMODELS = (API_GROUP, API_VERSION, "edgemodels")
DEVICEFLEETS = (API_GROUP, API_VERSION, "devicefleets")
LICENSES = (API_GROUP, API_VERSION, "licenses")
KUBEEDGE_DEVICES = ("devices.kubeedge.io", "v1beta1", "devices")
FEDERATEDTRAININGS = (API_GROUP, API_VERSION, "federatedtrainings")



@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    config = Settings.from_env()
    # Tests may inject a runtime (e.g. a fake build) through the memo before start-up.
    memo.runtime = getattr(memo, "runtime", None) or create_runtime(config)
    if config.metrics_port:
        try:
            memo.runtime.metrics.serve(config.metrics_port)
        except OSError as exc:
            # Metrics are for watching the operator, not for running it: rollouts go on without them.
            logger.warning("operator metrics not served: port %s: %s", config.metrics_port, exc.strerror or exc)
    # Our names on finalizers, events and annotations; peering so that only one replica acts.
    identity.configure(settings, peering=config.peering, priority=config.peering_priority,
                       instance=os.environ.get("POD_ID") or socket.gethostname())
    settings.watching.server_timeout = 60
    settings.execution.max_workers = 4
    # The device registry the gateway authenticates reports with, written when the Devices' keys change.
    memo.registry = registry.RegistryPublisher(memo.runtime)
    memo.registry_task = asyncio.create_task(memo.registry.publish_forever(), name="device-registry")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere the kubeconfig that KUBECONFIG names *now*.

    kopf's default would go through the `kubernetes` client library, which reads KUBECONFIG
    once at import time: the embedded stack sets it later, so read it at login instead.
    """
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = getattr(memo, "registry_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    runtime: Runtime = memo.runtime
    runtime.launcher.shutdown()
    runtime.trainings.shutdown()
    runtime.metrics.close()
    if runtime.http is not None:
        await runtime.http.close()


# --- indexes: in-memory views kopf keeps current from its watch streams ---------------

@kopf.index(*EDGEMODELS)
def edgemodel_index(namespace: str, name: str, status: kopf.Status, meta: kopf.Meta, spec: kopf.Spec,
                    **_: Any) -> Any:
    # The licensees a fleet may name (spec.watermark.licensees): a check across objects no schema can make.
    licensees = list((spec.get("watermark") or {}).get("licensees") or ())
    return {(namespace, name): {"status": dict(status), "generation": int(meta.get("generation") or 0),
                                "spec": {"watermark": {"licensees": licensees}} if licensees else {}}}


@kopf.index(*KUBEEDGE_DEVICES)
def device_index(namespace: str, name: str, labels: kopf.Labels, **_: Any) -> Any:
    return {namespace: (name, dict(labels))}


@kopf.index(*KUBEEDGE_DEVICES, annotations={IDENTITY_ANNOTATION: kopf.PRESENT})
def device_identity_index(namespace: str, name: str, annotations: kopf.Annotations, **_: Any) -> Any:
    """Each registered Device's identity key (or why it cannot be registered), for the gateway's registry."""
    return registry.identity_entry(namespace, name, annotations)


@kopf.on.event(*KUBEEDGE_DEVICES)
def device_event(memo: kopf.Memo, event: kopf.RawEvent, body: kopf.Body, namespace: str, name: str,
                 annotations: kopf.Annotations, device_identity_index: registry.IdentityIndex, **_: Any) -> None:
    memo.registry.device_event(device_identity_index, body=body, namespace=namespace, name=name,
                               annotations=annotations, deleted=event.get("type") == "DELETED")


@kopf.index(*KUBEEDGE_DEVICES, annotations={NODE_KEY_ANNOTATION: kopf.PRESENT})
def device_node_key_index(namespace: str, name: str, annotations: kopf.Annotations, **_: Any) -> Any:
    """Each Device's Flower node key binding and identity key, for FederatedTrainings on a SuperLink."""
    return {namespace: (name, annotations.get(NODE_KEY_ANNOTATION), annotations.get(IDENTITY_ANNOTATION))}


@kopf.index("", "v1", "nodes", labels={"node-role.kubernetes.io/edge": kopf.PRESENT})
def edge_node_index(name: str, labels: kopf.Labels, **_: Any) -> Any:
    """KubeEdge edge nodes, for fleets with `deviceKind: Node` (a node is one device)."""
    return {"": (name, dict(labels))}


# --- EdgeModel --------------------------------------------------------------------------

@kopf.on.resume(*EDGEMODELS)
@kopf.on.create(*EDGEMODELS)
@kopf.on.update(*EDGEMODELS, field="spec")
def edgemodel_changed(memo: kopf.Memo, **kwargs: Any) -> None:
    with _counted(memo.runtime, "EdgeModel"):
        edgemodel.start_build_if_needed(runtime=memo.runtime, **_pick(kwargs, BUILD_ARGS))


@kopf.timer(*EDGEMODELS, interval=1.0, sharp=False)
def edgemodel_poll(memo: kopf.Memo, **kwargs: Any) -> None:
    with _counted(memo.runtime, "EdgeModel"):
        edgemodel.poll_build(runtime=memo.runtime, **_pick(kwargs, BUILD_ARGS))


# --- DeviceFleet ------------------------------------------------------------------------

@kopf.timer(*DEVICEFLEETS, interval=1.0, sharp=False)
async def devicefleet_reconcile(
    memo: kopf.Memo,
    edgemodel_index: kopf.Index[tuple[str, str], Mapping[str, Any]],
    device_index: kopf.Index[str, tuple[str, Mapping[str, str]]],
    edge_node_index: kopf.Index[str, tuple[str, Mapping[str, str]]],
    spec: kopf.Spec,
    namespace: str,
    **kwargs: Any,
) -> None:
    if spec.get("deviceKind", "Device") == "Node":
        devices = edge_node_index.get("", ())
    else:
        devices = device_index.get(namespace, ())
    with _counted(memo.runtime, "DeviceFleet"):
        await devicefleet.reconcile(
            runtime=memo.runtime,
            models=edgemodel_index,
            devices=devices,
            namespace=namespace,
            spec=spec,
            **_pick(kwargs, FLEET_ARGS),
        )


@kopf.on.delete(*DEVICEFLEETS)
def devicefleet_deleted(memo: kopf.Memo, name: str, namespace: str, **_: Any) -> None:
    devicefleet.delete_plan(runtime=memo.runtime, name=name, namespace=namespace)


# --- License ----------------------------------------------------------------------------

@kopf.index(*DEVICEFLEETS)
def devicefleet_index(namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> Any:
    """What Licenses and FederatedTrainings read of the fleets they name."""
    return {(namespace, name): {"spec": dict(spec), "selector": dict(spec.get("selector") or {}),
                                "status": dict(status)}}


@kopf.timer(*LICENSES, interval=2.0, sharp=False)
async def license_reconcile(
    memo: kopf.Memo,
    devicefleet_index: kopf.Index[tuple[str, str], Mapping[str, Any]],
    device_index: kopf.Index[str, tuple[str, Mapping[str, str]]],
    device_identity_index: registry.IdentityIndex,
    spec: kopf.Spec,
    status: kopf.Status,
    namespace: str,
    name: str,
    patch: kopf.Patch,
    logger: kopf.Logger,
    meta: kopf.Meta,
    **_: Any,
) -> None:
    with _counted(memo.runtime, "License"):
        await license_handler.reconcile(
            runtime=memo.runtime, spec=spec, status=status, namespace=namespace, name=name,
            generation=int(meta.get("generation") or 0), patch=patch, fleets=devicefleet_index,
            devices=device_index.get(namespace, ()), identities=device_identity_index, logger=logger)
# --- FederatedTraining -------------------------------------------------------------------

@kopf.index(*EDGEMODELS)
def edgemodel_source_index(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> Any:
    return {(namespace, name): {"source": (spec.get("source") or {}).get("uri"),
                                "data": (spec.get("data") or {}).get("uri")}}


@kopf.timer(*FEDERATEDTRAININGS, interval=1.0, sharp=False)
def federatedtraining_reconcile(
    memo: kopf.Memo,
    edgemodel_source_index: kopf.Index[tuple[str, str], Mapping[str, Any]],
    devicefleet_index: kopf.Index[tuple[str, str], Mapping[str, Any]],
    device_index: kopf.Index[str, tuple[str, Mapping[str, str]]],
    device_node_key_index: kopf.Index[str, tuple[str, str | None, str | None]],
    namespace: str,
    **kwargs: Any,
) -> None:
    bindings = {name: (binding, identity) for name, binding, identity in device_node_key_index.get(namespace, ())}
    with _counted(memo.runtime, "FederatedTraining"):
        federated.reconcile(runtime=memo.runtime, models=edgemodel_source_index, fleets=devicefleet_index,
                            devices=list(device_index.get(namespace, ())), namespace=namespace,
                            node_key_bindings=bindings, **_pick(kwargs, TRAINING_ARGS))


BUILD_ARGS = ("spec", "status", "name", "namespace", "body", "patch", "logger")
FLEET_ARGS = ("status", "annotations", "name", "body", "patch")
TRAINING_ARGS = ("spec", "status", "name", "body", "patch", "logger")


@contextlib.contextmanager
def _counted(runtime: Runtime, kind: str) -> Iterator[None]:
    """Count the reconcile in the operator's metrics, by outcome (kopf retries the errors)."""
    try:
        yield
    except Exception:
        runtime.metrics.reconciles.labels(kind, "error").inc()
        raise
    runtime.metrics.reconciles.labels(kind, "ok").inc()


def _pick(kwargs: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The handler arguments we forward, plus `generation`, which kopf passes only inside `meta`."""
    picked = {name: kwargs[name] for name in names}
    picked["generation"] = int(kwargs["meta"].get("generation") or 0)
    return picked
