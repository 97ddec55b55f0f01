"""Running MetaSchedule's search on this machine and applying its database (budgets and cache: `tvm_tune.py`).

The search needs `xgboost` (cost model) and `psutil` (worker pools): the `tune`
extra.  Builder and runner are MetaSchedule's local ones: candidates are
compiled in worker processes and timed here, so tuning only makes sense for a
target this machine runs.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from tinymlops.errors import TuningUnavailableError
from tinymlops.extras import require_extra
from tinymlops.variants.tvm_tune import Tuning, TuningRecord, read_record, write_record

# MetaSchedule's default batch is 64 candidates; a smaller one lets a short time budget stop closer to its end.
TRIALS_PER_ITER = 16
# Seconds one candidate may take to compile / to be timed. MetaSchedule's 30 s default killed every build of a
# 4-float softmax on this 2-core machine under a load average of 17 (a worker's first build also imports TVM):
# a timeout is for a candidate that hangs, not a tight bound on a shared machine.
BUILD_TIMEOUT_S = 180.0
RUN_TIMEOUT_S = 60.0
SHALLOW_DEPTH = 3  # frames whose source lines TVMScript's parser reads (see `_shallow_stack`)
# The sentinel run time MetaSchedule records for a candidate that failed to build or run.
_FAILED_S = 1e9


# MetaSchedule's mutators serialize the module they tune (tvm.ir.save_json); with an apache-tvm-ffi other than the
# one the TVM wheel was built against that serializer segfaults, which would kill the whole build. So it is tried
# in a child process first (apache-tvm 0.27.0.post1 with apache-tvm-ffi 0.1.15.x crashes; the `tvm` extra pins <0.1.15).
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

    _import_tensor_intrinsics()
    return ms


def _shallow_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack()` with source context for the innermost `SHALLOW_DEPTH` frames only.

    Why: TVMScript's `@T.prim_func` calls `inspect.stack()` for each function it parses and reads only the
    innermost frames' source lines and the outer frames' locals; the full call resolves every frame's source
    file, and each frame of the import machinery (`<frozen importlib._bootstrap>`) costs a scan of all of
    `sys.modules` (~2000 modules once TVM is loaded).  MetaSchedule imports `tvm.s_tir.tensor_intrin` (~500
    such functions) in the tuning process and a worker's first build imports more: on this 2-core machine
    under load, 190 s and 244 s with the full stack (worker builds then hit their timeout), 18 s with this one.
    """
    frame: FrameType | None = sys._getframe(1)
    infos: list[inspect.FrameInfo] = []
    while frame is not None:
        if len(infos) < SHALLOW_DEPTH:
            infos.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
        else:
            code = frame.f_code
            infos.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
        frame = frame.f_back
    return infos


@contextlib.contextmanager
def shallow_stack() -> Iterator[None]:
    """Within this block, `inspect.stack` is `_shallow_stack` (restored after)."""
    full = inspect.stack
    inspect.stack = _shallow_stack
    try:
        yield
    finally:
        inspect.stack = full


def worker_initializer() -> None:
    """Run in each MetaSchedule builder/runner worker: it only compiles and times candidates, so the cheap
    stack stays for its whole life."""
    inspect.stack = _shallow_stack


def _import_tensor_intrinsics() -> None:
    """Register TVM's tensor intrinsics (which MetaSchedule's TuneContext imports) with the cheap stack."""
    if "tvm.s_tir.tensor_intrin" not in sys.modules:
        with shallow_stack():
            importlib.import_module("tvm.s_tir.tensor_intrin")


