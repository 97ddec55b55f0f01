"""`ApiEmulator`: the handler served on loopback, for the local stack, the demo and the tests.

It owns the aiohttp server around `KubeHandler`, writes the kubeconfig that points kubectl, kopf and the
client at it, and offers thread-safe reads of the store (objects, write counts) to callers that run
outside the emulator's event loop; `running_in_thread` serves it for synchronous callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp.web

from tinymlops.kube.schema import CRDRegistry, load_crds
from tinymlops.stack.emulator.handler import KubeHandler
from tinymlops.stack.emulator.resources import Obj
from tinymlops.stack.emulator.store import Store
from tinymlops.stack.kubeconfig import write_kubeconfig


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
    def requests(self) -> Counter[tuple[str, str, str, str]]:
        """Resource requests served so far, by (client, verb, group, plural[/subresource]); the client is the
        User-Agent's product ("kopf", "tinymlops-operator", "kubectl", ...): what each one's RBAC must allow."""
        requests: Counter[tuple[str, str, str, str]] = self._in_loop(lambda: Counter(self.store.requests))
        return requests

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
