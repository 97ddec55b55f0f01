"""A Kubernetes API on loopback, built on `kmock.KubernetesEmulator`, complete enough for kopf and kubectl.

kmock gives us the request parsing, the Status error rendering and the discovery documents
(`/api`, `/apis`, `/apis/<group>/<version>`, fed from `ResourceInfo` records). Its own object
handling is deliberately naive (no resourceVersion, generation, status subresource, JSON patch,
schemas or watch resumption), so the subclass here serves every resource request itself:

* objects get uid, resourceVersion (one global counter), generation and creationTimestamp;
* `<plural>/status` is a real subresource for the kinds that declare it;
* merge, strategic-merge (as merge) and JSON patches, PUT with optimistic concurrency;
* CRD schemas (`tinymlops.crd_schema`) default, prune and validate; failures are 422 Invalid;
* watches resume from a resourceVersion (410 Expired when it is too old) and honour timeoutSeconds;
* deletion waits for finalizers; `kubectl get` receives server-side Tables with the printer columns.

kmock 0.8 parses `/api/v1/namespaces` as the prefix of a namespaced path and fails on it, which is
why kopf could only run cluster-wide against it; requests are parsed here with that case fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import logging
import re
import secrets
import threading
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import apps, parsing, rendering

from tinymlops.crd_schema import CRDRegistry, load_crds
from tinymlops.stack.kubeconfig import write_kubeconfig

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
ResKey = tuple[str, str, str]  # group, version, plural
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
WATCH_LOG = 20_000  # watch events kept per resource for resumption; older resourceVersions get 410
DEFAULT_WATCH_SECONDS = 1800.0
_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # what the API server appends to generateName
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class ResourceType:
    """What discovery says about one served resource (one group/version/plural)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False  # has the status subresource
    columns: tuple[Mapping[str, Any], ...] = ()  # additionalPrinterColumns

    @property
    def key(self) -> ResKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`edgemodels.tinymlops.io`, as the API server names resources in its messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


