"""Running MetaSchedule's search on this machine and applying its database (budgets and cache: `tvm_tune.py`).

The search needs `xgboost` (cost model) and `psutil` (worker pools): the `tune`
extra.  Builder and runner are MetaSchedule's local ones: candidates are
compiled in worker processes and timed here, so tuning only makes sense for a
target this machine runs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tinymlops.errors import TuningUnavailableError
from tinymlops.extras import require_extra
from tinymlops.variants.tvm_tune import Tuning, TuningRecord, read_record, write_record

# MetaSchedule's default batch is 64 candidates; a smaller one lets a short time budget stop closer to its end.
TRIALS_PER_ITER = 16


# MetaSchedule's mutators serialize the module they tune (tvm.ir.save_json); with an apache-tvm-ffi other than the
# one the TVM wheel was built against that serializer segfaults, which would kill the whole build. So it is tried
# in a child process first (apache-tvm 0.27.0.post1 with apache-tvm-ffi 0.1.15.post2 does crash here).
_PROBE = "import tvm; tvm.ir.save_json(tvm.tirx.IntImm('int32', 1))"
_probed: list[str | None] = []


def serializer_failure() -> str | None:
    """Why MetaSchedule cannot run in this environment (None: it can); checked once per process."""
    if not _probed:
        result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
        _probed.append(None if result.returncode == 0 else
                       f"TVM's IR serializer (tvm.ir.save_json), which MetaSchedule needs, exits with code "
                       f"{result.returncode} here: apache-tvm and apache-tvm-ffi are probably mismatched "
                       "(install the apache-tvm-ffi version the apache-tvm wheel was built with)")
    return _probed[0]


def check_available() -> None:
    """MissingExtraError or TuningUnavailableError, naming the cause, unless MetaSchedule can run here."""
    require_extra("tune", "MetaSchedule tuning (variants.tuning)", "xgboost", "psutil")
    failure = serializer_failure()
    if failure is not None:
        raise TuningUnavailableError(f"spec.variants.tuning: cannot tune on this machine: {failure}")


def _meta_schedule() -> Any:
    check_available()
    from tvm.s_tir import meta_schedule as ms

    return ms


def _deadline_callback(ms: Any, deadline: float) -> Any:
    """A measure callback that ends every task once `deadline` (time.monotonic) has passed."""

    from tvm.ir.utils import derived_object

    @derived_object
    class Deadline(ms.measure_callback.PyMeasureCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.hit = False

        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any, builder_results: Any,
                  runner_results: Any) -> None:
            if time.monotonic() < deadline:
                return
            self.hit = True
            for index, task in enumerate(task_scheduler.tasks_):
                if not task.is_terminated:
                    task_scheduler.terminate_task(index)

    return Deadline()


def _measured(ms: Any, work_dir: Path) -> int:
    database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)
    return len(database)


def tune(fused_mod: Any, target: Any, tuning: Tuning, work_dir: Path, key: str) -> TuningRecord:
    """Tune the kernels of `fused_mod` for `target` into the JSON database in `work_dir`, unless it already
    holds a run whose budget covers `tuning` (then nothing is measured)."""
    previous = read_record(work_dir)
    if previous is not None and tuning.covered_by(previous.budget):
        return TuningRecord(**{**previous.__dict__, "reused": True})
    ms = _meta_schedule()
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = _deadline_callback(ms, started + tuning.time_budget_s)
    with tempfile.TemporaryDirectory(prefix="tinymlops-tune-") as logs:  # per-task logs: not worth keeping
        database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)
        ms.relax_integration.tune_relax(
            fused_mod, {}, target, logs, max_trials_global=tuning.trials, num_trials_per_iter=TRIALS_PER_ITER,
            database=database, measure_callbacks=[*ms.MeasureCallback.create("default"), deadline], seed=0,
        )
    record = TuningRecord(trials=tuning.trials, time_budget_s=tuning.time_budget_s,
                          measured=_measured(ms, work_dir), seconds=round(time.monotonic() - started, 1),
                          stopped_by="time budget" if deadline.hit else "trials", key=key)
    write_record(work_dir, record)
    return record


def apply_database(fused_mod: Any, target: Any, work_dir: Path) -> Any:
    """`fused_mod` with every kernel the database has a record for replaced by its best measured schedule."""
    import tvm

    ms = _meta_schedule()
    database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)
    with target, database:
        return tvm.relax.transform.MetaScheduleApplyDatabase()(fused_mod)
