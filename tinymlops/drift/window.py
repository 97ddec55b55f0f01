"""The device side of drift telemetry: count inferences into the menu's bins, one window at a time.

`DriftRecorder.observe` is called by the agent for every inference with the input
and the output it just computed; it keeps only counts (`Monitoring.count`, the
function the factory's reference counts came from) in the open window of the
running model's menu and revision.  When the window has counted
`windowInferences` inferences it closes: in `histograms` mode its exact counts
are queued for the next report; in `histograms+dp` mode the budget ledger is
charged and the counts are noised (`privacy.py`) right then, so a release is made
once whatever happens to the report that carries it (and showing the next report
twice shows the same noise); when the day's budget is spent the window is
withheld and the next report says so.  A model switch to another menu or revision
discards the open window: its counts are in the old model's bins.

Bounded: at most MAX_PENDING closed windows wait for a report (the oldest is
dropped first, counted in `dropped`); inputs and outputs are never kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.drift.policy import DriftPolicy
from tinymlops.drift.privacy import BudgetLedger, noisy
from tinymlops.drift.reference import Counts, Monitoring
from tinymlops.errors import MissingExtraError
from tinymlops.report import DriftHistograms

MAX_PENDING = 4


@dataclass(frozen=True)
class Source:
    """Which model's bins the open window counts in."""

    menu_sha256: str
    revision: int


class DriftRecorder:
    def __init__(self, ledger: BudgetLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else BudgetLedger(DriftPolicy.daily_epsilon)
        self.source: Source | None = None
        self.open: Counts | None = None
        self.rows = 0
        self.window = 0  # the index the open window will have
        self.pending: deque[DriftHistograms] = deque()
        self.withheld: list[str] = []
        self.dropped = 0
        self._monitoring: tuple[str, Monitoring] | None = None  # parsed once per menu

    def observe(self, policy: DriftPolicy, source: Source, monitoring: Mapping[str, Any],
                sample: NDArray[np.floating], output: NDArray[np.floating], *, now: float) -> None:
        """Count one inference (`sample` in, `output` out) into the open window of `source`'s bins."""
        if not policy.enabled:
            return
        bins = self._parsed(source.menu_sha256, monitoring)
        if source != self.source:
            self.source, self.open, self.rows = source, None, 0
        counted = bins.count(np.asarray(sample)[None], np.asarray(output)[None])
        self.open = counted if self.open is None else self.open + counted
        self.rows += 1
        if self.rows >= policy.window_inferences:
            self._close(policy, now)

    def take(self) -> tuple[DriftHistograms | None, str | None]:
        """The oldest closed window to report, and why windows were withheld since the last call."""
        withheld = "; ".join(self.withheld) or None
        self.withheld = []
        return (self.pending.popleft() if self.pending else None), withheld

    def _close(self, policy: DriftPolicy, now: float) -> None:
        assert self.open is not None and self.source is not None
        counts, rows, index = self.open, self.rows, self.window
        self.open, self.rows, self.window = None, 0, self.window + 1
        epsilon = None
        if policy.private:
            self.ledger.daily_epsilon = policy.daily_epsilon
            if not self.ledger.spend(policy.epsilon, now):
                self.withheld.append(f"drift window {index} withheld: the daily privacy budget is spent "
                                     f"({self.ledger.spent:g} of {policy.daily_epsilon:g} today)")
                return
            try:
                counts = noisy(counts, policy.epsilon)
            except MissingExtraError as exc:  # never send exact counts when the fleet asked for noise
                self.withheld.append(f"drift window {index} withheld: {exc}")
                return
            epsilon = policy.epsilon
        if len(self.pending) == MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append(DriftHistograms(
            menu_sha256=self.source.menu_sha256, revision=self.source.revision, window=index, rows=rows,
            mode=policy.mode, epsilon=epsilon,
            features=tuple(tuple(int(c) for c in h) for h in counts.features),
            confidence=tuple(int(c) for c in counts.confidence), classes=tuple(int(c) for c in counts.classes)))

    def _parsed(self, menu_sha256: str, monitoring: Mapping[str, Any]) -> Monitoring:
        if self._monitoring is None or self._monitoring[0] != menu_sha256:
            self._monitoring = (menu_sha256, Monitoring.from_json(monitoring))
        return self._monitoring[1]

    # --- a standalone device keeps its open window between runs (`tinymlops agent infer`) ----------

    def to_json(self) -> dict[str, Any]:
        """The recorder's state: counts and indices only, never an input."""
        return {"source": None if self.source is None else {"menu_sha256": self.source.menu_sha256,
                                                            "revision": self.source.revision},
                "open": None if self.open is None else self.open.to_json(), "rows": self.rows,
                "window": self.window, "pending": [p.to_json() for p in self.pending],
                "withheld": list(self.withheld), "dropped": self.dropped}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], ledger: BudgetLedger | None = None) -> DriftRecorder:
        recorder = cls(ledger)
        source, open_counts = raw.get("source"), raw.get("open")
        recorder.source = None if source is None else Source(str(source["menu_sha256"]), int(source["revision"]))
        if open_counts is not None:
            recorder.open = Counts(tuple(np.asarray(h, dtype=np.int64) for h in open_counts["features"]),
                                   np.asarray(open_counts["confidence"], dtype=np.int64),
                                   np.asarray(open_counts["classes"], dtype=np.int64))
        recorder.rows, recorder.window = int(raw.get("rows", 0)), int(raw.get("window", 0))
        recorder.pending = deque(DriftHistograms.from_json(p, where=f"pending[{i}]")
                                 for i, p in enumerate(raw.get("pending", [])))
        recorder.withheld = [str(w) for w in raw.get("withheld", [])]
        recorder.dropped = int(raw.get("dropped", 0))
        return recorder