BUILTINS = (
    ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",), status=True),
    ResourceType("", "v1", "nodes", "Node", False, ("no",), status=True),
    ResourceType("", "v1", "events", "Event", True, ("ev",)),
    ResourceType("", "v1", "secrets", "Secret", True),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, ("ev",)),
    ResourceType(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
        ("crd", "crds"), ("api-extensions",), status=True,
    ),
)
_CRDS: ResKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def crd_resource_types(crd: Mapping[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of a CustomResourceDefinition."""
    spec, names = crd["spec"], crd["spec"]["names"]
    return [
        ResourceType(
            spec["group"], version["name"], names["plural"], names["kind"], spec.get("scope") == "Namespaced",
            tuple(names.get("shortNames") or ()), tuple(names.get("categories") or ()),
            "status" in (version.get("subresources") or {}), tuple(version.get("additionalPrinterColumns") or ()),
        )
        for version in spec["versions"]
        if version.get("served", True)
    ]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------- errors


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


def not_found(rt: ResourceType, name: str) -> kmock.KubernetesError:
    return _error(404, "NotFound", f'{rt.qualified} "{name}" not found', name=name, group=rt.group, kind=rt.plural)


def invalid(rt: ResourceType, name: str, problems: Sequence[str]) -> kmock.KubernetesError:
    causes = []
    for problem in problems:
        field, _, text = problem.partition(": ")
        causes.append({"reason": "FieldValueInvalid", "message": text or problem, "field": field})
    message = f'{rt.kind}.{rt.group or "core"} "{name}" is invalid: ' + "; ".join(problems)
    return _error(422, "Invalid", message, name=name, group=rt.group, kind=rt.kind, causes=causes)


def _conflict(rt: ResourceType, name: str) -> kmock.KubernetesError:
    message = (
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": '
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    return _error(409, "Conflict", message, name=name, group=rt.group, kind=rt.plural)


# ---------------------------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch without the per-field list strategies: a merge patch that obeys `$patch`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "delete":
        return None
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $setElementOrder/..., $retainKeys, $deleteFromPrimitiveList/...
        merged = None if value is None else strategic_merge_patch(result.get(key), value)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
    return result


def apply_patch(rt: ResourceType, name: str, current: Obj, content_type: str, body: Any) -> Obj:
    if content_type == "application/json-patch+json":
        if not isinstance(body, list):
            raise _error(400, "BadRequest", "a JSON patch must be a list of operations")
        try:
            result = jsonpatch.JsonPatch(body).apply(current)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            # kopf reads 422 as "the resourceVersion test failed, retry on the next cycle".
            raise invalid(rt, name, [f"<patch>: {exc}"]) from exc
        return dict(result)
    if not isinstance(body, dict):
        raise _error(400, "BadRequest", "a merge patch must be a JSON object")
    if content_type == "application/merge-patch+json":
        return dict(merge_patch(current, body))
    if content_type == "application/strategic-merge-patch+json":
        return dict(strategic_merge_patch(current, body))
    raise _error(415, "UnsupportedMediaType", f"the patch type {content_type!r} is not supported here")


# ---------------------------------------------------------------------------------------------- selectors

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[^\s!=,()]+)\s*(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[^,\s]*))?\s*$"
)


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p.strip()]


def _requirement(key: str, op: str, values: set[str], negated: bool) -> Callable[[Mapping[str, str]], bool]:
    def test(labels: Mapping[str, str]) -> bool:
        if not op:
            return (key in labels) != negated
        return (labels.get(key) in values) == (op in ("=", "==", "in"))

    return test


def label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """The string form of a label selector (`a=b,c!=d,e in (x,y),!f,g`) as a predicate over labels."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_selector(text):
        match = _REQUIREMENT.match(part)
        if match is None:
            raise _error(400, "BadRequest", f"unable to parse requirement: {part!r}")
        values = {v.strip() for v in (match["val"] or "").strip("()").split(",")}
        tests.append(_requirement(match["key"], (match["op"] or "").strip(), values, bool(match["neg"])))
    return lambda labels: all(test(labels) for test in tests)


def _field_test(path: str, op: str, value: str) -> Callable[[Obj], bool]:
    def test(obj: Obj) -> bool:
        return (str(_dig(obj, path.split(".")) or "") == value) != (op == "!=")

    return test


def field_selector(text: str) -> Callable[[Obj], bool]:
    """`metadata.name=x,spec.nodeName!=y` as a predicate over objects (dotted paths, = / == / !=)."""
    tests: list[Callable[[Obj], bool]] = []
    for part in _split_selector(text):
        match = re.match(r"^\s*([^!=\s]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if match is None:
            raise _error(400, "BadRequest", f"invalid field selector: {part!r}")
        tests.append(_field_test(*match.groups()))
    return lambda obj: all(test(obj) for test in tests)


def _dig(value: Any, path: Sequence[str]) -> Any:
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


# ---------------------------------------------------------------------------------------------- tables

_FILTER = re.compile(r'^\[\?\(@\.([\w.]+)\s*==\s*["\']([^"\']*)["\']\)\]')
_STEP = re.compile(r"^(?:\.([\w-]+)|\[(\d+)\])")


def json_path(obj: Any, path: str) -> Any:
    """The subset of kubectl JSONPath used in printer columns: `.a.b`, `[0]`, `[?(@.type=="Ready")]`."""
    values: list[Any] = [obj]
    rest = path.strip().removeprefix("{").removesuffix("}")
    while rest:
        if found := _FILTER.match(rest):
            key, wanted = found.groups()
            values = [i for v in values if isinstance(v, list) for i in v if str(_dig(i, key.split("."))) == wanted]
        elif found := _STEP.match(rest):
            name, index = found.groups()
            if name is not None:
                values = [v[name] for v in values if isinstance(v, dict) and name in v]
            else:
                values = [v[int(index)] for v in values if isinstance(v, list) and int(index) < len(v)]
        else:
            return None
        rest = rest[found.end():]
    return values[0] if values else None


def _age(timestamp: Any) -> str:
    try:
        then = datetime.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(rt: ResourceType, objs: Sequence[Obj], rv: str, include: str) -> Obj:
    """A meta.k8s.io/v1 Table, as `kubectl get` asks for, with the CRD's printer columns."""
    columns: list[Mapping[str, Any]] = [{"name": "Name", "type": "string", "format": "name", "priority": 0}]
    columns += [{"priority": 0, **c} for c in rt.columns] or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "priority": 0}
    ]
    rows = []
    for obj in objs:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in columns[1:]:
            value = json_path(obj, column["jsonPath"])
            cells.append(_age(value) if column["type"] == "date" and value is not None else value)
        shown: Obj = obj
        if include != "Object":
            shown = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append({"cells": cells, "object": shown})
    definitions = [{k: v for k, v in c.items() if k != "jsonPath"} for c in columns]
    for definition in definitions:
        definition.setdefault("description", "")
        definition.setdefault("format", "")
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": definitions,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------- schemas


def prune(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Drop fields the structural schema does not know (as the API server does); return their paths."""
    dropped: list[str] = []
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or extra is not None or not props
        for key in list(value):
            if key in props:
                dropped += prune(props[key], value[key], f"{path}.{key}" if path else key)
            elif isinstance(extra, dict):
                dropped += prune(extra, value[key], f"{path}[{key}]")
            elif not keep_unknown and not (not path and key in ("apiVersion", "kind", "metadata")):
                dropped.append(f"{path}.{key}" if path else key)
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            dropped += prune(schema["items"], item, f"{path}[{index}]")
    return dropped


# ---------------------------------------------------------------------------------------------- the store


@dataclass(eq=False)
class _Watcher:
    rt: ResourceType
    namespace: str | None
    accepts: Callable[[Obj], bool]
    wakeup: asyncio.Event


class Store:
    """Objects by resource, one global resourceVersion, a bounded event log per resource (pure, sync)."""

    def __init__(self, crds: CRDRegistry) -> None:
        self.types: dict[ResKey, ResourceType] = {}
        self.objects: dict[ResKey, dict[tuple[str | None, str], Obj]] = {}
        self.log: dict[ResKey, deque[tuple[int, Obj]]] = {}
        self.floor: dict[ResKey, int] = {}  # the newest resourceVersion dropped from the log
        self.watchers: set[_Watcher] = set()
        self.writes: Counter[tuple[str, str]] = Counter()
        self.rv = 0
        self.crds = crds
        self.warnings: list[str] = []  # for the request being served; sent as Warning headers
        for rt in BUILTINS:
            self.register(rt)
        for crd in crds.crds:
            self.create(self.types[_CRDS], None, copy.deepcopy(dict(crd)), {})
        self.create(self.types[("", "v1", "namespaces")], None, {"metadata": {"name": "default"}}, {})

    def register(self, rt: ResourceType) -> None:
        self.types[rt.key] = rt
        self.objects.setdefault(rt.key, {})
        self.log.setdefault(rt.key, deque(maxlen=WATCH_LOG))
        self.floor.setdefault(rt.key, 0)

    def _register_crd(self, crd: Obj) -> None:
        for rt in crd_resource_types(crd):
            self.register(rt)
        crds = [c for c in self.crds.crds if c["metadata"]["name"] != crd["metadata"]["name"]]
        self.crds = CRDRegistry([*crds, crd])

    # -- reading

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.objects[rt.key].get((namespace if rt.namespaced else None, name))
        if obj is None:
            raise not_found(rt, name)
        return obj

    def list(self, rt: ResourceType, namespace: str | None, accepts: Callable[[Obj], bool]) -> list[Obj]:
        found = [
            obj for (ns, _), obj in self.objects[rt.key].items()
            if (namespace is None or ns == namespace) and accepts(obj)
        ]
        return sorted(found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    # -- writing

    def _commit(self, rt: ResourceType, event: str, obj: Obj) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = (obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if event == "DELETED":
            self.objects[rt.key].pop(key, None)
        else:
            self.objects[rt.key][key] = obj
        log = self.log[rt.key]
        if len(log) == log.maxlen:
            self.floor[rt.key] = log[0][0]
        log.append((self.rv, {"type": event, "object": obj}))
        for watcher in self.watchers:
            if watcher.rt.key == rt.key:
                watcher.wakeup.set()
        if rt.key == _CRDS and event != "DELETED":
            self._register_crd(obj)
        return obj

    def _check_schema(self, rt: ResourceType, obj: Obj, validation: str) -> Obj:
        schema = self.crds.schema_for(rt.api_version, rt.kind)
        if schema is None:
            return obj
        name = obj["metadata"].get("name", "")
        if validation == "Strict":
            problems = [p for p in self.crds.validate(obj, strict=True) if p.endswith(": unknown field")]
            if problems:
                raise invalid(rt, name, problems)
        obj = self.crds.apply_defaults(obj)
        dropped = prune(schema, obj)
        if validation != "Ignore":
            self.warnings += [f'unknown field "{path}"' for path in dropped]
        problems = self.crds.validate(obj, strict=False)
        if problems:
            raise invalid(rt, name, problems)
        return obj

    def create(self, rt: ResourceType, namespace: str | None, body: Any, params: Mapping[str, str]) -> Obj:
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", rt.api_version)
        obj.setdefault("kind", rt.kind)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice(_SUFFIX) for _ in range(5))
        name = meta.get("name") or ""
        if (obj["apiVersion"], obj["kind"]) != (rt.api_version, rt.kind):
            raise _error(400, "BadRequest", f"the API version/kind in the body ({obj['apiVersion']}, {obj['kind']})"
                         f" does not match the URL ({rt.api_version}, {rt.kind})")
        if not _NAME.match(name):
            raise invalid(rt, name, [f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 subdomain"])
        if rt.namespaced:
            if meta.get("namespace", namespace) != namespace or namespace is None:
                raise _error(400, "BadRequest", "the namespace of the provided object does not match the request")
            meta["namespace"] = namespace
            if (None, namespace) not in self.objects[("", "v1", "namespaces")]:
                raise not_found(self.types[("", "v1", "namespaces")], namespace)
        else:
            meta.pop("namespace", None)
        if (meta.get("namespace"), name) in self.objects[rt.key]:
            message = f'{rt.qualified} "{name}" already exists'
            raise _error(409, "AlreadyExists", message, name=name, group=rt.group, kind=rt.plural)
        if rt.status:
            obj.pop("status", None)  # set through the status subresource only
        if rt.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        obj = self._check_schema(rt, obj, params.get("fieldValidation", "Warn"))
        meta = obj["metadata"]
        for server_side in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            meta.pop(server_side, None)
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now())
        return self._commit(rt, "ADDED", obj)

    def update(
        self, rt: ResourceType, namespace: str | None, name: str, change: Callable[[Obj], Obj],
        subresource: str | None, params: Mapping[str, str],
    ) -> Obj:
        """Apply `change` (a PUT body or a patch) to a copy; keep what the endpoint may not change."""
        if subresource not in (None, "status") or (subresource == "status" and not rt.status):
            raise _error(404, "NotFound", f"the server could not find the requested resource ({subresource})")
        old = self.get(rt, namespace, name)
        wanted = change(copy.deepcopy(old))
        if not isinstance(wanted, dict):
            raise _error(400, "BadRequest", "the result must be a JSON object")
        wanted_meta: Obj = wanted["metadata"] if isinstance(wanted.get("metadata"), dict) else {}
        if wanted_meta.get("resourceVersion") not in (None, "", old["metadata"]["resourceVersion"]):
            raise _conflict(rt, name)
        if subresource == "status":
            new = copy.deepcopy(old)
            if wanted.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = wanted["status"]
        else:
            new = wanted
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if rt.status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
            meta = {k: v for k, v in wanted_meta.items() if v is not None}
            for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                meta.pop(fixed, None)
                if fixed in old["metadata"]:
                    meta[fixed] = old["metadata"][fixed]
            new["metadata"] = meta
        new = self._check_schema(rt, new, params.get("fieldValidation", "Warn"))
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        if _spec_of(new) != _spec_of(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._commit(rt, "DELETED", new)
        return self._commit(rt, "MODIFIED", new)

    def delete(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        old = self.get(rt, namespace, name)
        if not old["metadata"].get("finalizers"):
            return self._commit(rt, "DELETED", copy.deepcopy(old))
        if old["metadata"].get("deletionTimestamp"):
            return old
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        return self._commit(rt, "MODIFIED", new)


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


# ---------------------------------------------------------------------------------------------- HTTP


def parse_path(path: str) -> parsing.ParsedPath:
    """kmock's path parsing, plus `/api/v1/namespaces[/<name>[/status|finalize]]`, which kmock 0.8 misreads."""
    parts = path.strip("/").split("/")
    start = 2 if parts[:1] == ["api"] else 3 if parts[:1] == ["apis"] else 0
    rest = parts[start:] if start and len(parts) > start else []
    own_subresource = len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[:1] == ["namespaces"] and (len(rest) <= 2 or own_subresource):
        group = "" if start == 2 else parts[1]
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if own_subresource else None
        return parsing.ParsedPath(group, parts[start - 1], "namespaces", None, name, subresource)
    return parsing.parse_path(path)


async def parse_request(raw: aiohttp.web.BaseRequest, *, id: int) -> rendering.Request:
    body = await raw.read()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    k8s = parse_path(raw.path)
    resource = None if k8s.group is None else kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
    return rendering.Request(
        id=id, raw_request=raw, url=raw.url, method=raw.method, params=dict(raw.query), headers=dict(raw.headers),
        cookies=dict(raw.cookies), data=data, body=body, text=body.decode("utf-8", "replace"),
        action=parsing.guess_k8s(k8s, kmock.method(raw.method), dict(raw.query)),
        resource=resource, namespace=k8s.namespace, name=k8s.name, subresource=k8s.subresource,
    )


@attrs.define(kw_only=True)
class KubeHandler(kmock.KubernetesEmulator):
    """kmock's emulator with our store behind every resource request; discovery stays kmock's."""

    store: Store
    served: int = 0
    streams: set[asyncio.Task[Any]] = attrs.field(factory=set)

    def sync_discovery(self) -> None:
        """Describe every registered resource to kmock's discovery endpoints."""
        for rt in self.store.types.values():
            self.resources[kmock.resource(rt.group, rt.version, rt.plural)] = kmock.ResourceInfo(
                namespaced=rt.namespaced, kind=rt.kind, singular=rt.kind.lower(), verbs=VERBS,
                shortnames=rt.short_names, categories=rt.categories, subresources={"status"} if rt.status else set(),
            )

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.served += 1
        try:
            request = await parse_request(raw, id=self.served)
            if request.resource is not None and request.resource.plural is not None:
                return await self._serve(request, raw)
            return await self._discover(request)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        except Exception as exc:
            logger.exception("The API emulator failed on %s %s", raw.method, raw.path_qs)
            return await self._render_error(_error(500, "InternalError", repr(exc)))

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        """kmock's APIResourceList, with the core group's groupVersion ("v1", not "/v1") and real subresources."""
        result = await super()._serve_version(request)
        if isinstance(result, dict):
            result["groupVersion"] = str(result["groupVersion"]).lstrip("/")
            for entry in result["resources"]:
                if "/" in entry["name"]:
                    entry.update(singularName="", shortNames=[], categories=[], verbs=["get", "patch", "update"])
        return result

    async def _discover(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Discovery and unknown URLs go to kmock's scaffold, which sees only the request being served."""
        self._requests.append(request)  # kmock's reactions match requests the root has recorded
        try:
            return await apps.RawHandler._handle(self, request)
        finally:
            self._requests.clear()  # keep memory flat: kmock would keep every request forever
            for payload in self._payloads:
                payload._requests.clear()

    def _type(self, request: rendering.Request) -> ResourceType:
        assert request.resource is not None
        key = (request.resource.group or "", request.resource.version or "", request.resource.plural or "")
        if key not in self.store.types:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return self.store.types[key]

    async def _serve(self, request: rendering.Request, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        rt = self._type(request)
        store, params, name, namespace = self.store, request.params, request.name, request.namespace
        method = raw.method.upper()
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            plural = f"{rt.plural}/{request.subresource}" if request.subresource else rt.plural
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
            store.writes[verb, plural] += 1
        store.warnings = []
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, raw, rt)
        status, result = 200, None
        if method == "GET" and name is None:
            accepts = _selectors(params)
            items = store.list(rt, namespace, accepts)
            result = self._list(rt, items, raw)
        elif method == "GET":
            result = store.get(rt, namespace, name or "")
            if request.subresource not in (None, "status"):
                raise _error(404, "NotFound", "the server could not find the requested resource")
            if "as=Table" in raw.headers.get("Accept", ""):
                result = table(rt, [result], str(store.rv), params.get("includeObject", "Metadata"))
        elif method == "POST" and name is None:
            result, status = store.create(rt, namespace, request.data, params), 201
        elif method == "PUT" and name is not None:
            body = request.data
            result = store.update(rt, namespace, name, lambda _: body, request.subresource, params)
        elif method == "PATCH" and name is not None:
            content_type = raw.content_type
            body = request.data

            def change(current: Obj) -> Obj:
                return apply_patch(rt, name, current, content_type, body)

            result = store.update(rt, namespace, name, change, request.subresource, params)
        elif method == "DELETE" and name is not None:
            result = store.delete(rt, namespace, name)
        elif method == "DELETE":
            for obj in store.list(rt, namespace, _selectors(params)):
                store.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            result = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        else:
            raise _error(405, "MethodNotAllowed", f"{method} is not supported on {raw.path}")
        headers = {"Warning": ", ".join(f'299 - "{w}"' for w in store.warnings)} if store.warnings else None
        return aiohttp.web.json_response(result, status=status, headers=headers)

    def _list(self, rt: ResourceType, items: list[Obj], raw: aiohttp.web.BaseRequest) -> Obj:
        rv = str(self.store.rv)
        if "as=Table" in raw.headers.get("Accept", ""):
            return table(rt, items, rv, raw.query.get("includeObject", "Metadata"))
        return {"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": {"resourceVersion": rv},
                "items": items}

    async def _watch(
        self, request: rendering.Request, raw: aiohttp.web.BaseRequest, rt: ResourceType
    ) -> aiohttp.web.StreamResponse:
        store, params = self.store, request.params
        by_selectors = _selectors(params)
        name = request.name

        def accepts(obj: Obj) -> bool:
            return (name is None or obj["metadata"]["name"] == name) and by_selectors(obj)

        watcher = _Watcher(rt, request.namespace, accepts, asyncio.Event())
        as_table = "as=Table" in raw.headers.get("Accept", "")
        include = params.get("includeObject", "Metadata")
        since = params.get("resourceVersion", "")
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        task = asyncio.current_task()
        if task is not None:
            self.streams.add(task)
        store.watchers.add(watcher)

        async def send(event: Obj) -> None:
            if as_table and event["type"] != "ERROR":
                event = {**event, "object": table(rt, [event["object"]], str(store.rv), include)}
            await response.write(json.dumps(event).encode() + b"\n")

        try:
            async with asyncio.timeout(float(params.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)):
                if since in ("", "0"):
                    last = store.rv
                    for obj in store.list(rt, request.namespace, accepts):
                        await send({"type": "ADDED", "object": obj})
                    if params.get("sendInitialEvents") == "true":
                        bookmark = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {
                            "resourceVersion": str(last), "annotations": {"k8s.io/initial-events-end": "true"}}}
                        await send({"type": "BOOKMARK", "object": bookmark})
                else:
                    last = int(since) if since.isdigit() else 0
                async for event in _events(store, watcher, last):
                    await send(event)
        except TimeoutError:
            pass
        except (ConnectionError, asyncio.CancelledError):
            return response
        finally:
            store.watchers.discard(watcher)
            if task is not None:
                self.streams.discard(task)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


async def _events(store: Store, watcher: _Watcher, last: int) -> AsyncIterator[Obj]:
    """Logged events newer than `last` for this watcher, then live ones as they come; 410 if `last` is gone."""
    key = watcher.rt.key
    while True:
        if last < store.floor[key]:
            yield {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                               "status": "Failure", "reason": "Expired", "code": 410,
                                               "message": f"too old resource version: {last} ({store.floor[key]})"}}
            return
        watcher.wakeup.clear()
        fresh = []
        for rv, event in reversed(store.log[key]):
            if rv <= last:
                break
            fresh.append((rv, event))
        for rv, event in reversed(fresh):
            last = rv
            obj = event["object"]
            ns = obj["metadata"].get("namespace")
            if (watcher.namespace is None or ns == watcher.namespace) and watcher.accepts(obj):
                yield event
        if not fresh:
            await watcher.wakeup.wait()


def _selectors(params: Mapping[str, str]) -> Callable[[Obj], bool]:
    labels = label_selector(params.get("labelSelector", ""))
    fields = field_selector(params.get("fieldSelector", ""))
    return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj)


