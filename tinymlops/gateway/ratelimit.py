"""A token bucket per device, so no one device can take the gateway's time from the others (pure).

Each device's bucket holds up to `burst` tokens and refills at `rate` tokens per
second; a report costs one.  The burst lets a device that was offline flush its
outbox in one batch (the agent keeps at most 64 reports, `DEFAULT_BUFFER` in
`agent/telemetry.py`), and the rate is its fair share afterwards: a device that
reports every 10 to 30 seconds never meets the default limit, a broken or hostile
one sending in a loop does.  The clock is injected, so tests step time by hand.

Memory grows with the devices asked about, so the caller asks only about devices
it has authenticated: the gateway's registry bounds them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

DEFAULT_RATE = 1.0  # reports per second, per device
DEFAULT_BURST = 64.0  # reports: a full outbox


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self, *, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst = rate, burst
        self.clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}

    def allow(self, who: Hashable) -> bool:
        """Take one token from `who`'s bucket; False (and nothing taken) when it is empty."""
        now = self.clock()
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = _Bucket(self.burst, now)
        else:
            # max(): a clock that steps back refills nothing rather than draining the bucket.
            elapsed = max(now - bucket.updated, 0.0)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = max(now, bucket.updated)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def forget(self, who: Hashable) -> None:
        """Drop `who`'s bucket (a device no longer registered): memory stays bounded by the registry."""
        self._buckets.pop(who, None)
