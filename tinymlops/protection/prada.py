"""PRADA-style model-extraction detection per client (Juuti et al. 2019), pure numpy + scipy.

For each query of a client the detector takes the L2 distance from the query to the nearest
earlier query *of the same predicted class*, keeps the last `window` such distances, and tests them
for normality with Shapiro-Wilk.  Benign queries (natural inputs) give a roughly normal spread of
nearest-neighbour distances; extraction attacks that synthesise queries from earlier ones
(Jacobian-based augmentation, Papernot et al. 2017; small perturbations of seed samples) add many
tiny distances next to the natural ones, and W drops.  The client is flagged when W < `delta`;
the flag stays raised (an attacker that pauses is still an attacker) until `reset`.

Bounds.  Earlier queries are kept per class in a ring buffer of `per_class` vectors (FIFO: the
oldest leaves first), so memory per client is at most
`classes * per_class * (features + 1) * 4` bytes of float32 queries and their squared norms plus
`window * 8` bytes of distances (digits: 10 * 64 * 65 * 4 = 162.5 KiB + 0.4 KiB); `Monitor` keeps at most `max_clients`
clients, forgetting the least recently seen (an evicted client starts over, an alarm included:
eviction needs `max_clients` other clients to query since, so an attacker cannot do it alone
without being one of them).  The test runs every `stride` queries once the window is full, which
keeps its cost (Shapiro-Wilk on `window` points) off most inferences.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

DEFAULT_CLIENT = "default"


@dataclass(frozen=True)
class PradaConfig:
    # Alarm when Shapiro-Wilk's W falls below this.  PRADA used about 0.9 to 0.96 on MNIST and GTSRB; on the digits
    # sample model natural queries reach W 0.79 at worst (30 shuffled orders of 1,000 queries) and Jacobian-augmentation
    # queries stay under 0.73, so 0.75 (benchmarks/prada.py measures both).
    delta: float = 0.75
    window: int = 50  # distances tested; an attack is flagged at the earliest when the window fills
    per_class: int = 64  # earlier queries kept per predicted class (FIFO)
    stride: int = 10  # run the test every `stride` distances once the window is full (its cost, amortised)
    max_clients: int = 16

    def memory_bytes(self, classes: int, features: int) -> int:
        """The most one client's state holds (queries and distances; Python object overhead aside)."""
        return classes * self.per_class * (features + 1) * 4 + self.window * 8


@dataclass(frozen=True)
class Alarm:
    client: str
    since: float  # when it was raised (the caller's clock)
    w: float  # the Shapiro-Wilk statistic that raised it


class ClientDetector:
    """One client's query history and test (what a `Monitor` keeps per client)."""

    def __init__(self, config: PradaConfig) -> None:
        self.config = config
        self._seen: dict[int, NDArray[np.float32]] = {}  # class -> ring buffer (per_class, features)
        self._norms: dict[int, NDArray[np.float32]] = {}  # class -> |g|² of each vector in its ring
        self._filled: dict[int, int] = {}  # class -> vectors written so far (the ring's write position mod per_class)
        self.distances: deque[float] = deque(maxlen=config.window)
        self.queries = 0
        self.w: float | None = None  # the last test's statistic; None: not tested yet
        self._since_test = 0

    def observe(self, query: NDArray[np.float32], predicted: int) -> float | None:
        """Record one query with its predicted class; the new W when the test ran, else None."""
        x = query if query.dtype == np.float32 and query.ndim == 1 else np.asarray(query, np.float32).reshape(-1)
        self.queries += 1
        ring = self._seen.get(predicted)
        if ring is None or ring.shape[1] != x.shape[0]:
            ring = self._seen[predicted] = np.empty((self.config.per_class, x.shape[0]), np.float32)
            self._norms[predicted] = np.empty(self.config.per_class, np.float32)
            self._filled[predicted] = 0
        norms, filled = self._norms[predicted], self._filled[predicted]
        squared = float(x @ x)
        if filled:
            n = min(filled, self.config.per_class)
            # |g - x|² = |g|² - 2 g·x + |x|², one matrix-vector product over the class's earlier queries
            nearest = float((norms[:n] - 2.0 * (ring[:n] @ x)).min()) + squared
            self.distances.append(math.sqrt(nearest) if nearest > 0.0 else 0.0)
            self._since_test += 1
        ring[filled % self.config.per_class] = x
        norms[filled % self.config.per_class] = squared
        self._filled[predicted] = filled + 1
        if len(self.distances) < self.config.window or self._since_test < self.config.stride:
            return None
        self._since_test = 0
        self.w = shapiro_w(np.fromiter(self.distances, np.float64, len(self.distances)))
        return self.w


