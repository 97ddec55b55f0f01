"""The fleet's drift policy, read in one place: `policy.telemetry.drift` of the signed plan (camelCase).

    {"mode": "off" | "histograms" | "histograms+dp", "epsilon": 1.0,
     "windowInferences": 500, "windowSeconds": 3600 (optional), "dailyEpsilon": 10.0}

`off` (the default) sends nothing; `histograms` sends exact counts; `histograms+dp`
noised ones at `epsilon` per window, and no more than `dailyEpsilon` per device and
UTC day (`privacy.py`).

Windows.  A window closes when it has counted `windowInferences` inferences or,
with `windowSeconds` set, when that many seconds have passed since its first
inference, whichever comes first (`window.py`).  A window opens with its first
inference, so a device that infers nothing sends nothing; a window closed on time
with few rows is sent all the same, its `rows` telling the fleet how much it
weighs.  Without `windowSeconds` a quiet device may hold a window open for days:
the time limit is what makes its drift show while it is still news.  Each window
costs `epsilon` in `histograms+dp` mode, so shorter windows spend the daily budget
sooner.  The DeviceFleet CRD validates the same fields
(crds/devicefleets.tinymlops.io.yaml); an agent that reads a policy it cannot use
raises SpecError naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import SpecError

MODES = ("off", "histograms", "histograms+dp")


@dataclass(frozen=True)
class DriftPolicy:
    mode: str = "off"
    epsilon: float = 1.0  # privacy loss per window (histograms+dp)
    window_inferences: int = 500  # a window closes after this many inferences
    daily_epsilon: float = 10.0  # the most a device spends per UTC day; later windows are withheld
    # A window also closes this long after its first inference, whichever comes first; None: on count only
    window_seconds: int | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def private(self) -> bool:
        return self.mode == "histograms+dp"

    @classmethod
    def from_policy(cls, policy: Mapping[str, Any] | None) -> DriftPolicy:
        """The drift policy of a plan's (or a standalone device's) `policy` object."""
        raw = ((policy or {}).get("telemetry") or {}).get("drift") or {}
        where = "policy.telemetry.drift"
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: is not an object")
        mode = raw.get("mode", "off")
        if mode not in MODES:
            raise SpecError(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}")
        epsilon = _positive(raw.get("epsilon", cls.epsilon), f"{where}.epsilon")
        daily = _positive(raw.get("dailyEpsilon", cls.daily_epsilon), f"{where}.dailyEpsilon")
        window = raw.get("windowInferences", cls.window_inferences)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise SpecError(f"{where}.windowInferences: {window!r} is not an integer >= 1")
        seconds = raw.get("windowSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1):
            raise SpecError(f"{where}.windowSeconds: {seconds!r} is not an integer >= 1 (seconds)")
        if mode == "histograms+dp" and epsilon > daily:
            raise SpecError(f"{where}.epsilon: {epsilon} per window is more than dailyEpsilon {daily}: "
                            "no window could ever be sent")
        return cls(mode=str(mode), epsilon=epsilon, window_inferences=window, window_seconds=seconds,
                   daily_epsilon=daily)


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SpecError(f"{what}: {value!r} is not a number > 0")
    return float(value)
