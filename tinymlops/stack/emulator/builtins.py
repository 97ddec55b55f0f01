"""Schemas of what the API server defines itself: ObjectMeta and the built-in kinds the emulator serves.

A real API server decodes built-in objects into Go structs, so it knows every field of a ConfigMap or an
Event and drops (or, with `fieldValidation=Strict`, refuses) the rest; CRDs get an ObjectMeta it checks
the same way. The emulator has no Go structs: these structural schemas declare the fields a client may
send, with their descriptions, so that one source serves both the pruning in `schemas.prune` and the
OpenAPI documents `kubectl explain` reads. Below the top level, the nested built-in structures (a Node's
spec, an Event's source) are preserved as sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Schema = dict[str, Any]
OBJECT_META_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _field(kind: str, description: str, **more: Any) -> Schema:
    if kind in ("object", "array") and not more:
        more = {"x-kubernetes-preserve-unknown-fields": True}
    return {"type": kind, "description": description, **more}


_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}

OBJECT_META: Schema = {
    "type": "object",
    "description": "Standard object's metadata: what every persisted resource has.",
    "properties": {
        "name": _field("string", "Unique within a namespace (or the cluster) for the kind; cannot be updated."),
        "generateName": _field("string", "Prefix the server completes into a unique name when name is empty."),
        "namespace": _field("string", "The namespace the object lives in; empty for cluster-scoped kinds."),
        "labels": {**_STRINGS, "description": "Key/value pairs that selectors match on."},
        "annotations": {**_STRINGS, "description": "Arbitrary non-identifying key/value pairs for tools."},
        "finalizers": _field("array", "Keys that must be removed before the object is deleted.",
                             items={"type": "string"}),
        "ownerReferences": _field("array", "Objects this one depends on; deleted with them (garbage collection).",
                                  items={"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
        "uid": _field("string", "Unique in time and space; set by the server, read-only."),
        "resourceVersion": _field("string", "Opaque version of the object for optimistic concurrency and watches."),
        "generation": _field("integer", "Sequence number of changes to the desired state; set by the server.",
                             format="int64"),
        "creationTimestamp": _field("string", "When the server created the object (RFC 3339); read-only.",
                                    format="date-time"),
        "deletionTimestamp": _field("string", "When deletion was requested; set by the server.", format="date-time"),
        "deletionGracePeriodSeconds": _field("integer", "Seconds allowed for graceful termination.", format="int64"),
        "managedFields": _field("array", "Which field manager owns which fields (server-side apply).",
                                items={"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
        "selfLink": _field("string", "Deprecated; not set by the server."),
    },
}

_TYPE_META: Schema = {
    "apiVersion": _field("string", "The versioned schema of this representation of an object."),
    "kind": _field("string", "The REST resource this object represents, in CamelCase."),
    "metadata": OBJECT_META,
}


def _kind(description: str, **fields: Schema) -> Schema:
    return {"type": "object", "description": description, "properties": {**_TYPE_META, **fields}}


_SPEC_STATUS = {"spec": _field("object", "The desired state."), "status": _field("object", "The observed state.")}
_CORE_EVENT = _kind(
    "A report of something that happened to an object (core/v1).",
    involvedObject=_field("object", "The object this event is about."),
    reason=_field("string", "Short, machine understandable reason for the transition, in CamelCase."),
    message=_field("string", "Human-readable description of the event."),
    type=_field("string", "Normal or Warning."),
    source=_field("object", "The component reporting this event (kubectl describe's From column)."),
    action=_field("string", "What was done (or failed) about the object."),
    count=_field("integer", "Times this event occurred.", format="int32"),
    firstTimestamp=_field("string", "When the event was first recorded.", format="date-time"),
    lastTimestamp=_field("string", "When the event last occurred.", format="date-time"),
    eventTime=_field("string", "When the event was first observed (MicroTime).", format="date-time"),
    series=_field("object", "Data about the series this event is part of."),
    related=_field("object", "A secondary object for more complex actions."),
    reportingComponent=_field("string", "Name of the controller that emitted the event."),
    reportingInstance=_field("string", "ID of the controller instance."),
)
_EVENTS_EVENT = _kind(
    "A report of something that happened to an object (events.k8s.io/v1).",
    regarding=_field("object", "The object this event is about."),
    related=_field("object", "A secondary object for more complex actions."),
    reason=_field("string", "Why the action was taken, in CamelCase."),
    note=_field("string", "Human-readable description of the status of this operation."),
    type=_field("string", "Normal or Warning."),
    action=_field("string", "What action was taken or failed."),
    eventTime=_field("string", "When the event was first observed (MicroTime).", format="date-time"),
    series=_field("object", "Data about the series this event is part of."),
    reportingController=_field("string", "Name of the controller that emitted the event."),
    reportingInstance=_field("string", "ID of the controller instance."),
    deprecatedSource=_field("object", "core/v1 source, kept for compatibility."),
    deprecatedFirstTimestamp=_field("string", "core/v1 firstTimestamp.", format="date-time"),
    deprecatedLastTimestamp=_field("string", "core/v1 lastTimestamp.", format="date-time"),
    deprecatedCount=_field("integer", "core/v1 count.", format="int32"),
)

# (apiVersion, kind) -> schema, for every built-in kind `resources.BUILTINS` serves.
BUILTIN_SCHEMAS: Mapping[tuple[str, str], Schema] = {
    ("v1", "Namespace"): _kind("A scope for names of namespaced objects.", **_SPEC_STATUS),
    ("v1", "Node"): _kind("A worker node (here: also a KubeEdge edge node).", **_SPEC_STATUS),
    ("v1", "Event"): _CORE_EVENT,
    ("events.k8s.io/v1", "Event"): _EVENTS_EVENT,
    ("v1", "Secret"): _kind(
        "Secret data, base64-encoded in data.",
        data={**_STRINGS, "description": "Base64-encoded values by key."},
        stringData={**_STRINGS, "description": "Plain values by key, merged into data on write."},
        type=_field("string", "Used to facilitate programmatic handling of secret data."),
        immutable=_field("boolean", "If true, data cannot be updated."),
    ),
    ("v1", "ConfigMap"): _kind(
        "Configuration data for pods and controllers.",
        data={**_STRINGS, "description": "UTF-8 values by key."},
        binaryData={**_STRINGS, "description": "Base64-encoded binary values by key."},
        immutable=_field("boolean", "If true, data cannot be updated."),
    ),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): _kind(
        "A custom resource type the API server serves.", **_SPEC_STATUS),
}
