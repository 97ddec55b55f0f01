"""Microcontroller benchmark: MLPerf Tiny models as Cortex-M4 firmware, measured in qemu's MPS2-AN386.

    python benchmarks/mcu.py [--models ds_cnn,resnet8,autoencoder] [--out benchmarks/results]

For each model (`tinymlops.model.mlperf_tiny`, seeded random weights: agreement, not accuracy):

- TVM: the factory's own `build_variant(..., "tvm-cortex-m4")` on synthetic inputs, timed end to end
  (TVM compile + C bundle, firmware build, qemu run on the evaluation samples), with the figures the
  menu records: flash, RAM (static + stack high-water mark), instructions per inference, max |Δ| vs
  onnxruntime, and the firmware build + measurement seconds alone (target: at most 60 s per variant).
- emx-onnx-cgen (PyPI), the second backend: its C (`model(input, output)`, temporaries on the stack)
  wrapped in the same `model_run` API and measured by the same firmware builder and harness on the same
  samples.
- int8: the factory's static int8 (QDQ, calibrated on the synthetic inputs) through the same TVM C
  bundle and firmware; outputs against onnxruntime's int8 and the fp32 base (top-1 agreement).
- The anchor: MLPerf Tiny v1.0's published closed-division throughput of OctoML's microTVM (native
  schedules, int8) on NUCLEO-L4R5ZI, a Cortex-M4F at 120 MHz: KWS 6.943, IC 2.569, AD 85.339 inferences/s
  (mlcommons/tiny_results_v1.0, closed/OctoML/results/microtvm_native/NUCLEO_L4R5ZI/*/performance).  Our
  models are fp32 and our figures instruction counts, so the comparison is the instructions' estimated
  latency at the same 120 MHz and one instruction per cycle (a lower bound) against a measured int8 time.

Writes mcu.json and mcu.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tinymlops.model import mlperf_tiny  # noqa: E402
from tinymlops.runners import Runner  # noqa: E402
from tinymlops.variants import build_variant, load_dataset, load_source  # noqa: E402
from tinymlops.variants.mcu import measure  # noqa: E402
from tinymlops.variants.mcu.firmware import build_firmware, find_toolchain  # noqa: E402
from tinymlops.variants.transforms import Int8Static  # noqa: E402
from tinymlops.variants.tvm import compile_onnx, deterministic_tar  # noqa: E402

MODELS = {"ds_cnn": mlperf_tiny.ds_cnn, "resnet8": mlperf_tiny.resnet8, "autoencoder": mlperf_tiny.autoencoder}
# MLPerf Tiny v1.0, closed, OctoML microtvm_native on NUCLEO-L4R5ZI (Cortex-M4F, 120 MHz), int8: median
# throughput in inferences per second.
ANCHOR = {"ds_cnn": ("KWS", 6.943), "resnet8": ("IC", 2.569), "autoencoder": ("AD", 85.339)}
ANCHOR_SOURCE = ("MLPerf Tiny v1.0 closed, OctoML microtvm_native, NUCLEO-L4R5ZI (Cortex-M4F at 120 MHz), int8 "
                 "(github.com/mlcommons/tiny_results_v1.0)")
BOARD_LIMITS = {"flash_bytes": 1 << 20, "ram_bytes": 256 << 10}  # "fits": 1 MB flash, 256 KB RAM


def tvm_variant(model: bytes, cache: Path) -> dict[str, Any]:
    base = load_source(model)
    dataset = load_dataset(None, base)
    started = time.perf_counter()
    entry = build_variant(base, dataset, "tvm-cortex-m4", accuracy_budget=0.01, cache_dir=cache).entry
    metrics = entry["metrics"]
    return {
        "accepted": entry["accepted"], "reason": entry["reason"],
        "bundle_bytes": entry["size_bytes"],
        **{k: metrics[k] for k in ("flash_bytes", "ram_bytes", "static_ram_bytes", "stack_bytes", "instructions",
                                   "latency_ms_estimate", "max_abs_diff", "agreement", "eval_samples",
                                   "arena_bytes", "workspace_bytes", "kernel_calls", "firmware_seconds")},
        "variant_seconds": round(time.perf_counter() - started, 2),
    }


def tvm_int8(model: bytes, cache: Path) -> dict[str, Any]:
    """The factory's static int8 (QDQ) model through the same C bundle and firmware: TVM imports QDQ as
    quantize/dequantize around float kernels, so this measures the flash int8 weights save and the outputs'
    distance, not integer arithmetic."""
    base = load_source(model)
    dataset = load_dataset(None, base)
    int8 = Int8Static().apply(model, dataset.calibration, base.input_name)
    started = time.perf_counter()
    bundle = compile_onnx(int8, "cortex-m4")
    firmware = build_firmware(bundle, cache)
    runner = measure.FirmwareRunner(firmware, find_toolchain().qemu, base.input_name, "output")
    samples = measure.evaluation_subset(dataset).evaluation
    outputs = runner.many(samples)
    int8_ort, fp32_ort = Runner.load(int8).many(samples), Runner.load(model).many(samples)
    outputs = outputs.reshape(fp32_ort.shape)
    figures = runner.figures()
    flat = outputs.reshape(len(outputs), -1)
    return {
        **{k: figures[k] for k in ("flash_bytes", "ram_bytes", "stack_bytes", "instructions", "latency_ms_estimate")},
        "max_abs_diff_vs_int8_onnxruntime": float(np.abs(outputs - int8_ort).max()),
        "max_abs_diff_vs_fp32": float(np.abs(outputs - fp32_ort).max()),
        "top1_agreement_with_fp32": float(np.mean(flat.argmax(1) == fp32_ort.reshape(len(flat), -1).argmax(1))),
        "eval_samples": len(samples),
        "seconds": round(time.perf_counter() - started, 2),
    }


def emx_bundle(model: bytes, work: Path) -> bytes:
    """emx-onnx-cgen's C for `model`, behind the same model_run API as the TVM bundle."""
    (work / "model.onnx").write_bytes(model)
    subprocess.run(["emx-onnx-cgen", "compile", "model.onnx", "lib0.c", "--model-name", "emx_model",
                    "--input-dim", "N=1", "--large-weight-threshold", "0", "--large-temp-threshold", "0",
                    "--color", "never"], cwd=work, check=True, capture_output=True)
    source = (work / "lib0.c").read_text()
    match = re.search(r"^void emx_model\(const float (\w+)((?:\[[^\]]*\])+), float (\w+)((?:\[[^\]]*\])+)\)",
                      source, re.MULTILINE)
    if match is None:
        raise RuntimeError("emx-onnx-cgen: no `void emx_model(const float in[...], float out[...])` entry point")
    in_shape = [int(d) for d in re.findall(r"\[(?:restrict )?(\d+)\]", match.group(2))]
    out_shape = [int(d) for d in re.findall(r"\[(?:restrict )?(\d+)\]", match.group(4))]
    info = {"input": {"shape": in_shape, "dtype": "float32", "bytes": 4 * int(np.prod(in_shape))},
            "output": {"shape": out_shape, "dtype": "float32", "bytes": 4 * int(np.prod(out_shape))},
            "arena_bytes": 0, "workspace_bytes": 0, "kernel_calls": 1, "kernels": ["emx_model"]}
    (work / "model.h").write_text(
        "#include <stdint.h>\n"
        f"#define MODEL_INPUT_BYTES {info['input']['bytes']}\n#define MODEL_OUTPUT_BYTES {info['output']['bytes']}\n"
        "int model_run(const float *input, float *output);\n")
    (work / "model.c").write_text(
        '#include "model.h"\nvoid emx_model();\n'
        "int model_run(const float *input, float *output) { emx_model(input, output); return 0; }\n")
    (work / "bundle.json").write_text(json.dumps(info))
    return deterministic_tar([work / name for name in ("lib0.c", "model.c", "model.h", "bundle.json")])