def shapiro_w(distances: NDArray[np.float64]) -> float:
    """Shapiro-Wilk's W for `distances`; 1.0 (perfectly normal, no alarm) when they do not vary at all."""
    if np.ptp(distances) == 0.0:
        # Identical distances: nothing to test.  All zero is one query repeated, which teaches a thief nothing.
        return 1.0
    return float(_shapiro()(distances).statistic)


@functools.cache
def _shapiro() -> Callable[[NDArray[np.float64]], Any]:
    """scipy's Shapiro-Wilk test without its axis/NaN-policy decorator (`inspect.unwrap`).

    The decorator handles `axis`, `nan_policy` and masked arrays, none of which a window of finite 1-D distances
    needs, and it costs ~10x the test itself (53 µs against 4.7 µs for 50 points on the machine this was written
    on; benchmarks/prada.py measures the detector with it).  The same function computes W either way: a test holds
    the two equal."""
    from scipy.stats import shapiro  # the `protection` extra; Monitor checks it is there

    test: Callable[[NDArray[np.float64]], Any] = inspect.unwrap(shapiro)
    return test


class Monitor:
    """PRADA detectors for a bounded number of clients (least recently seen forgotten first), and their alarms."""

    def __init__(self, config: PradaConfig | None = None) -> None:
        self.config = config or PradaConfig()
        self._clients: OrderedDict[str, ClientDetector] = OrderedDict()
        self.alarms: dict[str, Alarm] = {}  # client -> its alarm (raised once, kept until reset)

    def observe(self, client: str, query: NDArray[np.float32], predicted: int, now: float) -> Alarm | None:
        """Feed one query; the client's alarm if it is raised (now or earlier), else None."""
        detector = self._clients.get(client)
        if detector is None:
            detector = self._clients[client] = ClientDetector(self.config)
            while len(self._clients) > self.config.max_clients:
                evicted, _ = self._clients.popitem(last=False)
                self.alarms.pop(evicted, None)
        else:
            self._clients.move_to_end(client)
        w = detector.observe(query, predicted)
        if w is not None and w < self.config.delta and client not in self.alarms:
            self.alarms[client] = Alarm(client, now, round(w, 6))
        return self.alarms.get(client)

    def to_json(self) -> dict[str, Any]:
        """What outlives a process (a standalone device's state directory): clients and alarms, no query."""
        return {"clients": self.clients(),
                "alarms": [{"client": a.client, "since": a.since, "w": a.w} for a in self.alarms.values()]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], config: PradaConfig | None = None) -> Monitor:
        """A monitor with the saved clients (their query history starts over) and their alarms still raised."""
        monitor = cls(config)
        for client in [str(c) for c in raw.get("clients", [])][-monitor.config.max_clients:]:
            monitor._clients[client] = ClientDetector(monitor.config)
        for alarm in raw.get("alarms", []):
            client = str(alarm["client"])
            if client in monitor._clients:
                monitor.alarms[client] = Alarm(client, float(alarm["since"]), float(alarm["w"]))
        return monitor

    def alarmed(self, client: str) -> bool:
        return client in self.alarms

    def clients(self) -> list[str]:
        return list(self._clients)

    def reset(self, client: str) -> None:
        self._clients.pop(client, None)
        self.alarms.pop(client, None)
