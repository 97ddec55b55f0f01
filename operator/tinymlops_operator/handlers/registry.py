"""Publish the device registry to the artifact store when the Devices' identity keys change (IO).

kopf keeps the identities in an index (`main.device_identity_index`, from each
Device's annotation) and calls `device_event` on every Device event; the event
marks the registry dirty, and `publish_forever` (one task for the operator's
lifetime) writes it at most once per `DEBOUNCE_S`, and only when its bytes
changed: a thousand Devices appearing at once, or their twins updating every
few seconds, cost one write or none.  The first write waits for the first
Device event, which kopf delivers only once its indexes are filled, so the
operator never publishes a registry from a half-read cluster.  The registry is
a store write, not an API write; the only API write here is the Warning Event on
a Device whose key is malformed, once per bad value.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from tinymlops.layout import DEVICE_REGISTRY_KEY
from tinymlops.signing import IDENTITY_ANNOTATION
from tinymlops_operator.logic.registry import DeviceIdentity, device_identity, registry_bytes
from tinymlops_operator.runtime import Runtime

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.5
IdentityIndex = Mapping[tuple[str, str], Iterable[DeviceIdentity]]


class RegistryPublisher:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.index: IdentityIndex | None = None
        self.dirty = asyncio.Event()
        self.written: bytes | None = None
        self.warned: dict[tuple[str, str], str] = {}  # device -> the problem already announced
        self.seen: dict[tuple[str, str], str | None] = {}  # device -> its identity annotation, as last seen

    def device_event(self, index: IdentityIndex, *, body: kopf.Body, namespace: str, name: str,
                     annotations: Mapping[str, str], deleted: bool = False) -> None:
        """A Device was listed, changed or deleted: publish soon if its key changed; warn once about a bad key.

        Twins update Devices every few seconds; only a change of the annotation (or a deletion) marks the
        registry dirty, so a large fleet's twin traffic costs a dict lookup each, not a rebuilt registry."""
        self.index = index
        device = (namespace, name)
        value = None if deleted else annotations.get(IDENTITY_ANNOTATION)
        if deleted or device not in self.seen or self.seen[device] != value:
            self.dirty.set()
        if deleted:
            self.seen.pop(device, None)
            self.warned.pop(device, None)
            return
        self.seen[device] = value
        identity = device_identity(namespace, name, annotations)
        problem = identity.problem if identity is not None else None
        if problem is None:
            self.warned.pop(device, None)
        elif self.warned.get(device) != problem:
            self.warned[device] = problem
            log.warning("%s", problem)
            kopf.warn(body, reason="InvalidIdentityKey", message=problem)

    def snapshot(self) -> bytes | None:
        """The registry's bytes as the index holds it now (read on the event loop, where kopf changes it)."""
        if self.index is None:
            return None
        return registry_bytes(identity for identities in self.index.values() for identity in identities)

    def write(self, data: bytes) -> bool:
        """Write `data` if it differs from what this operator last wrote (or, the first time, from the store)."""
        if data == self.written:
            return False
        if self.written is None and self._stored() == data:
            self.written = data  # a restarted operator: the gateway already has this one
            return False
        self.runtime.store.put(DEVICE_REGISTRY_KEY, data)
        self.written = data
        log.info("device registry published: %d bytes at %s", len(data), DEVICE_REGISTRY_KEY)
        return True

    def _stored(self) -> bytes | None:
        try:
            return self.runtime.store.get(DEVICE_REGISTRY_KEY)
        except FileNotFoundError:
            return None

    async def publish_forever(self) -> None:
        while True:
            await self.dirty.wait()
            await asyncio.sleep(DEBOUNCE_S)
            self.dirty.clear()
            data = self.snapshot()
            if data is None:
                continue
            try:
                await asyncio.to_thread(self.write, data)
            except Exception:  # the store away: try again in a while
                log.exception("device registry not published")
                self.dirty.set()
                await asyncio.sleep(5.0)


def identity_entry(namespace: str, name: str, annotations: Mapping[str, str]) -> dict[Any, DeviceIdentity]:
    """The index entry of one Device: its identity, or nothing without the annotation."""
    identity = device_identity(namespace, name, annotations)
    return {} if identity is None else {(namespace, name): identity}
