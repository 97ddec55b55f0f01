"""The hybrid scenario's link trace and its report section (pure).

The link is simulated: each step of the trace names a link, whose bandwidth and round-trip time make the
seconds a request takes (`SimulatedLink`); the tails and the cloud variant run for real on the gateway.  A
device's compute comes from its class (the menu's host latency times the class's slowdown), never from this
host's wall time, which under a whole simulated fleet says nothing about a device.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tinymlops.errors import GatewayError

# name: (bandwidth in bit/s, round-trip ms); None: no link at all.
LINKS: Mapping[str, tuple[float, float] | None] = {
    "lan": (100e6, 0.3),  # an edge server on the same switch
    "wifi": (30e6, 3.0),
    "lte": (10e6, 40.0),
    "edge": (0.2e6, 400.0),  # 2G EDGE
    "offline": None,
}
TRACE: tuple[str, ...] = ("lan",) * 8 + ("wifi",) * 8 + ("lte",) * 6 + ("offline",) * 4 + ("edge",) * 6 + ("lan",) * 8
STEP_S = 5.0  # simulated seconds per step: the devices' clock, so probes and retries follow the trace


class SimulatedLink:
    """The seconds a request of n bytes takes on the link of the current step, the server's ms included;
    GatewayError when the step has no link (the request is then not sent)."""

    def __init__(self, name: str = TRACE[0]) -> None:
        self.name = name

    def __call__(self, size_bytes: int, server_ms: float) -> float:
        link = LINKS[self.name]
        if link is None:
            raise GatewayError(f"no link ({self.name}, simulated)")
        bandwidth_bps, rtt_ms = link
        return (rtt_ms + 8_000.0 * size_bytes / bandwidth_bps + server_ms) / 1000


@dataclass(frozen=True)
class Inference:
    step: int
    device: str
    link: str
    mode: str  # what ran: "local", "split@k", "cascade-local", "cascade-cloud"
    ms: float  # end to end, simulated
    best_ms: float | None  # the fastest of local and the split points on the true link; None for a cascade
    sent_bytes: int


def summarise(inferences: Sequence[Inference], reasons: Mapping[str, Sequence[str]]) -> dict[str, object]:
    """The report's `hybrid` section: choices over time, latency per mode, bytes sent, cascade share, and how
    far the choice was from the best mode on the true link (cascades excluded: they buy accuracy)."""
    timeline = []
    for step in sorted({i.step for i in inferences}):
        at = [i for i in inferences if i.step == step]
        timeline.append({"step": step, "t_s": step * STEP_S, "link": at[0].link,
                         "modes": dict(sorted(Counter(_family(i.mode) for i in at).items()))})
    by_mode: dict[str, list[float]] = {}
    for i in inferences:
        by_mode.setdefault(_family(i.mode), []).append(i.ms)
    cascades = [i for i in inferences if i.mode.startswith("cascade")]
    timed = [i for i in inferences if i.best_ms is not None]
    chosen, best = sum(i.ms for i in timed), sum(i.best_ms or 0.0 for i in timed)
    return {
        "trace": {"step_s": STEP_S, "links": {k: None if v is None else {"bandwidth_bps": v[0], "rtt_ms": v[1]}
                                              for k, v in LINKS.items()}},
        "inferences": len(inferences),
        "timeline": timeline,
        "latency_ms": {mode: {"n": len(ms), "p50": round(statistics.median(ms), 4), "mean": round(
            statistics.fmean(ms), 4)} for mode, ms in sorted(by_mode.items())},
        "bytes_sent": sum(i.sent_bytes for i in inferences),
        "cascade_share": round(sum(i.mode == "cascade-cloud" for i in cascades) / len(cascades), 4)
        if cascades else None,
        "vs_best": {"chosen_ms": round(chosen, 3), "best_ms": round(best, 3),
                    "excess": round(chosen / best - 1, 4) if best else None, "inferences": len(timed)},
        "reasons": {device: list(seen) for device, seen in sorted(reasons.items())},
    }


def _family(mode: str) -> str:
    """"split@3" → "split", so the timeline counts modes, not points."""
    return mode.split("@")[0]
