"""The HTTP side: kmock's `KubernetesEmulator` with the store behind every resource request.

kmock keeps what it does well: discovery (`/api`, `/apis`, `/apis/<group>/<version>`, fed from the
`ResourceInfo` records `sync_discovery` writes), unknown URLs and the Status rendering of errors. Every
resource request (get, list, create, update, patch, delete, deletecollection, watch) is served here from
the store instead, because kmock's own object handling has no resourceVersion, generation, status
subresource, JSON patch, schemas or watch resumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import apps, rendering

from tinymlops.stack.emulator.documents import Documents
from tinymlops.stack.emulator.errors import ApiError, error
from tinymlops.stack.emulator.fields import duplicate_fields
from tinymlops.stack.emulator.parsing import parse_request
from tinymlops.stack.emulator.patches import apply_patch
from tinymlops.stack.emulator.resources import VERBS, Obj, ResourceType
from tinymlops.stack.emulator.selectors import query_selector
from tinymlops.stack.emulator.store import Store
from tinymlops.stack.emulator.tables import table
from tinymlops.stack.emulator.watches import DEFAULT_WATCH_SECONDS, Watcher, events

logger = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class KubeHandler(kmock.KubernetesEmulator):
    """kmock's emulator with our store behind every resource request; discovery stays kmock's."""

    store: Store
    served: int = 0
    streams: set[asyncio.Task[Any]] = attrs.field(factory=set)
    documents: Documents = attrs.field(default=attrs.Factory(lambda self: Documents(self.store), takes_self=True))

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
            document = self.documents.serve(raw.path, raw.headers.get("Accept", ""))
            if document is not None:
                return aiohttp.web.Response(body=document[0], content_type=document[1])
            request = await parse_request(raw, id=self.served)
            if request.resource is not None and request.resource.plural is not None:
                return await self._serve(request, raw)
            return await self._discover(request)
        except ApiError as exc:
            return await self._render_error(_as_kmock(exc))
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        except Exception as exc:
            logger.exception("The API emulator failed on %s %s", raw.method, raw.path_qs)
            return await self._render_error(_as_kmock(error(500, "InternalError", repr(exc))))

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
            raise error(404, "NotFound", "the server could not find the requested resource")
        return self.store.types[key]

    async def _serve(self, request: rendering.Request, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        rt = self._type(request)
        store, params, name, namespace = self.store, request.params, request.name, request.namespace
        method = raw.method.upper()
        plural = f"{rt.plural}/{request.subresource}" if request.subresource else rt.plural
        verb = _rbac_verb(method, name, params)
        store.requests[raw.headers.get("User-Agent", "").split("/")[0], verb, rt.group, plural] += 1
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            store.writes[verb, plural] += 1
        store.warnings = []
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, raw, rt)
        status, result = 200, None
        if method == "GET" and name is None:
            accepts = query_selector(params)
            items = store.list(rt, namespace, accepts)
            result = self._list(rt, items, raw)
        elif method == "GET":
            result = store.get(rt, namespace, name or "")
            if request.subresource not in (None, "status"):
                raise error(404, "NotFound", "the server could not find the requested resource")
            if "as=Table" in raw.headers.get("Accept", ""):
                result = table(rt, [result], str(store.rv), params.get("includeObject", "Metadata"))
        elif method == "POST" and name is None:
            result, status = store.create(rt, namespace, request.data, params, duplicate_fields(request.body)), 201
        elif method == "PUT" and name is not None:
            body = request.data
            result = store.update(rt, namespace, name, lambda _: body, request.subresource, params,
                                  duplicate_fields(request.body))
        elif method == "PATCH" and name is not None:
            content_type = raw.content_type
            body = request.data

            def change(current: Obj) -> Obj:
                return apply_patch(rt, name, current, content_type, body)

            patched_fields = () if content_type == "application/json-patch+json" else duplicate_fields(request.body)
            result = store.update(rt, namespace, name, change, request.subresource, params, patched_fields)
        elif method == "DELETE" and name is not None:
            result = store.delete(rt, namespace, name)
        elif method == "DELETE":
            for obj in store.list(rt, namespace, query_selector(params)):
                store.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            result = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        else:
            raise error(405, "MethodNotAllowed", f"{method} is not supported on {raw.path}")
        headers = {"Warning": ", ".join(f'299 - "{_quoted(w)}"' for w in store.warnings)} if store.warnings else None
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
        by_selectors = query_selector(params)
        name = request.name

        def accepts(obj: Obj) -> bool:
            return (name is None or obj["metadata"]["name"] == name) and by_selectors(obj)

        watcher = Watcher(rt, request.namespace, accepts, asyncio.Event())
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
                async for event in events(store, watcher, last):
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


def _rbac_verb(method: str, name: str | None, params: Any) -> str:
    """The verb an API server's authorizer would check for this request."""
    if method == "GET":
        if params.get("watch") in ("true", "1"):
            return "watch"
        return "list" if name is None else "get"
    if method == "DELETE" and name is None:
        return "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def _quoted(text: str) -> str:
    """The inside of an HTTP quoted-string (RFC 9110), as client-go's warning parser expects it."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _as_kmock(exc: ApiError) -> kmock.KubernetesError:
    """The same error as kmock's exception, which kmock renders as a Status object."""
    return kmock.KubernetesError(status=exc.status, reason=exc.reason, message=exc.message, details=exc.details)
