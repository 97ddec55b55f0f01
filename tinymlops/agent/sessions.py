"""Loaded runtimes shared by digest: memory grows with variants, not with devices.

A real device holds one or two sessions; the fleet simulator runs thousands of
devices in one process, and those running the same verified bytes share one
onnxruntime session (sessions are safe to run concurrently).  Only the device
that really loaded a digest has a load time to report: the others loaded
nothing, and a 0 from each of them would drown the real load times in the
gateway's load histogram.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from tinymlops.errors import ModelLoadError
from tinymlops.runners import Runner, VariantRunner


class SessionCache:
    def __init__(self) -> None:
        self._runners: dict[str, VariantRunner] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def load(
        self, sha256: str, blob: bytes, variant: Mapping[str, Any] | None = None
    ) -> tuple[VariantRunner, float | None]:
        """The runner for verified model bytes and the milliseconds this call spent loading them; None when the
        runner was already loaded (shared by digest: nothing was loaded, so there is no load time).

        ONNX variants load in onnxruntime; `tvm-lib` variants (built for this architecture) in the TVM runtime.
        ModelLoadError when the runtime refuses the bytes.
        """
        with self._lock:
            runner = self._runners.get(sha256)
            if runner is not None:
                return runner, None
            start = time.perf_counter()
            try:
                runner = load_runner(blob, variant)
            except Exception as exc:  # the runtime's own error (onnxruntime's, TVM's, its extra missing): named
                what = f"variant {variant['id']}" if variant is not None else f"model {sha256[:12]}…"
                raise ModelLoadError(f"{what}: the runtime cannot load it ({exc})") from exc
            self._runners[sha256] = runner
            self.loads += 1
            return runner, (time.perf_counter() - start) * 1000

    def get(self, sha256: str) -> VariantRunner | None:
        """The loaded runner for a digest, if this process holds it."""
        with self._lock:
            return self._runners.get(sha256)

    def __len__(self) -> int:
        return len(self._runners)


def load_runner(model: bytes, variant: Mapping[str, Any] | None) -> VariantRunner:
    """The runtime a variant's format needs; the menu's health check names its input and output."""
    if variant is not None and variant.get("format") == "tvm-lib":
        from tinymlops.variants.tvm import TvmRunner

        check = variant.get("health_check") or {}
        return TvmRunner.load(model, input_name=str(check.get("input_name", "input")),
                              output_name=str(check.get("output_name", "output")))
    return Runner.load(model)
