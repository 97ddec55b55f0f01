"""MetaSchedule tuning of a TVM host variant within a trial and time budget, cached by model and target.

Why: untuned TVM kernels are the default schedules (one loop nest per
operator, no tiling or vectorisation choices), 10-30x slower than
onnxruntime's hand-written kernels on x86, so no device would pick them.
MetaSchedule searches schedules per fused kernel, measuring candidates on
this machine, guided by an XGBoost cost model.

How: the fused module (`tvm.FUSION_PASSES`) is split into tuning tasks
(`relax_integration.tune_relax`); the search stops at `trials` measured
candidates or when the next round would end past `time_budget_s` (`tvm_search`'s
scheduler), whichever comes first.  The records go into
MetaSchedule's JSON database in `<cache>/tuning/<key>/`, where key = sha256 of
the model digest, the TVM target and the TVM version: a rebuild with a budget
no larger than the one recorded in `summary.json` reuses the database without
measuring anything; a larger budget tunes again, continuing from the records.

Tuning measures on the machine that builds, so only a target this machine can
run is tuned (the host's own architecture); `tvm.compile_onnx` builds the others
untuned and the menu says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.store import atomic_write, sha256_bytes

FIELD = "spec.variants.tuning"
# "600", "600s", "10m", "1h", "1h30m": what a person writes in an EdgeModel.
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")
MAX_TRIALS = 100_000
SUMMARY = "summary.json"


@dataclass(frozen=True)
class Tuning:
    """A tuning budget: at most `trials` measured candidates and `time_budget_s` seconds, whichever ends first."""

    trials: int
    time_budget_s: float

    @property
    def params(self) -> dict[str, Any]:
        return {"trials": self.trials, "time_budget_s": self.time_budget_s}

    def covered_by(self, other: Tuning) -> bool:
        """Whether a tuning run with budget `other` searched at least as much as this one asks."""
        return other.trials >= self.trials and other.time_budget_s >= self.time_budget_s


def parse_duration(value: Any, *, field: str = f"{FIELD}.timeBudget") -> float:
    """Seconds of `value`: a number of seconds or a duration such as 90s, 10m, 1h30m; SpecError otherwise."""
    if isinstance(value, bool):
        raise SpecError(f"{field}: {value!r} is not a duration (e.g. 600, 90s, 10m)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip().lower())
        if match is None or not any(match.groups()):
            raise SpecError(f"{field}: {value!r} is not a duration (e.g. 600, 90s, 10m)")
        hours, minutes, secs = match.groups()
        seconds = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
    if not seconds > 0:
        raise SpecError(f"{field}: {value!r} must be longer than zero")
    return seconds


def parse_tuning(spec: Mapping[str, Any] | None, *, field: str = FIELD) -> Tuning | None:
    """The budget of an EdgeModel's `variants.tuning` ({trials, timeBudget}); None when absent (untuned)."""
    if not spec:
        return None
    unknown = set(spec) - {"trials", "timeBudget"}
    if unknown:
        raise SpecError(f"{field}: unknown field(s) {', '.join(sorted(unknown))} (known: trials, timeBudget)")
    trials = spec.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise SpecError(f"{field}.trials: {trials!r} must be a whole number from 1 to {MAX_TRIALS}")
    if "timeBudget" not in spec:
        raise SpecError(f"{field}.timeBudget: missing (how long tuning may take, e.g. 10m)")
    return Tuning(trials, parse_duration(spec["timeBudget"], field=f"{field}.timeBudget"))


def tuning_key(model_sha256: str, tvm_target: Mapping[str, Any] | str, tvm_version: str) -> str:
    """The database's cache key: what the measured schedules depend on (the model, the target, TVM)."""
    material = {"model": model_sha256, "target": tvm_target, "tvm": tvm_version}
    return sha256_bytes(json.dumps(material, sort_keys=True, separators=(",", ":")).encode())


@dataclass(frozen=True)
class TuningRecord:
    """What one tuning run did, kept next to its database (`summary.json`) and reported in the menu."""

    trials: int  # the budget asked for
    time_budget_s: float
    measured: int  # candidates measured (every run into this database)
    seconds: float  # wall time of the last run
    stopped_by: str  # "trials" or "time budget"
    key: str
    reused: bool = False  # this build measured nothing: the database was already tuned enough

    @property
    def budget(self) -> Tuning:
        return Tuning(self.trials, self.time_budget_s)


def read_record(work_dir: Path) -> TuningRecord | None:
    try:
        return TuningRecord(**json.loads((work_dir / SUMMARY).read_text()))
    except FileNotFoundError:
        return None


def write_record(work_dir: Path, record: TuningRecord) -> None:
    atomic_write(work_dir / SUMMARY, (json.dumps(asdict(record), indent=2, sort_keys=True) + "\n").encode())
