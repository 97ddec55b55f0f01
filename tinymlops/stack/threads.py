"""Event loops in background threads, so the embedded stack's parts run side by side.

The API emulator and the gateway share one loop, the kopf operator has its own
(as it would in its own pod), and the fleet simulator a third: a busy fleet
then slows neither the API server nor the operator's reconciliation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        """Run `coro` on this thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class OperatorThread:
    """The kopf operator (all handlers of `tinymlops_operator.main`) on its own loop, cluster-wide."""

    def __init__(self) -> None:
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        import logging

        import kopf

        from tinymlops_operator import main  # noqa: F401  (registers the handlers)

        # kopf warns that a thread cannot receive OS signals: stop_flag is how this one stops.
        logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)
        try:
            asyncio.run(kopf.operator(clusterwide=True, stop_flag=self.stop_flag, ready_flag=self.ready_flag))
        except BaseException as exc:  # surfaced by wait_ready(); the thread must not die silently
            self.error = exc
            self.ready_flag.set()

    def start(self, timeout: float = 30) -> None:
        self._thread.start()
        if not self.ready_flag.wait(timeout):
            raise TimeoutError(f"the operator did not start within {timeout:.0f} s")
        if self.error is not None:
            raise RuntimeError(f"the operator failed to start: {self.error}") from self.error

    def stop(self, timeout: float = 15) -> bool:
        """Ask kopf to stop (it runs its cleanup handlers) and wait; False if it is still running."""
        self.stop_flag.set()
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()
