"""Microcontroller benchmark: MLPerf Tiny models and digits as Cortex-M firmware, measured in qemu.

    python benchmarks/mcu.py [--models digits,ds_cnn,resnet8,autoencoder] [--out benchmarks/results]

For each model (`tinymlops.model.mlperf_tiny`, seeded random weights on synthetic inputs: agreement, not
accuracy; digits: the sample MLP on its labelled held-out split, so accuracy):

- TVM fp32: the factory's own `build_variant(..., "tvm-cortex-m4")`, timed end to end (TVM compile + C
  bundle, firmware build, qemu run on the evaluation samples), with the figures the menu records: flash,
  RAM (static + stack high-water mark), instructions per inference, max |Δ| vs onnxruntime, and the
  firmware build + measurement seconds alone (target: at most 60 s per variant); then the same build again
  with the same cache (`rebuild s`: the bundle and the firmware come from the caches, only qemu runs).
- emx-onnx-cgen fp32, the second backend (`variants/mcu/emx.py`): its C (temporaries on the stack)
  behind the same `model_run` API, measured by the same firmware builder and harness on the same samples.
- int8: the factory's `emx-int8-cortex-m4` (static int8 in QOperator form, calibrated on the model's
  data, generated as integer C by emx-onnx-cgen) against the fp32 base, and the QDQ int8 graph through
  the TVM C bundle (TVM dequantizes to float kernels: int8 storage, float arithmetic).
- Other boards: `tvm-cortex-m7` (MPS2-AN500) and `tvm-cortex-m33` (MPS2-AN505) on DS-CNN.
- The anchor: MLPerf Tiny v1.0's published closed-division throughput of OctoML's microTVM (native
  schedules, int8) on NUCLEO-L4R5ZI, a Cortex-M4F at 120 MHz: KWS 6.943, IC 2.569, AD 85.339 inferences/s
  (mlcommons/tiny_results_v1.0, closed/OctoML/results/microtvm_native/NUCLEO_L4R5ZI/*/performance).  Our
  figures are instruction counts, so the comparison is the instructions' estimated latency at the same
  120 MHz and one instruction per cycle (a lower bound on a Cortex-M4) against a measured int8 time.

Writes mcu.json and mcu.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tinymlops.model import mlperf_tiny  # noqa: E402
from tinymlops.model.digits import prepare_digits  # noqa: E402
from tinymlops.runners import Runner  # noqa: E402
from tinymlops.variants import build_variant, load_dataset, load_source  # noqa: E402
from tinymlops.variants.mcu import emx, measure  # noqa: E402
from tinymlops.variants.mcu.boards import BOARDS  # noqa: E402
from tinymlops.variants.mcu.firmware import build_firmware, find_toolchain  # noqa: E402
from tinymlops.variants.source import Dataset, SourceModel  # noqa: E402
from tinymlops.variants.transforms import Int8Static  # noqa: E402
from tinymlops.variants.tvm import compile_onnx  # noqa: E402

MLPERF: dict[str, Callable[[], bytes]] = {
    "ds_cnn": mlperf_tiny.ds_cnn, "resnet8": mlperf_tiny.resnet8, "autoencoder": mlperf_tiny.autoencoder}
MODELS = ("digits", *MLPERF)
# MLPerf Tiny v1.0, closed, OctoML microtvm_native on NUCLEO-L4R5ZI (Cortex-M4F, 120 MHz), int8: median
# throughput in inferences per second.
ANCHOR = {"ds_cnn": ("KWS", 6.943), "resnet8": ("IC", 2.569), "autoencoder": ("AD", 85.339)}
ANCHOR_SOURCE = ("MLPerf Tiny v1.0 closed, OctoML microtvm_native, NUCLEO-L4R5ZI (Cortex-M4F at 120 MHz), int8 "
                 "(github.com/mlcommons/tiny_results_v1.0)")
BOARD_LIMITS = {"flash_bytes": 1 << 20, "ram_bytes": 256 << 10}  # "fits": 1 MB flash, 256 KB RAM
OTHER_TARGETS = {"ds_cnn": ("cortex-m7", "cortex-m33")}  # one model per board beyond the Cortex-M4
BUDGET = 0.05  # accuracy budget of the int8 builds: the benchmark reports the drop, it does not gate on it
FIGURES = ("flash_bytes", "ram_bytes", "static_ram_bytes", "stack_bytes", "instructions", "latency_ms_estimate",
           "clock_mhz", "max_abs_diff", "agreement", "eval_samples", "firmware_seconds")


def load(name: str, work: Path) -> tuple[SourceModel, Dataset]:
    if name == "digits":
        digits = prepare_digits(work / "digits")
        base = load_source(digits.model_path.read_bytes())
        return base, load_dataset(digits.data_path, base)
    base = load_source(MLPERF[name]())
    return base, load_dataset(None, base)


def factory_variant(base: SourceModel, dataset: Dataset, variant_id: str, cache: Path) -> dict[str, Any]:
    """`build_variant` as the factory runs it, timed, then once more from the same caches."""
    started = time.perf_counter()
    entry = build_variant(base, dataset, variant_id, accuracy_budget=BUDGET, cache_dir=cache,
                          synthetic_calibration=True).entry
    variant_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = build_variant(base, dataset, variant_id, accuracy_budget=BUDGET, cache_dir=cache,
                          synthetic_calibration=True)
    metrics = entry["metrics"]
    return {
        "accepted": entry["accepted"], "reason": entry["reason"], "size_bytes": entry["size_bytes"],
        "blob_bytes": entry["blob_bytes"], **{k: metrics[k] for k in FIGURES},
        **{k: metrics[k] for k in ("accuracy", "max_abs_diff_vs_int8_graph", "arena_bytes", "workspace_bytes",
                                   "kernel_calls", "board") if k in metrics},
        "variant_seconds": round(variant_seconds, 2),
        "rebuild_seconds": round(time.perf_counter() - started, 2), "rebuild_cached": again.cached,
    }


def fp32_quality(base: SourceModel, dataset: Dataset) -> dict[str, float]:
    """The fp32 base on the same evaluation subset the firmware runs (what the int8 rows are compared with)."""
    subset = measure.evaluation_subset(dataset)
    scores = Runner.load(base.data).many(subset.evaluation)
    if subset.labels is None:
        return {"agreement": 1.0}
    return {"accuracy": float(np.mean(scores.reshape(len(scores), -1).argmax(1) == subset.labels))}


def tvm_int8(base: SourceModel, dataset: Dataset, cache: Path) -> dict[str, Any]:
    """The factory's static int8 (QDQ) model through the TVM C bundle and firmware: TVM imports QDQ as
    quantize/dequantize around float kernels, so this measures the flash int8 weights save and the outputs'
    distance, not integer arithmetic."""
    int8 = Int8Static().apply(base.data, dataset.calibration, base.input_name)
    started = time.perf_counter()
    firmware = build_firmware(compile_onnx(int8, "cortex-m4"), cache)
    runner = measure.FirmwareRunner(firmware, find_toolchain().qemu, base.input_name, "output")
    subset = measure.evaluation_subset(dataset)
    outputs = runner.many(subset.evaluation)
    int8_ort, fp32_ort = Runner.load(int8).many(subset.evaluation), Runner.load(base.data).many(subset.evaluation)
    flat, fp32_flat = outputs.reshape(len(outputs), -1), fp32_ort.reshape(len(outputs), -1)
    figures = runner.figures()
    row = {
        **{k: figures[k] for k in ("flash_bytes", "ram_bytes", "stack_bytes", "instructions", "latency_ms_estimate")},
        "max_abs_diff_vs_int8_graph": float(np.abs(outputs.reshape(int8_ort.shape) - int8_ort).max()),
        "max_abs_diff": float(np.abs(flat - fp32_flat).max()),
        "agreement": float(np.mean(flat.argmax(1) == fp32_flat.argmax(1))),
        "eval_samples": len(flat),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if subset.labels is not None:
        row["accuracy"] = float(np.mean(flat.argmax(1) == subset.labels))
    return row


def emx_fp32(base: SourceModel, dataset: Dataset, cache: Path) -> dict[str, Any]:
    """emx-onnx-cgen's C of the fp32 graph, measured by the same firmware builder and harness."""
    started = time.perf_counter()
    shape = (1, *measure.evaluation_subset(dataset).evaluation.shape[1:])
    bundle = emx.bundle(emx.static_graph(base.data, shape), "cortex-m4", precision="fp32")
    generated = time.perf_counter()
    firmware = build_firmware(bundle, cache)
    runner = measure.FirmwareRunner(firmware, find_toolchain().qemu, base.input_name, "output")
    samples = measure.evaluation_subset(dataset).evaluation
    outputs = runner.many(samples)
    reference = Runner.load(base.data).many(samples)
    figures = runner.figures()
    return {
        **{k: figures[k] for k in ("flash_bytes", "ram_bytes", "static_ram_bytes", "stack_bytes", "instructions",
                                   "latency_ms_estimate")},
        "max_abs_diff": float(np.abs(outputs.reshape(reference.shape) - reference).max()),
        "eval_samples": len(samples),
        "generate_seconds": round(generated - started, 2),
        "firmware_seconds": round(time.perf_counter() - generated, 2),
    }


