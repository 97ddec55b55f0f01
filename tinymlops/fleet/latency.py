"""The latency a simulated device reports: its class's speed × the variant's measured latency, with jitter (pure).

The simulator runs every device's inferences for real, on the host, so outputs
and errors are real; but the host's wall time is not a device's latency.  Under
thousands of agents installing a new model at once it measures how busy the
host is, and a canary analysis comparing just-switched canary devices with
settled stable ones then sees noise as a regression (a healthy canary of 5,000
devices was rolled back on a p95 ratio of 3.7).  So a simulated device reports

    latency = the variant's latency in the menu (measured p50 on the build host, or
              the size-based proxy for cross-compiled variants: selection/energy.py)
              × its class's slowdown (the same module: the model the energy estimate uses too)
              × lognormal jitter (seeded per device, median 1)
              × a cold-start factor for the first inferences after a switch, fading out,

so it depends on what the device is and what it runs, never on the host.  The
device agent itself (`tinymlops.agent`) reports measured wall time on a real
device; only the simulator plugs this model in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from tinymlops.selection.energy import host_latency_ms, target_model

JITTER_SIGMA = 0.15  # of log latency: p95 ≈ 1.28 × median, as a quiet device's inference times spread
COLD_START_FACTOR = 3.0  # the first inference after a switch takes 3x; then 1 + 2 × 0.25^k for the k-th
COLD_DECAY = 0.25


class ModelledLatency:
    """One device's reported latency in ms: call it with the variant it ran and inferences since the switch."""

    def __init__(self, device_class: str, *, seed: str) -> None:
        self.speed = target_model(device_class).slowdown  # one per-class model, shared with the energy estimate
        self.rng = random.Random(seed)  # a str seed is stable across runs and processes (unlike hash())

    def __call__(self, variant: Mapping[str, Any], since_switch: int) -> float:
        return modelled_ms(host_latency_ms(variant), self.speed, since_switch, self.rng.gauss(0.0, JITTER_SIGMA))


def modelled_ms(base_ms: float, speed: float, since_switch: int, log_jitter: float) -> float:
    """The latency for a variant measured at `base_ms` on the build host, on a class `speed` times slower."""
    cold = 1.0 + (COLD_START_FACTOR - 1.0) * COLD_DECAY ** max(since_switch, 0)
    return base_ms * speed * math.exp(log_jitter) * cold