def _scheduler(ms: Any, deadline: float) -> Any:
    """A task scheduler that gives each task rounds in proportion to its share of the model's time and stops
    handing out rounds before `deadline` (time.monotonic).

    Why not TVM's gradient scheduler with a callback that terminates the tasks at the deadline: its first pass
    hands out every task once whether or not it has been terminated, and terminating one twice aborts the
    process (`Check failed: (!task->is_terminated)`).  Returning -1 from `next_task_id` is the loop's own exit:
    TVM then joins what is still running and ends every task once.
    """

    from tvm.ir.utils import derived_object

    @derived_object
    class Budgeted(ms.task_scheduler.PyTaskScheduler):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.hit = False
            self.best_s: dict[int, float] = {}  # the fastest measured candidate of each task (`_Fastest`)
            self.rounds: dict[int, int] = {}
            self.last_call: float | None = None
            self.longest_round = 0.0

        def next_task_id(self) -> int:
            now = time.monotonic()
            if self.last_call is not None:
                self.longest_round = max(self.longest_round, now - self.last_call)
            self.last_call = now
            # Stop when the next round would likely end past the deadline (rounds of one model take similar time).
            if now + self.longest_round >= deadline:
                self.hit = True
                return -1
            tasks = self._outer().tasks_
            # Every round still measuring is joined first, so its times count (`_fastest`) before the next pick.
            # Joining only the task picked (round-robin's way) left every task that had had one round without a
            # time, and so last in line: the first task joined again then got every round (once 208 trials went to
            # ResNet-8's 0.04 µs softmax while each convolution had 16).
            for i, task in enumerate(tasks):
                if task.runner_futures is not None and not task.is_terminated:
                    self.join_running_task(i)
            live = [i for i, task in enumerate(tasks) if not task.is_terminated]
            if not live:
                return -1
            task_id = max(live, key=lambda i: self._priority(i, tasks[i]))
            self.rounds[task_id] = self.rounds.get(task_id, 0) + 1
            return task_id

        def _priority(self, task_id: int, task: Any) -> tuple[int, float]:
            """Tasks never handed out first, the most floating-point work first (the convolutions before the
            softmax: a short budget may not reach them all); then the most model time per round spent."""
            if task_id not in self.rounds:
                return 2, float(task.task_weight) * float(task.flop)
            if task_id not in self.best_s:  # handed out, nothing measured yet (running, or all failed)
                return 0, -float(self.rounds[task_id])
            return 1, float(task.task_weight) * self.best_s[task_id] / self.rounds[task_id]

    return Budgeted()


def _fastest(ms: Any, best_s: dict[int, float]) -> Any:
    """A measure callback that keeps each task's fastest measured run time in `best_s` (seconds), which the
    scheduler weighs tasks by (the scheduler cannot read it itself: overriding its join calls itself back)."""

    from tvm.ir.utils import derived_object

    @derived_object
    class Fastest(ms.measure_callback.PyMeasureCallback):  # type: ignore[misc]
        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any, builder_results: Any,
                  runner_results: Any) -> None:
            for result in runner_results:
                if result.error_msg is None and result.run_secs:
                    seconds = sum(float(s) for s in result.run_secs) / len(result.run_secs)
                    best_s[task_id] = min(best_s.get(task_id, seconds), seconds)

    return Fastest()


def _measured(ms: Any, work_dir: Path) -> int:
    """Candidates of the database that were built and timed (failed ones are recorded too, with a sentinel)."""
    database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)
    return sum(1 for record in database.get_all_tuning_records()
               if record.run_secs and all(float(s) < _FAILED_S for s in record.run_secs))


def tune(fused_mod: Any, target: Any, tuning: Tuning, work_dir: Path, key: str) -> TuningRecord:
    """Tune the kernels of `fused_mod` for `target` into the JSON database in `work_dir`, unless it already
    holds a run whose budget covers `tuning` (then nothing is measured)."""
    previous = read_record(work_dir)
    if previous is not None and tuning.covered_by(previous.budget):
        return TuningRecord(**{**previous.__dict__, "reused": True})
    started = time.monotonic()  # the budget covers everything this call does, setup included
    ms = _meta_schedule()
    work_dir.mkdir(parents=True, exist_ok=True)
    scheduler = _scheduler(ms, started + tuning.time_budget_s)
    database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)
    callbacks = [*ms.MeasureCallback.create("default"), _fastest(ms, scheduler.best_s)]
    # MetaSchedule's per-task logs (build errors, chosen schedules) stay next to the database, for a person asking
    # why a kernel is slow.
    ms.relax_integration.tune_relax(
        fused_mod, {}, target, str(work_dir), max_trials_global=tuning.trials, num_trials_per_iter=TRIALS_PER_ITER,
        database=database, task_scheduler=scheduler, measure_callbacks=callbacks, seed=0,
        builder=ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S, initializer=worker_initializer),
        runner=ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, initializer=worker_initializer),
    )
    record = TuningRecord(trials=tuning.trials, time_budget_s=tuning.time_budget_s,
                          measured=_measured(ms, work_dir), seconds=round(time.monotonic() - started, 1),
                          stopped_by="time budget" if scheduler.hit else "trials", key=key)
    write_record(work_dir, record)
    return record


def apply_database(fused_mod: Any, target: Any, work_dir: Path) -> Any:
    """`fused_mod` with every kernel the database has a record for replaced by its best measured schedule."""
    import tvm

    ms = _meta_schedule()
    database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)
    with target, database:
        return tvm.relax.transform.MetaScheduleApplyDatabase()(fused_mod)
