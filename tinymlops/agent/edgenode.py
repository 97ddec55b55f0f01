"""An edge node's local cache between its devices and the gateway (what KubeEdge's edgecore does).

Devices behind one edge node ask for the same plan, menu and blobs; the node fetches
each once and answers its devices locally: a plan or menu is revalidated with the
gateway (conditional GET) at most once per `max_age_s`, a blob never (content-addressed,
immutable), and concurrent requests for the same key share one fetch.  The cache
changes no trust decision: every device still verifies signatures and digests itself.

When the node sees a new plan it wakes its devices (`plan_changed`), as KubeEdge's
edgecore pushes changes to its devices over MQTT: a rollout step reaches a device
in about one revalidation, not one device poll interval.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from tinymlops.errors import GatewayError
from tinymlops.layout import PLAN_FILE, is_blob_key, signature_key


@dataclass
class _Entry:
    status: int
    body: bytes
    etag: str | None
    fetched: float


Response = tuple[int, bytes, str | None]


class EdgeNode:
    def __init__(self, gateway_url: str, http: aiohttp.ClientSession, *, max_age_s: float = 1.0) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.http = http
        self.max_age_s = max_age_s
        self.upstream_requests = 0
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self._plan_changed = asyncio.Event()

    def plan_changed(self) -> asyncio.Event:
        """Set once the node fetches new plan bytes; a fresh event is armed for the next change."""
        return self._plan_changed

    async def get(self, key: str, etag: str | None = None) -> Response:
        """(status, body, etag) for `key`, as the gateway would answer; 304 when `etag` is still current."""
        entry = self._entries.get(key)
        if entry is None or not self._fresh(key, entry):
            entry = await self._refresh(key, entry)
        if etag is not None and entry.status == 200 and etag == entry.etag:
            return 304, b"", entry.etag
        return entry.status, entry.body, entry.etag

    def _fresh(self, key: str, entry: _Entry) -> bool:
        immutable = is_blob_key(key) and entry.status == 200
        return immutable or time.monotonic() - entry.fetched < self.max_age_s

    async def _refresh(self, key: str, entry: _Entry | None) -> _Entry:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            fresh = await self._fetch(key, entry)
            if key.endswith(".json") and (entry is None or fresh.etag != entry.etag):
                # New signed bytes: their signature changed with them, so never pair them with a cached one.
                self._entries.pop(signature_key(key), None)
                if key.endswith(f"/{PLAN_FILE}") and entry is not None:
                    changed, self._plan_changed = self._plan_changed, asyncio.Event()
                    changed.set()
            self._entries[key] = fresh
            future.set_result(fresh)
            return fresh
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiting devices get it, nobody logs it as lost
            raise
        finally:
            del self._inflight[key]

    async def _fetch(self, key: str, entry: _Entry | None) -> _Entry:
        headers = {"If-None-Match": entry.etag} if entry is not None and entry.etag else {}
        self.upstream_requests += 1
        try:
            async with self.http.get(f"{self.gateway_url}/v1/store/{key}", headers=headers) as response:
                if response.status >= 500:
                    raise GatewayError(f"gateway answered {response.status} for {key}")
                now = time.monotonic()
                if response.status == 304 and entry is not None:
                    return _Entry(entry.status, entry.body, entry.etag, now)
                return _Entry(response.status, await response.read(), response.headers.get("ETag"), now)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayError(f"gateway unreachable ({type(exc).__name__})") from exc
