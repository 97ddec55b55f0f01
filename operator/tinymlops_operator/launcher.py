"""Runs the variants pipeline without blocking the operator's event loop.

Builds are submitted to a single worker thread: `kfp.local` keeps global
state, and with a KFP backend the thread only waits for the remote run.
The handlers submit (idempotent per EdgeModel generation) and poll.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops_operator.logic.edgemodel import BuildRequest


@dataclass(frozen=True)
class Built:
    menu: Mapping[str, Any]  # the published menu, verified
    run: Mapping[str, str]  # the pipeline run that built it, as status.pipelineRun shows it (id, url)
    # licensee -> its watermarked menu, published beside the model's (spec.watermark; empty without)
    licensees: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


BuildFn = Callable[[BuildRequest], Built]


@dataclass(frozen=True)
class BuildOutcome:
    built: Built | None
    error: BaseException | None


class PipelineLauncher:
    def __init__(self, build: BuildFn) -> None:
        self._build = build
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        self._runs: dict[str, concurrent.futures.Future[Built]] = {}
        self._lock = threading.Lock()

    def submit(self, request: BuildRequest) -> None:
        """Start building `request` unless this very generation is already running."""
        with self._lock:
            if request.run_key not in self._runs:
                self._runs[request.run_key] = self._executor.submit(self._build, request)

    def knows(self, run_key: str) -> bool:
        with self._lock:
            return run_key in self._runs

    def poll(self, run_key: str) -> BuildOutcome | None:
        """The outcome once finished (forgetting the run), or None while it runs."""
        with self._lock:
            future = self._runs.get(run_key)
            if future is None or not future.done():
                return None
            del self._runs[run_key]
        error = future.exception()
        return BuildOutcome(built=None if error else future.result(), error=error)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