# ---------------------------------------------------------------------------------------------- facade


class ApiEmulator:
    """A Kubernetes API on 127.0.0.1 that kopf and kubectl can use."""

    def __init__(self, crd_paths: Sequence[Path], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._crds = load_crds(list(crd_paths)) if crd_paths else CRDRegistry([])
        self._host, self._port = host, port
        self._handler: KubeHandler | None = None
        self._runner: aiohttp.web.ServerRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._url = ""

    async def __aenter__(self) -> ApiEmulator:
        handler = KubeHandler(store=Store(self._crds))
        handler.sync_discovery()
        await handler.__aenter__()
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(handler, handler_cancellation=True), shutdown_timeout=1)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._handler, self._runner, self._loop = handler, runner, asyncio.get_running_loop()
        host, port = runner.addresses[0][:2]
        self._url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        handler, runner = self._handler, self._runner
        self._handler = self._runner = self._loop = None
        if handler is not None:
            for task in list(handler.streams):
                task.cancel()
        if runner is not None:
            await runner.cleanup()
        if handler is not None:
            await handler.__aexit__(None, None, None)

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("the API emulator is not running")
        return self._url

    @property
    def store(self) -> Store:
        if self._handler is None:
            raise RuntimeError("the API emulator is not running")
        return self._handler.store

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig (cluster, user and context `tinymlops-local`) for kubectl, kopf and the client."""
        return write_kubeconfig(path, self.url)

    def objects(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Deep copies of the current objects (safe to call from another thread than the emulator's)."""
        key = (group, version, plural)
        found: list[Obj] = self._in_loop(lambda: copy.deepcopy(self.store.list(self.store.types[key], namespace, _all)))
        return found

    @property
    def writes(self) -> Counter[tuple[str, str]]:
        """Mutating requests served so far, by (verb, plural[/subresource]): ("patch", "edgemodels/status")."""
        writes: Counter[tuple[str, str]] = self._in_loop(lambda: Counter(self.store.writes))
        return writes

    @property
    def write_count(self) -> int:
        return sum(self.writes.values())

    def _in_loop(self, read: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            return read()

        async def call() -> Any:
            return read()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    @contextlib.contextmanager
    def running_in_thread(self, timeout: float = 10.0) -> Iterator[ApiEmulator]:
        """Serve from a daemon thread with its own event loop, for synchronous callers (CLI, demo)."""
        ready, failure = threading.Event(), []
        stop: list[Callable[[], object]] = []

        async def main() -> None:
            try:
                async with self:
                    stopped = asyncio.Event()
                    loop = asyncio.get_running_loop()
                    stop.append(lambda: loop.call_soon_threadsafe(stopped.set))
                    ready.set()
                    await stopped.wait()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                raise

        thread = threading.Thread(target=asyncio.run, args=(main(),), name="tinymlops-api-emulator", daemon=True)
        thread.start()
        if not ready.wait(timeout) or failure:
            raise RuntimeError("the API emulator did not start") from (failure[0] if failure else None)
        try:
            yield self
        finally:
            stop[0]()
            thread.join(timeout)


def _all(_: Obj) -> bool:
    return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
