"""What far-edge devices add to the default demo: the same `tinymlops demo` with and without its Cortex-M4 boards.

    python benchmarks/far_edge_demo.py [--devices 100] [--boards 2] [--out benchmarks/results]

Runs `tinymlops demo --devices N` without boards (`--far-edge-devices 0`) and with them, alternately,
`--repeat` times each, every run in a fresh work directory (nothing cached: the variants pipeline
compiles TVM's C bundle, cross-compiles the firmware and measures it in qemu; the edge node then
reuses that firmware, same content key) and its own process.  Recorded: the demo's stage timings (the
variants build and the convergence are where boards cost; the training step is not theirs), the load
average around each run (the machine is shared), the boards' variant, measured figures and
instructions per inference as the report gives them, and what the gateway's metrics counted for them.
Writes far_edge_demo.json and far_edge_demo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_one(label: str, devices: int, boards: int, tmp: Path, index: int) -> dict[str, Any]:
    report_path = tmp / f"report-{index}.json"
    command = [sys.executable, "-m", "tinymlops", "demo", "--devices", str(devices), "--far-edge-devices",
               str(boards), "--report", str(report_path), "--workdir", str(tmp / f"work-{index}"), "--output", "json"]
    env = {**os.environ, "TINYMLOPS_FIRMWARE_CACHE": str(tmp / f"firmware-{index}")}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{label}: demo failed: {done.stderr[-2000:]}")
    report = json.loads(report_path.read_text())
    fleet = report["fleet"]
    return {"run": label, "boards": boards, "wall_s": round(wall, 1), "timings": report["timings"],
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "devices": fleet["devices"], "converged": fleet["converged"], "by_variant": fleet["by_variant"],
            "far_edge": fleet.get("far_edge")}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Far-edge boards in the default demo ({result['devices']} simulated devices)", "",
             f"Measured {result['measured_at']} on {result['cpus']} CPUs; `python benchmarks/far_edge_demo.py`.", "",
             "| run | devices converged | variants build s | converge s | total s | load average (start, end) |",
             "|---|---|---|---|---|---|"]
    for run in result["runs"]:
        t = run["timings"]
        lines.append(f"| {run['run']} | {run['converged']}/{run['devices']} | {t['wait_for_variants_s']:.1f} | "
                     f"{t['converge_s']:.1f} | {t['total_s']:.1f} | {run['load_average'][0]}, "
                     f"{run['load_average'][1]} |")
    without = [r for r in result["runs"] if not r["boards"]]
    with_boards = [r for r in result["runs"] if r["boards"]]

    def added(key: str) -> str:
        mean = statistics.mean
        return f"{mean(r['timings'][key] for r in with_boards) - mean(r['timings'][key] for r in without):+.1f} s"

    lines += ["", f"On average the boards add {added('wait_for_variants_s')} to the variants build (TVM's C bundle, "
                  f"the firmware and its measurement in qemu) and {added('converge_s')} to the convergence; whole "
                  f"runs differ by {added('total_s')}, of which {added('prepare_model_s')} is the training step, "
                  "which the boards do not touch.  A 2-CPU machine shared with other work (the load average says "
                  "how busy): read the differences as rough.", ""]
    far_edge = with_boards[-1]["far_edge"] or {}
    if far_edge.get("devices"):
        lines += ["| board | flash / RAM | phase | variant | firmware flash B | RAM B | instructions / inference |",
                  "|---|---|---|---|---|---|---|"]
        for mcu in far_edge["devices"]:
            figures = mcu["menu_figures"]
            lines.append(f"| {mcu['device']} | {mcu['flash_kb']} KB / {mcu['ram_kb']} KB | {mcu['phase']} | "
                         f"{mcu['variant']} | {figures['flash_bytes']} | {figures['ram_bytes']} | "
                         f"{mcu['instructions_per_inference']} |")
        metrics = far_edge.get("gateway_metrics") or {}
        lines += ["", f"The gateway's metrics counted {metrics.get('inferences', 0):.0f} inferences and "
                      f"{metrics.get('instructions', 0):.0f} instructions for the `mcu` class."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--boards", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--markdown-only", action="store_true", help="Rewrite the .md from the existing .json.")
    args = parser.parse_args()
    if args.markdown_only:
        result = json.loads((args.out / "far_edge_demo.json").read_text())
        (args.out / "far_edge_demo.md").write_text(markdown(result))
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="tinymlops-far-edge-bench-") as tmp:
        for index in range(2 * args.repeat):
            boards = args.boards if index % 2 else 0
            label = f"{'with' if boards else 'without'} boards ({index // 2 + 1})"
            runs.append(run_one(label, args.devices, boards, Path(tmp), index))
            print(f"{label}: {runs[-1]['timings']}", file=sys.stderr)
    result = {"devices": args.devices, "boards": args.boards, "cpus": os.cpu_count(),
              "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "far_edge_demo.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "far_edge_demo.md").write_text(markdown(result))
    print((args.out / "far_edge_demo.md").read_text())


if __name__ == "__main__":
    main()
