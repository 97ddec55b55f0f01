"""How a watch follows the store: replay the logged events after a resourceVersion, then wait for more.

The store keeps a bounded log of events per resource and wakes the watchers of a resource on every
write; a watch that asks to resume from a resourceVersion older than the log gets 410 Expired, so that
kopf and kubectl relist exactly as they do against a real API server. Plain asyncio, no HTTP here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tinymlops.stack.emulator.resources import Obj, ResourceType

if TYPE_CHECKING:
    from tinymlops.stack.emulator.store import Store

DEFAULT_WATCH_SECONDS = 1800.0


@dataclass(eq=False)
class Watcher:
    """One open watch: what it selects, and the event the store sets when the resource changes."""

    rt: ResourceType
    namespace: str | None
    accepts: Callable[[Obj], bool]
    wakeup: asyncio.Event


async def events(store: Store, watcher: Watcher, last: int) -> AsyncIterator[Obj]:
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
