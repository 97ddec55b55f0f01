"""Progressive rollout benchmark: a four-step canary and a faulty canary on growing fleets.

    python benchmarks/rollout.py [--devices 1000,10000] [--bad 1000] [--out benchmarks/results]

Each run is `tinymlops demo --scenario canary|bad-canary --devices N` in its own
process and work directory, with a DeviceFleet whose canary has four weight
steps (10, 25, 50, 100%) separated by three 10 s pauses, every step gated by the
analysis in the embedded Prometheus (every 5 s).  Recorded per run: seconds from
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
                     "metrics": [{"name": "error-rate", "max": 0.05}, {"name": "health-check-failures", "max": 0}]},
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


def run_one(devices: int, scenario: str, tmp: Path) -> dict[str, Any]:
    report_path = tmp / f"report-{scenario}-{devices}.json"
    command = [sys.executable, "-m", "tinymlops", "demo", "--devices", str(devices), "--scenario", scenario,
               "--report", str(report_path), "--workdir", str(tmp / f"work-{scenario}-{devices}"),
               "--examples", str(examples_dir(tmp)), "--timeout", "1800"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{scenario} with {devices} devices failed:\n{stderr.decode()[-3000:]}")
    rollout = json.loads(report_path.read_text())["rollout"]
    result = {
        "devices": devices,
        "scenario": scenario,
        "rolled_back": rollout["rolled_back"],
        "reason": rollout["reason"],
        "steps": rollout["steps"],
        "seconds_to_decision": rollout["seconds_to_decision"],
        "seconds_to_settle": rollout["seconds_to_settle"],
        "operator_api_writes": operator_writes(rollout["api_write_requests"]),
        "devices_left_on_new_revision": rollout["devices_on_new_revision"] if rollout["rolled_back"] else None,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    if scenario == "canary":
        result["target_seconds"] = 1.2 * PAUSES_S + 30
        result["target_met"] = rollout["seconds_to_settle"] <= result["target_seconds"]
    else:
        # "The fault showing": its errors are in Prometheus, where the analysis looks.  The time from the
        # first device installing the faulty revision is reported too: it adds the devices' report interval.
        result["seconds_from_install_to_rollback"] = rollout.get("seconds_from_fault_to_rollback")
        result["seconds_from_fault_to_rollback"] = rollout.get("seconds_from_fault_in_prometheus_to_rollback")
        result["target_seconds"] = 2 * INTERVAL_S
        result["target_met"] = (rollout["rolled_back"] and rollout["devices_on_new_revision"] == 0
                                and (result["seconds_from_fault_to_rollback"] or 1e9) <= 2 * INTERVAL_S)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1000,10000", help="fleet sizes for the good canary")
    parser.add_argument("--bad", default="1000", help="fleet sizes for the faulty canary ('' for none)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    plan = [(int(n), "canary") for n in args.devices.split(",") if n] + [
        (int(n), "bad-canary") for n in args.bad.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for devices, scenario in plan:
            runs.append(run_one(devices, scenario, Path(tmp)))
            print(json.dumps(runs[-1]), flush=True)
    result = {"machine": {"cpus": os.cpu_count()}, "strategy": STRATEGY, "pauses_s": PAUSES_S, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rollout.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Progressive rollouts on the embedded stack", "",
        f"Four weight steps (10, 25, 50, 100%), three {PAUSE_S} s pauses, analysis every {INTERVAL_S} s in the "
        "embedded Prometheus. Seconds count from the new model version being applied; settle = every device on "
        "the promoted revision (or none left on the rolled-back one). Operator API writes = every API write of the "
        "operator's clients (tinymlops.stack.writes) from the new model version on, its build included.", "",
        "| devices | scenario | outcome | s to decision | s to settle | target s | met | fault in Prometheus → "
        "rollback s | first install → rollback s | operator API writes | peak RSS MB |",
        "|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        outcome = "rolled back" if run["rolled_back"] else "promoted"
        lines.append(f"| {run['devices']} | {run['scenario']} | {outcome} | {run['seconds_to_decision']} | "
                     f"{run['seconds_to_settle']} | {run['target_seconds']:g} | {'yes' if run['target_met'] else 'no'}"
                     f" | {run.get('seconds_from_fault_to_rollback') or '-'} | "
                     f"{run.get('seconds_from_install_to_rollback') or '-'} | {run['operator_api_writes']} | "
                     f"{run['peak_rss_mb']} |")
    (args.out / "rollout.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
