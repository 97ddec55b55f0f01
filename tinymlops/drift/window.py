"""The device side of drift telemetry: count inferences into the menu's bins, one window at a time.

`DriftRecorder.observe` is called by the agent for every inference with the input
and the output it just computed; it keeps only counts (`Monitoring.count`, the
function the factory's reference counts came from) in the open window of the
running model's menu and revision.

A window opens with its first inference and closes when it has counted
`windowInferences` inferences or, with the policy's `windowSeconds`, when that
long has passed since its first inference, whichever comes first.  Time is the
agent's clock, handed in as `now` (a simulated device's clock is the agent's
too): the recorder keeps none of its own.  The agent checks the time limit when
it infers (a window past its time closes before the new inference is counted, which
then opens the next) and when it reports (`close_due`), so a quiet device's window
still goes out on time.  A window with no inference never opens, so nothing is sent
for a period without inferences; a window closed on time with few rows is sent
all the same, its `rows` saying how much it weighs.

On closing, in `histograms` mode the window's exact counts are queued for the
next report; in `histograms+dp` mode the budget ledger is charged and the counts
are noised (`privacy.py`) right then, so a release is made once whatever happens
to the report that carries it (and showing the next report twice shows the same
noise); when the day's budget is spent the window is withheld and the next report
says so.  ε is per window whatever closed it, so short windows spend the daily
budget sooner.  A model switch to another menu, revision or variant discards the open
window: its counts are in the old model's bins, or of the old variant's outputs, and
each window names the one variant that counted it (the fleet compares its outputs
with that variant's reference).

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
from tinymlops.drift.privacy import BudgetLedger, estimated_rows, noisy
from tinymlops.drift.reference import Counts, Monitoring
from tinymlops.errors import MissingExtraError
from tinymlops.report import DriftHistograms

MAX_PENDING = 4


@dataclass(frozen=True)
class Source:
    """Which model's bins the open window counts in, and which variant counts it."""

    menu_sha256: str
    revision: int
    variant_sha256: str  # `drift.reference.variant_sha256` of the running variant's menu entry


class DriftRecorder:
    def __init__(self, ledger: BudgetLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else BudgetLedger(DriftPolicy.daily_epsilon)
        self.source: Source | None = None
        self.open: Counts | None = None
        self.rows = 0
        self.opened_at: float | None = None  # when the open window counted its first inference (the agent's clock)
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
            self.source, self.open, self.rows, self.opened_at = source, None, 0, None
        self.close_due(policy, now)  # a window past its time closes before this inference, which opens the next
        counted = bins.count(np.asarray(sample)[None], np.asarray(output)[None])
        if self.open is None:
            self.open, self.opened_at = counted, now
        else:
            self.open = self.open + counted
        self.rows += 1
        if self.rows >= policy.window_inferences:
            self._close(policy, now)

    def close_due(self, policy: DriftPolicy, now: float) -> None:
        """Close the open window if `windowSeconds` have passed since its first inference.

        A window whose start is unknown (saved before windows were timed) or lies ahead
        of `now` (the clock was set back) is timed from `now`: it closes at most
        `windowSeconds` later rather than waiting for the clock to catch up."""
        if not policy.enabled or policy.window_seconds is None or self.open is None:
            return
        if self.opened_at is None or now < self.opened_at:
            self.opened_at = now
        elif now - self.opened_at >= policy.window_seconds:
            self._close(policy, now)

    def take(self) -> tuple[DriftHistograms | None, str | None]:
        """The oldest closed window to report, and why windows were withheld since the last call."""
        withheld = "; ".join(self.withheld) or None
        self.withheld = []
        return (self.pending.popleft() if self.pending else None), withheld

    def _close(self, policy: DriftPolicy, now: float) -> None:
        assert self.open is not None and self.source is not None
        counts, rows, index = self.open, self.rows, self.window
        self.open, self.rows, self.opened_at, self.window = None, 0, None, self.window + 1
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
            if rows < policy.window_inferences:  # closed on time: its exact rows would tell the device's activity
                rows = estimated_rows(counts, policy.window_inferences)
        if len(self.pending) == MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append(DriftHistograms(
            menu_sha256=self.source.menu_sha256, revision=self.source.revision,
            variant_sha256=self.source.variant_sha256, window=index, rows=rows,
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
                                                            "revision": self.source.revision,
                                                            "variant_sha256": self.source.variant_sha256},
                "open": None if self.open is None else self.open.to_json(), "rows": self.rows,
                "opened_at": self.opened_at,
                "window": self.window, "pending": [p.to_json() for p in self.pending],
                "withheld": list(self.withheld), "dropped": self.dropped}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], ledger: BudgetLedger | None = None) -> DriftRecorder:
        recorder = cls(ledger)
        source, open_counts = raw.get("source"), raw.get("open")
        # A state saved before windows named their variant: that window's variant is unknown, so it is dropped.
        if source is not None and "variant_sha256" not in source:
            source = open_counts = None
        recorder.source = None if source is None else Source(str(source["menu_sha256"]), int(source["revision"]),
                                                             str(source["variant_sha256"]))
        if open_counts is not None:
            recorder.open = Counts(tuple(np.asarray(h, dtype=np.int64) for h in open_counts["features"]),
                                   np.asarray(open_counts["confidence"], dtype=np.int64),
                                   np.asarray(open_counts["classes"], dtype=np.int64))
        recorder.rows, recorder.window = int(raw.get("rows", 0)), int(raw.get("window", 0))
        opened_at = raw.get("opened_at")
        recorder.opened_at = None if opened_at is None else float(opened_at)
        recorder.pending = deque(DriftHistograms.from_json(p, where=f"pending[{i}]")
                                 for i, p in enumerate(raw.get("pending", [])) if "variant_sha256" in p)
        recorder.withheld = [str(w) for w in raw.get("withheld", [])]
        recorder.dropped = int(raw.get("dropped", 0))
        return recorder
