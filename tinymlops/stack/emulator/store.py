"""The objects behind the emulator: what the API server does to an object between request and etcd.

Objects live in memory by resource, under one global resourceVersion counter. Creating and updating
fill in the server-side metadata (uid, generation, creationTimestamp, generateName), keep what an
endpoint may not change (status outside the status subresource, and the reverse), apply the CRD
schemas (defaults, pruning, validation: failures are 422 Invalid), refuse stale resourceVersions (409),
and hold deletions until the finalizers are gone. Every write is logged for the watches (`watches.py`).
Synchronous and free of HTTP: the request handler calls it from the event loop.
"""

from __future__ import annotations

import copy
import datetime
import re
import secrets
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tinymlops.kube.schema import CRDRegistry
from tinymlops.stack.emulator.builtins import BUILTIN_SCHEMAS
from tinymlops.stack.emulator.errors import conflict, error, invalid, not_found
from tinymlops.stack.emulator.fields import directive, field_messages, strict_error
from tinymlops.stack.emulator.resources import BUILTINS, CRDS, Obj, ResKey, ResourceType, crd_resource_types
from tinymlops.stack.emulator.schemas import prune
from tinymlops.stack.emulator.watches import Watcher

WATCH_LOG = 20_000  # watch events kept per resource for resumption; older resourceVersions get 410
_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # what the API server appends to generateName
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Objects by resource, one global resourceVersion, a bounded event log per resource (pure, sync)."""

    def __init__(self, crds: CRDRegistry) -> None:
        self.types: dict[ResKey, ResourceType] = {}
        self.objects: dict[ResKey, dict[tuple[str | None, str], Obj]] = {}
        self.log: dict[ResKey, deque[tuple[int, Obj]]] = {}
        self.floor: dict[ResKey, int] = {}  # the newest resourceVersion dropped from the log
        self.watchers: set[Watcher] = set()
        self.writes: Counter[tuple[str, str]] = Counter()
        # (client, verb, group, resource[/subresource]) of every resource request: what RBAC must allow.
        self.requests: Counter[tuple[str, str, str, str]] = Counter()
        self.rv = 0
        self.crds = crds
        self.warnings: list[str] = []  # for the request being served; sent as Warning headers
        for rt in BUILTINS:
            self.register(rt)
        for crd in crds.crds:
            self.create(self.types[CRDS], None, copy.deepcopy(dict(crd)), {})
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
        if rt.key == CRDS and event != "DELETED":
            self._register_crd(obj)
        return obj

    def _check_schema(self, rt: ResourceType, obj: Obj, params: Mapping[str, str], duplicates: Sequence[str]) -> Obj:
        """Prune, default and validate as the API server does; unknown and duplicate fields per fieldValidation."""
        validation = directive(params)
        schema = self.crds.schema_for(rt.api_version, rt.kind) or BUILTIN_SCHEMAS.get((rt.api_version, rt.kind))
        if schema is None:
            return obj
        obj = self.crds.apply_defaults(obj)
        fields = field_messages(prune(schema, obj), duplicates)
        if fields and validation == "Strict":
            raise strict_error(rt, fields)
        if validation == "Warn":
            self.warnings += fields
        if self.crds.schema_for(rt.api_version, rt.kind) is not None:
            problems = self.crds.validate(obj, strict=False)
            if problems:
                raise invalid(rt, obj["metadata"].get("name", ""), problems)
        return obj

    def create(
        self, rt: ResourceType, namespace: str | None, body: Any, params: Mapping[str, str],
        duplicates: Sequence[str] = (),
    ) -> Obj:
        if not isinstance(body, dict):
            raise error(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", rt.api_version)
        obj.setdefault("kind", rt.kind)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice(_SUFFIX) for _ in range(5))
        name = meta.get("name") or ""
        if (obj["apiVersion"], obj["kind"]) != (rt.api_version, rt.kind):
            raise error(400, "BadRequest", f"the API version/kind in the body ({obj['apiVersion']}, {obj['kind']})"
                         f" does not match the URL ({rt.api_version}, {rt.kind})")
        if not _NAME.match(name):
            raise invalid(rt, name, [f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 subdomain"])
        if rt.namespaced:
            if meta.get("namespace", namespace) != namespace or namespace is None:
                raise error(400, "BadRequest", "the namespace of the provided object does not match the request")
            meta["namespace"] = namespace
            if (None, namespace) not in self.objects[("", "v1", "namespaces")]:
                raise not_found(self.types[("", "v1", "namespaces")], namespace)
        else:
            meta.pop("namespace", None)
        if (meta.get("namespace"), name) in self.objects[rt.key]:
            message = f'{rt.qualified} "{name}" already exists'
            raise error(409, "AlreadyExists", message, name=name, group=rt.group, kind=rt.plural)
        if rt.status:
            obj.pop("status", None)  # set through the status subresource only
        if rt.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        obj = self._check_schema(rt, obj, params, duplicates)
        meta = obj["metadata"]
        for server_side in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            meta.pop(server_side, None)
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now())
        return self._commit(rt, "ADDED", obj)

    def update(
        self, rt: ResourceType, namespace: str | None, name: str, change: Callable[[Obj], Obj],
        subresource: str | None, params: Mapping[str, str], duplicates: Sequence[str] = (),
    ) -> Obj:
        """Apply `change` (a PUT body or a patch) to a copy; keep what the endpoint may not change."""
        if subresource not in (None, "status") or (subresource == "status" and not rt.status):
            raise error(404, "NotFound", f"the server could not find the requested resource ({subresource})")
        old = self.get(rt, namespace, name)
        wanted = change(copy.deepcopy(old))
        if not isinstance(wanted, dict):
            raise error(400, "BadRequest", "the result must be a JSON object")
        wanted_meta: Obj = wanted["metadata"] if isinstance(wanted.get("metadata"), dict) else {}
        if wanted_meta.get("resourceVersion") not in (None, "", old["metadata"]["resourceVersion"]):
            raise conflict(rt, name)
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
        new = self._check_schema(rt, new, params, duplicates)
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