def fits(figures: dict[str, Any]) -> bool:
    return all(figures[key] <= limit for key, limit in BOARD_LIMITS.items())


def _quality(r: dict[str, Any]) -> str:
    if "accuracy" in r:
        return f"accuracy {r['accuracy'] * 100:.1f} %"
    return f"top-1 agreement {r['agreement'] * 100:.1f} %"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m4 = BOARDS["cortex-m4"]
    lines = [
        "# Microcontroller benchmark (Cortex-M in qemu: MPS2-AN386 M4F, AN500 M7, AN505 M33)",
        "",
        f"`{results['command']}` on {results['machine']}; {results['toolchain']}; emx-onnx-cgen "
        f"{results['emx_onnx_cgen']}.",
        "Flash = text+data of the footprint image (the variant's `size_bytes`); RAM = data+bss + stack high-water",
        "mark; instructions per inference from the board's timer under `-icount shift=0`; estimated latency =",
        f"instructions at one per cycle at the board's stated clock ({m4.clock_mhz} MHz for the Cortex-M4, a lower",
        "bound). digits: the sample MLP on its labelled held-out data; the MLPerf Tiny models: seeded random",
        "weights on synthetic inputs (agreement, not accuracy). firmware s = firmware build + every qemu run of the",
        "evaluation; variant s = the whole variant build; rebuild s = the same build again from the caches.",
        "",
        "## fp32 on the Cortex-M4F",
        "",
        "| model | backend | flash KB | RAM KB (stack) | instructions | est. ms @120 MHz | max abs diff "
        "| fits 1 MB/256 KB | firmware s | variant s | rebuild s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        for backend in ("tvm", "emx"):
            r = row.get(backend)
            if r is None or "error" in r:
                lines.append(f"| {name} | {backend} | – | – | – | – | – | – | – | – | {r and r.get('error', '')} |")
                continue
            variant_s = r.get("variant_seconds", r.get("generate_seconds", 0) + r["firmware_seconds"])
            lines.append(
                f"| {name} | {backend} | {r['flash_bytes'] / 1024:.1f} | {r['ram_bytes'] / 1024:.1f} "
                f"({r['stack_bytes'] / 1024:.1f}) | {r['instructions']:,} | {r['latency_ms_estimate']:.1f} | "
                f"{r['max_abs_diff']:.2g} | {'yes' if fits(r) else 'no'} | {r['firmware_seconds']:.1f} | "
                f"{variant_s:.1f} | {r.get('rebuild_seconds', '–')} |")
    lines += ["", "## int8 on the Cortex-M4F", "",
              "emx: the factory's `emx-int8-cortex-m4` (QOperator int8, integer kernels accumulating in int32). "
              "tvm-qdq: the QDQ int8 graph through the TVM C bundle (TVM dequantizes: float kernels). "
              "Quality is the firmware's on the same samples as the fp32 column; |Δ| int8 graph = against "
              "onnxruntime on the same int8 graph.", "",
              "| model | path | flash KB | RAM KB (stack) | instructions | est. ms @120 MHz | quality | fp32 quality "
              "| max abs diff vs int8 graph | accepted | firmware s | rebuild s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["models"].items():
        base_q = _quality({"agreement": 1.0, **row["fp32_quality"]})
        for path_name, key in (("emx", "emx_int8"), ("tvm-qdq", "tvm_int8")):
            r = row.get(key, {})
            if not r or "error" in r:
                lines.append(f"| {name} | {path_name} | – | – | – | – | – | {base_q} | – | – | – | "
                             f"{r.get('error', 'not run')[:80]} |")
                continue
            lines.append(
                f"| {name} | {path_name} | {r['flash_bytes'] / 1024:.1f} | {r['ram_bytes'] / 1024:.1f} "
                f"({r['stack_bytes'] / 1024:.1f}) | {r['instructions']:,} | {r['latency_ms_estimate']:.1f} | "
                f"{_quality(r)} | {base_q} | {r['max_abs_diff_vs_int8_graph']:.2g} | "
                f"{'yes' if r.get('accepted', True) else 'no'} | {r.get('firmware_seconds', r.get('seconds', 0)):.1f} "
                f"| {r.get('rebuild_seconds', '–')} |")
    lines += ["", "## Other boards (TVM fp32)", "",
              "| model | target | board | flash KB | RAM KB | instructions | est. ms (clock) | max abs diff "
              "| firmware s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["models"].items():
        for target, r in row.get("targets", {}).items():
            if "error" in r:
                lines.append(f"| {name} | {target} | – | – | – | – | – | – | {r['error'][:80]} |")
                continue
            lines.append(f"| {name} | {target} | {BOARDS[target].name} | {r['flash_bytes'] / 1024:.1f} | "
                         f"{r['ram_bytes'] / 1024:.1f} | {r['instructions']:,} | {r['latency_ms_estimate']:.1f} "
                         f"({r['clock_mhz']} MHz) | {r['max_abs_diff']:.2g} | {r['firmware_seconds']:.1f} |")
    lines += ["", f"Anchor: {results['anchor']['source']}.", "",
              "| model | MLPerf Tiny task | published ms (int8, real board) | TVM fp32 estimate ms "
              "| emx fp32 estimate ms | emx int8 estimate ms |",
              "|---|---|---|---|---|---|"]
    for name, row in results["models"].items():
        if "anchor" not in row:
            continue
        task, ms = row["anchor"]["task"], row["anchor"]["published_ms"]
        est = [row.get(b, {}).get("latency_ms_estimate") for b in ("tvm", "emx", "emx_int8")]
        cells = [f"{e:.1f}" if e is not None else "–" for e in est]
        lines.append(f"| {name} | {task} | {ms:.1f} | {' | '.join(cells)} |")
    path.write_text("\n".join(lines) + "\n")


def attempt(what: str, run: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    print(what, flush=True)
    try:
        return run(*args)
    except Exception as exc:  # a model a path cannot take is a result too
        return {"error": str(exc)[:300]}


def measure_model(name: str, cache: Path) -> dict[str, Any]:
    base, dataset = load(name, cache)
    row: dict[str, Any] = {"fp32_quality": fp32_quality(base, dataset)}
    if name in ANCHOR:
        task, throughput = ANCHOR[name]
        row["anchor"] = {"task": task, "throughput_per_s": throughput, "published_ms": round(1000 / throughput, 2)}
    row["tvm"] = attempt(f"{name}: TVM ...", factory_variant, base, dataset, "tvm-cortex-m4", cache / name)
    row["emx_int8"] = attempt(f"{name}: emx int8 ...", factory_variant, base, dataset, "emx-int8-cortex-m4",
                              cache / name)
    row["tvm_int8"] = attempt(f"{name}: TVM int8 (QDQ) ...", tvm_int8, base, dataset, cache / f"{name}-int8")
    row["emx"] = attempt(f"{name}: emx fp32 ...", emx_fp32, base, dataset, cache / f"{name}-emx")
    row["targets"] = {target: attempt(f"{name}: TVM {target} ...", factory_variant, base, dataset, f"tvm-{target}",
                                      cache / name) for target in OTHER_TARGETS.get(name, ())}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    toolchain = find_toolchain()
    qemu_version = subprocess.run([toolchain.qemu, "--version"], capture_output=True, text=True).stdout
    subset = f" --models {args.models}" if args.models != ",".join(MODELS) else ""
    results: dict[str, Any] = {
        "command": f"python benchmarks/mcu.py{subset}",
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "toolchain": f"{toolchain.version()}; {qemu_version.splitlines()[0]}",
        "emx_onnx_cgen": emx.version(),
        "anchor": {"source": ANCHOR_SOURCE, "clock_mhz": BOARDS["cortex-m4"].clock_mhz},
        "board_limits": BOARD_LIMITS,
        "firmware_seconds_target": 60,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="mcu-bench-") as tmp:
        cache = Path(tmp)
        for name in args.models.split(","):
            results["models"][name] = measure_model(name, cache)
            print(json.dumps(results["models"][name], indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mcu.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "mcu.md")
    print((args.out / "mcu.md").read_text())


if __name__ == "__main__":
    main()
