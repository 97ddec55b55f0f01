"""Context traces for simulated devices: battery, charger, network and outages over time (pure).

Deterministic per device (seeded by its index), so a run can be repeated.  Battery-powered
classes drain while serving and charge on a schedule; some devices sit on metered networks;
a share of the fleet drops off the network for a while and comes back.  The simulator asks
`context_at(t)` each poll and hands the result to the agent, which may switch variant offline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tinymlops.selection import DeviceContext

BATTERY_CLASSES = ("rpi-zero-2", "jetson-nano")  # the classes that run on batteries in the demo fleet


@dataclass(frozen=True)
class Trace:
    battery_start: float | None  # None: mains-powered
    drain_pct_per_s: float
    charge_at_s: float | None  # when the charger is plugged in (seconds into the trace)
    metered: bool
    outage: tuple[float, float] | None  # (start, end) seconds without network

    def context_at(self, t: float) -> DeviceContext:
        network = "metered" if self.metered else "wifi"
        if self.outage is not None and self.outage[0] <= t < self.outage[1]:
            network = "offline"
        if self.battery_start is None:
            return DeviceContext(network=network)
        charging = self.charge_at_s is not None and t >= self.charge_at_s
        drained = self.battery_start - self.drain_pct_per_s * min(t, self.charge_at_s or t)
        level = max(1.0, drained)
        return DeviceContext(battery_pct=round(level), charging=charging, network=network)


def make_trace(index: int, device_class: str, *, duration_s: float, seed: int = 0) -> Trace:
    """One device's trace over `duration_s`: battery devices fall below 20 % around the middle of it,
    and a third of them are plugged in during the last quarter; 10 % of all devices lose the network
    for a fifth of the run; 20 % are on metered networks."""
    rng = random.Random(seed * 1_000_003 + index)
    battery = device_class in BATTERY_CLASSES
    start = rng.uniform(35.0, 60.0) if battery else None
    # Reach ~10 % at 60 % of the run: the low-battery rule fires for every battery device mid-run.
    drain = ((start or 0) - 10.0) / (0.6 * duration_s) if battery else 0.0
    charge = rng.uniform(0.75, 0.9) * duration_s if battery and rng.random() < 1 / 3 else None
    outage = None
    if rng.random() < 0.1:
        begin = rng.uniform(0.2, 0.6) * duration_s
        outage = (begin, begin + 0.2 * duration_s)
    return Trace(start, drain, charge, rng.random() < 0.2, outage)