def emx_variant(model: bytes, samples: np.ndarray, cache: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="emx-") as tmp:
        bundle = emx_bundle(model, Path(tmp))
    generated = time.perf_counter()
    firmware = build_firmware(bundle, cache)
    runner = measure.FirmwareRunner(firmware, find_toolchain().qemu, "input", "output")
    outputs = runner.many(samples)
    reference = Runner.load(model).many(samples)
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


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [
        "# Microcontroller benchmark (Cortex-M4F, MPS2-AN386 in qemu)",
        "",
        f"`{results['command']}` on {results['machine']}; {results['toolchain']}.",
        "Flash = text+data of the footprint image; RAM = data+bss + stack high-water mark; instructions per",
        "inference from the board's timer under `-icount shift=0` (exact to 40); estimated latency =",
        f"instructions at one per cycle at {measure.CLOCK_MHZ} MHz (a lower bound). Random-weight models, fp32.",
        "",
        "| model | backend | flash KB | RAM KB (stack) | instructions | est. ms @120 MHz | max abs diff "
        "| fits 1 MB/256 KB | firmware s | variant s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        for backend in ("tvm", "emx"):
            r = row.get(backend)
            if r is None or "error" in r:
                lines.append(f"| {name} | {backend} | – | – | – | – | – | – | – | {r and r.get('error', '')} |")
                continue
            lines.append(
                f"| {name} | {backend} | {r['flash_bytes'] / 1024:.1f} | {r['ram_bytes'] / 1024:.1f} "
                f"({r['stack_bytes'] / 1024:.1f}) | {r['instructions']:,} | {r['latency_ms_estimate']:.1f} | "
                f"{r['max_abs_diff']:.2g} | {'yes' if fits(r) else 'no'} | {r['firmware_seconds']:.1f} | "
                f"{r.get('variant_seconds', r.get('generate_seconds', 0) + r['firmware_seconds']):.1f} |")
    lines += ["", "int8 (static QDQ) through the TVM C bundle: TVM dequantizes to float kernels, so this is int8 "
              "storage, not int8 arithmetic.", "",
              "| model | flash KB | RAM KB | instructions | max abs diff vs int8 onnxruntime "
              "| top-1 agreement with fp32 |",
              "|---|---|---|---|---|---|"]
    for name, row in results["models"].items():
        r = row.get("tvm_int8", {})
        if "error" in r or not r:
            lines.append(f"| {name} | – | – | – | – | {r.get('error', 'not run')[:80]} |")
            continue
        lines.append(f"| {name} | {r['flash_bytes'] / 1024:.1f} | {r['ram_bytes'] / 1024:.1f} | "
                     f"{r['instructions']:,} | {r['max_abs_diff_vs_int8_onnxruntime']:.2g} | "
                     f"{r['top1_agreement_with_fp32'] * 100:.1f} % |")
    lines += ["", f"Anchor: {results['anchor']['source']}.", "",
              "| model | MLPerf Tiny task | published ms (int8, real board) | TVM fp32 estimate ms "
              "| emx fp32 estimate ms |",
              "|---|---|---|---|---|"]
    for name, row in results["models"].items():
        task, ms = row["anchor"]["task"], row["anchor"]["published_ms"]
        est = [row.get(b, {}).get("latency_ms_estimate") for b in ("tvm", "emx")]
        cells = [f"{e:.1f}" if e is not None else "–" for e in est]
        lines.append(f"| {name} | {task} | {ms:.1f} | {cells[0]} | {cells[1]} |")
    path.write_text("\n".join(lines) + "\n")


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
        "emx_onnx_cgen": shutil.which("emx-onnx-cgen") is not None,
        "anchor": {"source": ANCHOR_SOURCE, "clock_mhz": measure.CLOCK_MHZ},
        "board_limits": BOARD_LIMITS,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="mcu-bench-") as tmp:
        cache = Path(tmp)
        for name in args.models.split(","):
            model = MODELS[name]()
            task, throughput = ANCHOR[name]
            row: dict[str, Any] = {"anchor": {"task": task, "throughput_per_s": throughput,
                                              "published_ms": round(1000 / throughput, 2)}}
            print(f"{name}: TVM ...", flush=True)
            try:
                row["tvm"] = tvm_variant(model, cache / name)
            except Exception as exc:  # a model the path cannot take is a result too
                row["tvm"] = {"error": str(exc)[:300]}
            base = load_source(model)
            samples = measure.evaluation_subset(load_dataset(None, base)).evaluation
            print(f"{name}: TVM int8 ...", flush=True)
            try:
                row["tvm_int8"] = tvm_int8(model, cache / f"{name}-int8")
            except Exception as exc:
                row["tvm_int8"] = {"error": str(exc)[:300]}
            print(f"{name}: emx-onnx-cgen ...", flush=True)
            try:
                row["emx"] = emx_variant(model, samples, cache / f"{name}-emx")
            except Exception as exc:
                row["emx"] = {"error": str(exc)[:300]}
            results["models"][name] = row
            print(json.dumps(row, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mcu.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "mcu.md")
    print((args.out / "mcu.md").read_text())


if __name__ == "__main__":
    main()
