"""Progressive rollout benchmark: a four-step canary and a faulty canary on growing fleets, repeated.

    python benchmarks/rollout.py [--devices 1000,5000,10000] [--bad 1000,5000,10000] [--repeat 3]
                                 [--out benchmarks/results]

Each run is `tinymlops demo --scenario canary|bad-canary --devices N` in its own
process and work directory, with a DeviceFleet whose canary has four weight
steps (10, 25, 50, 100%) separated by three 10 s pauses, every step gated by the
analysis in the embedded Prometheus (every 5 s): error rate, failed installs and
the latency p95 ratio (max 3, as in examples/), so a healthy canary must not be
rolled back for latency noise.  Each configuration runs `--repeat` times: the
good canary must be promoted every time and the faulty one rolled back every
time.  Simulated devices report a modelled latency (their class and variant,
tinymlops/fleet/latency.py), not the host's wall time, so the verdicts do not
depend on how busy the host is; the *times* do, and the load average around
each run is recorded with it.  Recorded per run: seconds from
the new model's menu to the promotion (or rollback) and until every device has
settled, the issue's targets (completion within 1.2 × the pauses + 30 s; a bad
canary rolled back within two analysis intervals of its fault showing in
Prometheus, and no device left on it), and the
Kubernetes API writes the operator made for the rollout (every write of its
clients, counted by `tinymlops.stack.writes`), which must not grow with the
fleet.  Writes rollout.json and rollout.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tinymlops.stack.writes import operator_writes
from tinymlops_operator.logic.strategy import parse_strategy

ROOT = Path(__file__).resolve().parents[1]
PAUSE_S = 10
INTERVAL_S = 5
STRATEGY = {
    "canary": {
        "steps": [{"setWeight": 10}, {"pause": {"duration": f"{PAUSE_S}s"}}, {"setWeight": 25},
                  {"pause": {"duration": f"{PAUSE_S}s"}}, {"setWeight": 50}, {"pause": {"duration": f"{PAUSE_S}s"}},
                  {"setWeight": 100}],
        "analysis": {"interval": f"{INTERVAL_S}s", "minDevicesReporting": 3,
                     "metrics": [{"name": "error-rate", "max": 0.05}, {"name": "health-check-failures", "max": 0},
                                 {"name": "latency-p95-ratio", "max": 3}]},
        "progressDeadlineSeconds": 300,
    }
}
PAUSES_S = parse_strategy({"strategy": STRATEGY}).pauses_s  # as the operator reads them


def examples_dir(tmp: Path) -> Path:
    """The repo's EdgeModel and DeviceFleet, the fleet with the benchmark's strategy."""
    out = tmp / "examples"
    out.mkdir(exist_ok=True)
    for path in (ROOT / "examples").glob("*.yaml"):
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for doc in docs:
            if doc.get("kind") == "DeviceFleet":
                doc["spec"]["strategy"] = STRATEGY
        (out / path.name).write_text(yaml.safe_dump_all(docs))
    return out


def run_one(devices: int, scenario: str, tmp: Path, attempt: int = 1) -> dict[str, Any]:
    report_path = tmp / f"report-{scenario}-{devices}-{attempt}.json"
    command = [sys.executable, "-m", "tinymlops", "demo", "--devices", str(devices), "--scenario", scenario,
               "--report", str(report_path), "--workdir", str(tmp / f"work-{scenario}-{devices}-{attempt}"),
               "--examples", str(examples_dir(tmp)), "--timeout", "1800"]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        # Recorded, not raised: one failed run must not throw away the others' results.
        return {"devices": devices, "scenario": scenario, "run": attempt, "failed": stderr.decode()[-3000:],
                "rolled_back": None, "target_met": False, "wall_seconds": round(time.perf_counter() - started, 1)}
    rollout = json.loads(report_path.read_text())["rollout"]
    result = {
        "devices": devices,
        "scenario": scenario,
        "run": attempt,
        "rolled_back": rollout["rolled_back"],
        "reason": rollout["reason"],
        "steps": rollout["steps"],
        "seconds_to_decision": rollout["seconds_to_decision"],
        "seconds_to_settle": rollout["seconds_to_settle"],
        "operator_api_writes": operator_writes(rollout["api_write_requests"]),
        "devices_left_on_new_revision": rollout["devices_on_new_revision"] if rollout["rolled_back"] else None,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        # Another tenant's load slows the stack (times), not the verdicts (modelled latency): say how busy it was.
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "last_analysis": _analysis_summary(rollout.get("analysis")),
    }
    if scenario == "canary":
        result["target_seconds"] = 1.2 * PAUSES_S + 30
        result["target_met"] = rollout["seconds_to_settle"] <= result["target_seconds"]
        result["verdict_as_expected"] = not rollout["rolled_back"]
    else:
        # "The fault showing": its errors are in Prometheus, where the analysis looks.  The time from the
        # first device installing the faulty revision is reported too: it adds the devices' report interval.
        result["seconds_from_install_to_rollback"] = rollout.get("seconds_from_fault_to_rollback")
        result["seconds_from_fault_to_rollback"] = rollout.get("seconds_from_fault_in_prometheus_to_rollback")
        result["target_seconds"] = 2 * INTERVAL_S
        result["target_met"] = (rollout["rolled_back"] and rollout["devices_on_new_revision"] == 0
                                and (result["seconds_from_fault_to_rollback"] or 1e9) <= 2 * INTERVAL_S)
        result["verdict_as_expected"] = bool(rollout["rolled_back"]) and rollout["devices_on_new_revision"] == 0
    return result


def _analysis_summary(analysis: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last analysis run without its PromQL: verdict, message, and each metric's value and detail."""
    if not analysis:
        return None
    return {"verdict": analysis.get("verdict"), "message": analysis.get("message"),
            "metrics": {m["name"]: {k: m[k] for k in ("value", "verdict", "detail") if k in m}
                        for m in analysis.get("metrics") or ()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1000,5000,10000", help="fleet sizes for the good canary")
    parser.add_argument("--bad", default="1000,5000,10000", help="fleet sizes for the faulty canary ('' for none)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each fleet size and scenario")
    parser.add_argument("--bad-repeat", type=int, default=None,
                        help="runs of each fleet size for the faulty canary (default: --repeat)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    plan = [(int(n), "canary") for n in args.devices.split(",") if n] + [
        (int(n), "bad-canary") for n in args.bad.split(",") if n]
    plan.sort(key=lambda entry: (entry[0], entry[1] != "canary"))  # size by size: a cut-short run covers both
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for devices, scenario in plan:
            repeat = args.repeat if scenario == "canary" or args.bad_repeat is None else args.bad_repeat
            for attempt in range(1, repeat + 1):
                runs.append(run_one(devices, scenario, Path(tmp), attempt))
                print(json.dumps(runs[-1]), flush=True)
                write_results(args.out, plan, runs)  # after every run: a long benchmark keeps what it measured
    print((args.out / "rollout.md").read_text())
    return 0 if all(run.get("verdict_as_expected") for run in runs) else 1


def write_results(out: Path, plan: list[tuple[int, str]], runs: list[dict[str, Any]]) -> None:
    summary = [_summary(devices, scenario, [r for r in runs if (r["devices"], r["scenario"]) == (devices, scenario)])
               for devices, scenario in plan]
    summary = [row for row in summary if row["runs"]]
    result = {"machine": {"cpus": os.cpu_count()}, "strategy": STRATEGY, "pauses_s": PAUSES_S,
              "summary": summary, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Progressive rollouts on the embedded stack", "",
        f"Four weight steps (10, 25, 50, 100%), three {PAUSE_S} s pauses, analysis every {INTERVAL_S} s in the "
        "embedded Prometheus (error rate ≤ 0.05, no failed installs, latency p95 ratio ≤ 3 over the same device "
        f"classes with a Mann-Whitney test), runs as counted below, on {os.cpu_count()} cores "
        "shared with other work (load average before/after each run in rollout.json): the verdicts do not depend "
        "on the host's load (simulated devices report a modelled latency), the times do. Seconds count from the "
        "new model version being applied; settle = every device on the promoted revision (or none left on the "
        "rolled-back one). Operator API writes = every API write of the operator's clients "
        "(tinymlops.stack.writes) from the new model version on, its build included.", "",
        "| devices | scenario | runs | as expected | promoted | rolled back |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in summary:
        lines.append(f"| {row['devices']} | {row['scenario']} | {row['runs']} | {row['as_expected']} | "
                     f"{row['promoted']} | {row['rolled_back']} |")
    lines += [
        "", "Every run:", "",
        "| devices | scenario | run | outcome | s to decision | s to settle | target s | met | fault in Prometheus → "
        "rollback s | first install → rollback s | operator API writes | peak RSS MB | load 1m before/after |",
        "|---:|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        if run.get("failed"):
            lines.append(f"| {run['devices']} | {run['scenario']} | {run['run']} | **run failed** (see rollout.json)"
                         " | - | - | - | no | - | - | - | - | - |")
            continue
        outcome = "rolled back" if run["rolled_back"] else "promoted"
        before, after = run["load_average_1m"]
        lines.append(f"| {run['devices']} | {run['scenario']} | {run['run']} | {outcome} | "
                     f"{run['seconds_to_decision']} | {run['seconds_to_settle']} | {run['target_seconds']:g} | "
                     f"{'yes' if run['target_met'] else 'no'} | {run.get('seconds_from_fault_to_rollback') or '-'} | "
                     f"{run.get('seconds_from_install_to_rollback') or '-'} | {run['operator_api_writes']} | "
                     f"{run['peak_rss_mb']} | {before} / {after} |")
    (out / "rollout.md").write_text("\n".join(lines) + "\n")


def _summary(devices: int, scenario: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"devices": devices, "scenario": scenario, "runs": len(runs),
            "as_expected": sum(1 for r in runs if r.get("verdict_as_expected")),
            "promoted": sum(1 for r in runs if r.get("rolled_back") is False),
            "rolled_back": sum(1 for r in runs if r.get("rolled_back") is True),
            "failed": sum(1 for r in runs if r.get("failed"))}


if __name__ == "__main__":
    sys.exit(main())
