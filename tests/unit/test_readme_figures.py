"""The measured figures in the README and docs/ are the ones in benchmarks/results (benchmarks/readme_figures.py)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "benchmarks" / "readme_figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


figures = _load()
DOCUMENTS = {name: (ROOT / name).read_text() for name in figures.DOCUMENTS}
README = DOCUMENTS["README.md"]
BENCHMARKS = DOCUMENTS["docs/benchmarks.md"]


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    loaded: dict[str, Any] = figures.load_results(ROOT / "benchmarks" / "results")
    return loaded


def test_the_documents_state_what_the_results_files_say(results: dict[str, Any]) -> None:
    rendered = figures.render(DOCUMENTS, results)
    for name, text in DOCUMENTS.items():
        assert rendered[name] == text, f"{name}: figures are stale: run python benchmarks/readme_figures.py"


def test_the_readme_keeps_the_demo_sample_and_docs_the_benchmark_table() -> None:
    assert "<!-- figures:demo-sample -->" in README
    assert "<!-- figures:benchmarks -->" in BENCHMARKS


def test_a_result_that_changes_makes_the_check_fail(results: dict[str, Any], tmp_path: Path) -> None:
    changed = copy.deepcopy(results)
    digits = next(m for m in changed["variants"]["models"] if m["model"] == "digits")
    int8 = next(v for v in digits["variants"] if v["id"] == "int8-static")
    int8["size_bytes"] += 4096
    (tmp_path / "results").mkdir()
    for name, data in changed.items():
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(data))
    root = tmp_path / "repo"
    for name, text in DOCUMENTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    args = ["--root", str(root), "--results", str(tmp_path / "results")]
    assert figures.main(["--check", *args]) == 1
    assert {name: (root / name).read_text() for name in DOCUMENTS} == DOCUMENTS, "--check changes nothing"
    assert figures.main(args) == 0
    assert f"{(int8['size_bytes']) / 1024:.1f} KB" in (root / "docs" / "benchmarks.md").read_text()
    assert figures.main(["--check", *args]) == 0


def test_no_measured_figure_in_the_figures_section_lives_outside_a_generated_region() -> None:
    section = BENCHMARKS[BENCHMARKS.index("## Figures"):BENCHMARKS.index("## What the simulations are")]
    outside = figures.REGION.sub("", section)
    assert not [line for line in outside.splitlines() if line.startswith("|")]
    assert not re.search(r"\d+(\.\d+)? ?(ms|s|KB|MB)\b", outside), "a measured figure outside a region"


def test_every_region_needs_a_renderer_and_every_renderer_a_region(results: dict[str, Any]) -> None:
    made_up = {**DOCUMENTS, "README.md": README + "<!-- figures:made-up -->1<!-- /figures:made-up -->"}
    with pytest.raises(figures.FiguresError, match="README.md: region figures:made-up has no renderer"):
        figures.render(made_up, results)
    stripped = re.sub(r"<!-- figures:demo-sample -->.*?<!-- /figures:demo-sample -->", "", README, flags=re.S)
    with pytest.raises(figures.FiguresError, match="no document has a region for figures:demo-sample"):
        figures.render({**DOCUMENTS, "README.md": stripped}, results)


def _run(devices: int, scenario: str, seconds: float, *, rolled_back: bool, writes: int) -> dict[str, Any]:
    return {"devices": devices, "scenario": scenario, "rolled_back": rolled_back, "seconds_to_decision": seconds,
            "seconds_to_settle": seconds + 2, "seconds_from_fault_to_rollback": seconds / 2,
            "devices_left_on_new_revision": 0 if rolled_back else None, "operator_api_writes": writes}


def test_rollout_figures_come_from_per_run_records_over_every_run() -> None:
    records = [_run(size, "canary", 30.0 + run, rolled_back=False, writes=16)
               for size in (1000, 5000, 10000) for run in range(3)]
    records += [_run(1000, "bad-canary", 6.0, rolled_back=True, writes=9),
                _run(1000, "bad-canary", 8.0, rolled_back=True, writes=9),
                _run(1000, "bad-canary", 7.0, rolled_back=False, writes=12)]
    for shape in (records, {"runs": records}):
        rows = dict(figures.rollout_rows(shape))
        good, bad, writes = rows.values()
        assert "10,000 devices: promoted 3/3, at 30.0–32.0 s, all settled at 32.0–34.0 s" in good
        assert "1,000 devices: rolled back 2/3, 3.0–4.0 s from its errors reaching Prometheus" in bad
        assert writes == ("16 promoted (1,000 devices); 16 promoted (5,000 devices); 16 promoted (10,000 devices); "
                          "9–12 rolled back (1,000 devices)")
    # Other spellings of the outcome are read as well.
    promoted = {"devices": 10, "scenario": "canary", "promoted": True, "seconds": 3.0}
    assert "promoted 1/1, at 3.0 s" in figures.rollout_rows([promoted])[0][1]


def test_spans_and_demo_sample_layout(results: dict[str, Any]) -> None:
    assert figures._span([1.39, 1.41], fmt="{:.2f}", unit="×") == "1.39–1.41×"
    assert figures._span([2.0, 2.0], unit=" s") == "2.0 s"
    sample = figures.demo_sample(results["fleet"])
    smallest = min(results["fleet"]["runs"], key=lambda run: run["devices"])
    assert f"{smallest['converged']}/{smallest['devices']} devices converged" in sample
