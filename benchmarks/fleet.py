"""Fleet convergence benchmark: the whole demo loop for growing fleets on the embedded stack.

    python benchmarks/fleet.py [--devices 100,1000,5000,10000] [--out benchmarks/results]

Each size runs `tinymlops demo --devices N` in a fresh work directory, in its
own process, and records: seconds from the plan's publication until the last
device runs a verified variant, the demo's stage timings, the Kubernetes API
writes of the whole run (per verb and resource) and the process's peak RSS,
plus what the demo reports about the variants and the devices (the README's
sample of the demo's summary comes from the smallest run).  The whole-stack
memory per simulated device is the least-squares slope of peak RSS over the
fleet sizes: every per-device cost in the process (agents and their tasks, edge
node caches, gateway state, the emulator's Device objects, kopf's caches), not
just the agent objects.
Writes fleet.json and fleet.md.
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

from tinymlops.stack.writes import operator_writes

ROOT = Path(__file__).resolve().parents[1]


def run_one(devices: int, tmp: Path) -> dict[str, Any]:
    report_path = tmp / f"report-{devices}.json"
    command = [sys.executable, "-m", "tinymlops", "demo", "--devices", str(devices), "--report", str(report_path),
               "--workdir", str(tmp / f"work-{devices}")]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"demo with {devices} devices failed:\n{stderr.decode()[-2000:]}")
    report = json.loads(report_path.read_text())
    writes = report["api_write_requests"]
    return {
        "devices": devices,
        "converged": report["fleet"]["converged"],
        "seconds_to_converge": report["fleet"]["seconds_to_converge"],
        "wall_seconds": round(wall, 3),
        "timings": report["timings"],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "sessions_loaded": report["fleet"]["sessions_loaded"],
        "inferences": report["fleet"]["inferences"],
        "by_variant": report["fleet"]["by_variant"],
        "operator_api_writes": operator_writes(writes),
        "api_writes": writes,
        "demo": {"model": report["model"], "variants": report["variants"],
                 "by_device_class": report["fleet"]["by_device_class"]},
    }


def rss_slope_kb(runs: list[dict[str, Any]]) -> float | None:
    """Peak RSS per extra device in KB: the least-squares slope over the fleet sizes (None below two sizes)."""
    points = [(float(run["devices"]), float(run["peak_rss_mb"]) * 1024) for run in runs]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return round(covariance / variance, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="100,1000,5000,10000", help="comma-separated fleet sizes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    sizes = [int(size) for size in args.devices.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_one(size, Path(tmp)) for size in sizes]
    result = {"machine": {"cpus": os.cpu_count()}, "runs": runs, "rss_kb_per_device": rss_slope_kb(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Fleet convergence on the embedded stack", "",
        "`tinymlops demo --devices N`, one process per size; operator writes = every API write of the operator's "
        "clients (tinymlops.stack.writes), its build included; devices register themselves and are not counted.", "",
        "| devices | converged | s to converge | demo total s | peak RSS MB | sessions | operator API writes |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(f"| {run['devices']} | {run['converged']} | {run['seconds_to_converge']} | "
                     f"{run['timings']['total_s']} | {run['peak_rss_mb']} | {run['sessions_loaded']} | "
                     f"{run['operator_api_writes']} |")
    if result["rss_kb_per_device"] is not None:
        lines += ["", f"Peak RSS slope over these sizes (least squares): **{result['rss_kb_per_device']} KB per "
                  "simulated device** for the whole stack in one process."]
    (args.out / "fleet.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
