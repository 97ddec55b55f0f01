"""Updates that must never be averaged: non-finite values, or a step far longer than any honest client takes.

`screen` is the pure rule; `GuardedStrategy` wraps any Flower strategy (DP wrappers included) and drops such
replies before it aggregates, counting them per reason.  A robust strategy (FedMedian, Krum, FedTrimmedAvg)
still resists the subtler outliers this lets through.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from numpy.typing import NDArray

REASONS = ("non-finite", "oversized", "malformed")


def screen(update: Sequence[NDArray[np.float32]], current: Sequence[NDArray[np.float32]],
           max_update_norm: float) -> str | None:
    """Why `update` (a client's new arrays) must be dropped, one of REASONS, or None when it may be averaged."""
    if len(update) != len(current) or any(u.shape != c.shape for u, c in zip(update, current, strict=True)):
        return "malformed"
    if not all(np.isfinite(u).all() for u in update):
        return "non-finite"
    norm = float(np.sqrt(sum(float(np.sum((u.astype(np.float64) - c) ** 2)) for u, c in zip(update, current,
                                                                                          strict=True))))
    return "oversized" if norm > max_update_norm else None


class GuardedStrategy(Strategy):
    """`inner`, fed only the replies `screen` lets through; `dropped` counts the others by reason and round."""

    def __init__(self, inner: Strategy, max_update_norm: float) -> None:
        self.inner = inner
        self.max_update_norm = max_update_norm
        self.dropped: dict[int, Counter[str]] = {}
        self.sampled: dict[int, int] = {}
        self.replied: dict[int, int] = {}
        self._current: list[NDArray[np.float32]] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = arrays.to_numpy_ndarrays()
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.sampled[server_round] = len(messages)
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept, dropped = [], Counter[str]()
        for reply in replies:
            if reply.has_error():
                continue  # a client that failed sent nothing to average
            records = list(reply.content.array_records.values())
            reason = "malformed" if len(records) != 1 else screen(records[0].to_numpy_ndarrays(), self._current,
                                                                  self.max_update_norm)
            if reason is None:
                kept.append(reply)
            else:
                dropped[reason] += 1
        self.dropped[server_round] = dropped
        self.replied[server_round] = len(kept)
        if not kept:
            return None, None
        return self.inner.aggregate_train(server_round, kept)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
