"""Loaded runtimes shared by digest: memory grows with variants, not with devices.

A real device holds one or two sessions; the fleet simulator runs thousands of
devices in one process, and those running the same verified bytes share one
onnxruntime session (sessions are safe to run concurrently).
"""

from __future__ import annotations

import threading
import time

from tinymlops.variants.evaluate import Runner


class SessionCache:
    def __init__(self) -> None:
        self._runners: dict[str, Runner] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def load(self, sha256: str, blob: bytes) -> tuple[Runner, float]:
        """The runner for verified `blob` and the milliseconds this call spent loading it (0 when shared)."""
        with self._lock:
            runner = self._runners.get(sha256)
            if runner is not None:
                return runner, 0.0
            start = time.perf_counter()
            runner = Runner.load(blob)
            self._runners[sha256] = runner
            self.loads += 1
            return runner, (time.perf_counter() - start) * 1000

    def get(self, sha256: str) -> Runner | None:
        """The loaded runner for a digest, if this process holds it."""
        with self._lock:
            return self._runners.get(sha256)

    def __len__(self) -> int:
        return len(self._runners)
