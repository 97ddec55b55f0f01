"""MetaSchedule tuning of TVM host variants: budgets, the database cache, and one tiny tuning smoke test."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.unit.test_mcu import tiny_mlp
from tinymlops.errors import SpecError, TuningUnavailableError
from tinymlops.variants import tvm_search
from tinymlops.variants.tvm_tune import (
    Tuning,
    TuningRecord,
    parse_duration,
    parse_tuning,
    read_record,
    tuning_key,
    write_record,
)

pytest.importorskip("tvm")


@pytest.mark.parametrize(("text", "seconds"), [(600, 600.0), ("600", 600.0), ("90s", 90.0), ("10m", 600.0),
                                               ("1h30m", 5400.0), (2.5, 2.5)])
def test_durations_read_as_people_write_them(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["ten minutes", "", "0", -5, True, "5x"])
def test_a_bad_duration_names_the_field(bad: object) -> None:
    with pytest.raises(SpecError, match="spec.variants.tuning.timeBudget"):
        parse_duration(bad)


def test_tuning_spec_parses_and_absent_means_untuned() -> None:
    assert parse_tuning(None) is None and parse_tuning({}) is None
    assert parse_tuning({"trials": 64, "timeBudget": "10m"}) == Tuning(64, 600.0)


@pytest.mark.parametrize(("spec", "field"), [
    ({"trials": 0, "timeBudget": "1m"}, "tuning.trials"), ({"trials": "many", "timeBudget": "1m"}, "tuning.trials"),
    ({"trials": 8}, "tuning.timeBudget"), ({"trials": 8, "timeBudget": "1m", "seed": 1}, "unknown field"),
])
def test_a_bad_tuning_spec_names_what_is_wrong(spec: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        parse_tuning(spec)


def test_the_database_key_is_the_model_the_target_and_tvm() -> None:
    target = {"kind": "llvm", "num-cores": 1}
    key = tuning_key("a" * 64, target, "0.27")
    assert key == tuning_key("a" * 64, dict(reversed(target.items())), "0.27")  # order does not matter
    assert len({key, tuning_key("b" * 64, target, "0.27"), tuning_key("a" * 64, {"kind": "llvm"}, "0.27"),
                tuning_key("a" * 64, target, "0.28")}) == 4


def test_a_covered_budget_reuses_the_database_without_measuring(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    done = TuningRecord(trials=64, time_budget_s=600, measured=64, seconds=580.0, stopped_by="trials", key="k")
    write_record(tmp_path, done)

    def no_search() -> None:
        raise AssertionError("a covered budget must not start MetaSchedule")

    monkeypatch.setattr(tvm_search, "_meta_schedule", no_search)
    again = tvm_search.tune(None, None, Tuning(32, 60), tmp_path, "k")
    assert again.reused and dataclasses.replace(again, reused=False) == done
    with pytest.raises(AssertionError, match="must not start"):  # a larger budget searches again
        tvm_search.tune(None, None, Tuning(128, 60), tmp_path, "k")
    assert read_record(tmp_path) == done


def test_tuning_that_cannot_run_here_is_refused_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tvm_search, "_probed", ["TVM's IR serializer exits with code -11 here"])
    with pytest.raises(TuningUnavailableError, match="cannot tune on this machine: TVM's IR serializer"):
        tvm_search.check_available()


def test_only_the_host_target_is_tuned_and_the_budget_keys_the_artifact() -> None:
    from tinymlops.variants.matrix import spec_for
    from tinymlops.variants.tvm import HOST_ARCH, tunable

    budget = Tuning(8, 30)
    assert tunable(HOST_ARCH) and not tunable("cortex-m4")
    host = spec_for(f"tvm-{HOST_ARCH.replace('_', '-')}", tuning=budget).steps[0]
    assert host.params["tuning"] == budget.params  # type: ignore[attr-defined]
    other = spec_for("tvm-cortex-m4", tuning=budget).steps[0]
    assert "tuning" not in other.params
    assert "untuned: MetaSchedule measures on the build machine" in str(other.tuning_note)  # type: ignore[attr-defined]


def test_the_shallow_stack_keeps_what_tvmscript_reads() -> None:
    """TVMScript's parser reads the innermost frames' source lines and every frame's locals; the cheap stack
    keeps both (deeper frames lose only their source lines)."""
    import inspect

    marker = "outer"  # noqa: F841  (read back through the frame's locals)

    def inner() -> list[inspect.FrameInfo]:
        return tvm_search._shallow_stack()

    shallow, full = inner(), inspect.stack()
    assert shallow[0].function == "inner" and shallow[1].code_context == full[0].code_context is not None
    assert shallow[1].frame.f_locals["marker"] == "outer"
    assert len(shallow) == len(full) + 1
    assert all(info.code_context is None for info in shallow[tvm_search.SHALLOW_DEPTH:])
    with tvm_search.shallow_stack():
        assert inspect.stack is tvm_search._shallow_stack
    assert inspect.stack is not tvm_search._shallow_stack


@pytest.mark.skipif(not os.environ.get("TINYMLOPS_TUNE_SMOKE"),
                    reason="1.5-3 minutes of MetaSchedule on 2 cores: opt-in with TINYMLOPS_TUNE_SMOKE=1")
def test_tuning_smoke_writes_a_database_and_a_rebuild_reuses_it(tmp_path: Path) -> None:
    """One tiny search (4 candidates): the database is written, the tuned build matches onnxruntime, and a second
    tuning call with the same budget measures nothing."""
    from tinymlops.variants import tvm

    failure = tvm_search.serializer_failure()
    if failure is not None:
        pytest.skip(failure)
    model = tiny_mlp()
    record, database = tvm.tune_onnx(model, tvm.HOST_ARCH, Tuning(4, 120), tmp_path)
    assert not record.reused and record.measured > 0 and (database / "database_tuning_record.json").stat().st_size
    again, same = tvm.tune_onnx(model, tvm.HOST_ARCH, Tuning(4, 120), tmp_path)
    assert again.reused and same == database
    artifact = tvm.compile_onnx(model, tvm.HOST_ARCH, database=database)
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    runner = tvm.TvmRunner.load(artifact, input_name=session.get_inputs()[0].name, output_name="y")
    np.testing.assert_allclose(runner.many(x), expected, atol=1e-5)
