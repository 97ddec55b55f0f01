"""The OpenAPI documents kubectl reads: v3 per group/version, and v2 for the whole API (pure).

kubectl (1.27+) fetches `/openapi/v3`, then the document of the object's group/version, and looks for
the PATCH operation tagged with the object's `x-kubernetes-group-version-kind`: if that operation takes
the `fieldValidation` query parameter, kubectl leaves validation to the server and sends
`fieldValidation=Strict`; `kubectl explain` renders the schema tagged with the kind. Both documents are
built here from what the store serves: every CRD's published schema (with ObjectMeta behind a reference,
as the API server publishes it) and the built-in kinds' schemas from `builtins`. PATCH bodies are JSON
and merge patches only, as a CRD endpoint takes them (no server-side apply here).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from tinymlops.kube.schema import CRDRegistry
from tinymlops.stack.emulator.builtins import BUILTIN_SCHEMAS, OBJECT_META, OBJECT_META_REF
from tinymlops.stack.emulator.resources import ResourceType

Doc = dict[str, Any]
_PREFIXES = {"": "io.k8s.api.core", "events.k8s.io": "io.k8s.api.events",
             "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions"}
_V2_UNSUPPORTED = ("nullable", "anyOf", "oneOf", "not", "allOf")  # what the API server strips for v2
_WRITE_PARAMS = (
    ("dryRun", "When present, modifications are not persisted (not supported here)."),
    ("fieldManager", "Name of the actor or entity making these changes."),
    ("fieldValidation", "How the server treats unknown and duplicate fields in the request body: Ignore "
                        "(drop them), Warn (drop them and send a Warning header for each; the default) or "
                        "Strict (fail the request, naming each field)."),
)
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json")


def definition_name(rt: ResourceType, kind: str | None = None) -> str:
    """`io.tinymlops.v1alpha1.EdgeModel`, `io.k8s.api.core.v1.ConfigMap`: how the API server names schemas."""
    prefix = _PREFIXES.get(rt.group) or ".".join(reversed(rt.group.split(".")))
    return f"{prefix}.{rt.version}.{kind or rt.kind}"


def group_path(rt: ResourceType) -> str:
    """`apis/tinymlops.io/v1alpha1` or `api/v1`: the key of a group/version in the v3 index."""
    return f"apis/{rt.group}/{rt.version}" if rt.group else f"api/{rt.version}"


def kind_schema(rt: ResourceType, crds: CRDRegistry, ref: str) -> Doc:
    """The schema the API server publishes for a kind: its own, ObjectMeta referenced, tagged with the GVK."""
    source = crds.schema_for(rt.api_version, rt.kind) or BUILTIN_SCHEMAS.get((rt.api_version, rt.kind))
    schema = copy.deepcopy(dict(source or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "The versioned schema of this representation."}
    props["kind"] = {"type": "string", "description": "The REST resource this object represents."}
    props["metadata"] = {"allOf": [{"$ref": ref + OBJECT_META_REF}], "description": OBJECT_META["description"]}
    schema["x-kubernetes-group-version-kind"] = [{"group": rt.group, "version": rt.version, "kind": rt.kind}]
    return schema


def _operation(rt: ResourceType, verb: str, action: str, ref: str, *, body: tuple[str, ...] = ()) -> Doc:
    scope = "Namespaced" if rt.namespaced and action != "list-all" else ""
    words = [w.capitalize() for w in rt.group.replace("-", ".").split(".") if w] + [rt.version.capitalize()]
    operation: Doc = {
        "operationId": f"{verb}{''.join(words)}{scope}{rt.kind}",
        "description": f"{verb} {rt.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "parameters": [],
        "responses": {"200": {"description": "OK", "content": {"application/json": {
            "schema": {"$ref": ref + definition_name(rt)}}}}},
    }
    if body:
        schema = {"$ref": ref + definition_name(rt)} if verb != "patch" else {"type": "object"}
        operation["requestBody"] = {"required": True, "content": {t: {"schema": schema} for t in body}}
        operation["parameters"] = [{"name": name, "in": "query", "description": text, "schema": {"type": "string"}}
                                   for name, text in _WRITE_PARAMS]
    return operation


def _paths(rt: ResourceType, ref: str) -> dict[str, Doc]:
    root = f"/{group_path(rt)}"
    collection = f"{root}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{root}/{rt.plural}"
    item = f"{collection}/{{name}}"
    op, json_body = _operation, ("application/json",)
    paths: dict[str, Doc] = {
        collection: {"get": op(rt, "list", "list", ref), "post": op(rt, "create", "post", ref, body=json_body),
                     "delete": op(rt, "deletecollection", "deletecollection", ref)},
        item: {"get": op(rt, "read", "get", ref), "put": op(rt, "replace", "put", ref, body=json_body),
               "patch": op(rt, "patch", "patch", ref, body=PATCH_TYPES), "delete": op(rt, "delete", "delete", ref)},
    }
    if rt.status:
        paths[f"{item}/status"] = {"get": op(rt, "read", "get", ref),
                                   "put": op(rt, "replace", "put", ref, body=json_body),
                                   "patch": op(rt, "patch", "patch", ref, body=PATCH_TYPES)}
    if rt.namespaced:
        paths[f"{root}/{rt.plural}"] = {"get": op(rt, "list", "list-all", ref)}
    return paths


def v3_document(types: Iterable[ResourceType], crds: CRDRegistry, version: str) -> Doc:
    """The OpenAPI 3.0 document of one group/version (`types` are that group/version's resources)."""
    ref = "#/components/schemas/"
    paths: dict[str, Doc] = {}
    schemas: dict[str, Doc] = {OBJECT_META_REF: _published_meta()}
    for rt in types:
        paths.update(_paths(rt, ref))
        schemas[definition_name(rt)] = kind_schema(rt, crds, ref)
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": version},
            "paths": dict(sorted(paths.items())), "components": {"schemas": schemas}}


def v3_index(documents: Mapping[str, Doc]) -> Doc:
    """`/openapi/v3`: where each group/version's document is, with a content hash clients may cache by."""
    return {"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={content_hash(doc)}"}
                      for path, doc in sorted(documents.items())}}


def v2_document(types: Iterable[ResourceType], crds: CRDRegistry, version: str) -> Doc:
    """The Swagger 2.0 document of the whole API, for clients that still read v2."""
    ref = "#/definitions/"
    paths: dict[str, Doc] = {}
    definitions: dict[str, Doc] = {OBJECT_META_REF: _published_meta()}
    for rt in types:
        for path, item in _paths(rt, ref).items():
            paths[path] = {verb: _v2_operation(op) for verb, op in item.items()}
        definitions[definition_name(rt)] = _v2_schema(kind_schema(rt, crds, ref))
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": version},
            "paths": dict(sorted(paths.items())), "definitions": definitions}


def content_hash(doc: Doc) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


def _published_meta() -> Doc:
    return copy.deepcopy(OBJECT_META)


def _v2_operation(operation: Doc) -> Doc:
    """v3 → v2: the body becomes a `body` parameter, media types move to `consumes`."""
    out = {k: v for k, v in operation.items() if k not in ("requestBody", "responses", "parameters")}
    parameters = [{"name": p["name"], "in": "query", "type": "string", "description": p["description"]}
                  for p in operation["parameters"]]
    if "requestBody" in operation:
        content = operation["requestBody"]["content"]
        out["consumes"] = list(content)
        parameters.append({"name": "body", "in": "body", "required": True,
                           "schema": next(iter(content.values()))["schema"]})
    out["parameters"] = parameters
    out["produces"] = ["application/json"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    out["responses"] = {"200": {"description": "OK", "schema": schema}}
    return out


def _v2_schema(node: Any) -> Any:
    """Swagger 2.0 has no nullable/anyOf/oneOf/not; a lone allOf reference becomes the reference."""
    if not isinstance(node, dict):
        return node
    if set(node) <= {"allOf", "description"} and len(node.get("allOf") or ()) == 1:
        return {**node["allOf"][0], **({"description": node["description"]} if "description" in node else {})}
    out = {key: value for key, value in node.items() if key not in _V2_UNSUPPORTED}
    if isinstance(node.get("properties"), dict):
        out["properties"] = {name: _v2_schema(sub) for name, sub in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = _v2_schema(node[key])
    return out
