"""WebAssembly pre/post modules benchmark: what the sandbox costs per call, and how fast it stops a loop.

    python benchmarks/wasm.py [--calls 20000] [--loops 20] [--out benchmarks/results]

The modules are the committed samples (examples/wasm/), run by `tinymlops.wasm.sandbox.Sandbox`, the call
path the factory and the agent use (fuel set, sample copied into a numpy view of the module's memory,
`wasmtime_func_call_unchecked` with a preallocated argument buffer).

- per call: the median time of one `Sandbox.process` on the digits pre module (64 float32 raw pixels ->
  64 scaled, target <= 5 us) and on the post module (10 scores -> top-3 pairs), each beside numpy doing
  the same job on the same sample, and beside wasmtime's generic path (`Memory.write`, `Func.__call__`,
  `Memory.read`), which builds the call's types and values on every call.  Interleaved in one loop so
  a busy machine slows all of them alike.
- a looping module (`loop br 0`): the time from the call to the `fuel` WasmCallError for 64 values
  (`fuel_for(64)` units), instantiating the module afresh included (the sandbox does it before raising),
  median and max over --loops calls, target <= 10 ms.
- compile: Cranelift's time to compile each sample module (a fresh engine each time, no cache).
- split exactness: every candidate split point the factory finds (`tinymlops.variants.split`) in the digits
  MLP and the MLPerf Tiny graphs (seeded weights), head -> tail against the whole graph on 64 inputs,
  target max |delta| <= 1e-5 (fp32).
- hybrid choice: ResNet-8 on a device 300x slower than this host (the Cortex-M4 class of
  `selection.energy`; its head and local runs are timed here and scaled), its tail on this host, over a
  link trace (Wi-Fi, LTE, 3G, EDGE, one step per second).  At each step `selection.hybrid.choose_mode`
  decides from the menu's figures and the bandwidth and RTT the device measured up to the step before
  (an EWMA, so it lags a change; a probe when the link comes up); every mode is then run (head, tail,
  whole model timed here, transfer at the step's true bandwidth and RTT) and the chosen one's end-to-end
  latency compared with the best's, target within 10 % (per step, and over the whole trace).  The link
  is simulated; the compute is measured.

Writes wasm.json and wasm.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import wasmtime  # noqa: E402

from tinymlops.errors import WasmCallError  # noqa: E402
from tinymlops.model import mlperf_tiny  # noqa: E402
from tinymlops.model.digits import prepare_digits  # noqa: E402
from tinymlops.runners import Runner  # noqa: E402
from tinymlops.selection.energy import ARCH_MODELS  # noqa: E402
from tinymlops.selection.hybrid import HybridPolicy, Link, choose_mode, costs  # noqa: E402
from tinymlops.store import sha256_bytes  # noqa: E402
from tinymlops.variants.split import EXACT_ATOL, head_and_tail, split_entry  # noqa: E402
from tinymlops.wasm.sandbox import FUEL_PER_VALUE, Sandbox, compile_module, fuel_for  # noqa: E402

EXAMPLES = ROOT / "examples" / "wasm"
LOOP = wasmtime.wat2wasm('(module (memory (export "memory") 1) '
                         '(func (export "process") (param i32) (result i32) (loop $l (br $l)) i32.const 0))')


def sandbox(blob: bytes, what: str) -> Sandbox:
    return Sandbox(compile_module(blob, sha256_bytes(blob), what=what))


def numpy_pre(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.clip(x / np.float32(16), 0, 1)


def numpy_post(scores: NDArray[np.float32]) -> NDArray[np.float32]:
    exp = np.exp(scores - scores.max())
    probabilities = exp / exp.sum()
    top = np.argsort(-probabilities, kind="stable")[:3]
    return np.stack([top.astype(np.float32), probabilities[top]], axis=1).reshape(-1)


def generic_call(blob: bytes) -> Callable[[NDArray[np.float32]], NDArray[np.float32]]:
    """wasmtime-py's documented path: no cached types, values converted on every call."""
    config = wasmtime.Config()
    config.consume_fuel = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, blob), [])
    exports = instance.exports(store)
    memory, process = exports["memory"], exports["process"]
    assert isinstance(memory, wasmtime.Memory) and isinstance(process, wasmtime.Func)

    def call(x: NDArray[np.float32]) -> NDArray[np.float32]:
        store.set_fuel(fuel_for(x.size))
        memory.write(store, x.tobytes(), 0)
        m = process(store, x.size)
        return np.frombuffer(memory.read(store, 0, 4 * m), np.float32)

    return call


def per_call(name: str, blob: bytes, sample: NDArray[np.float32], reference: Callable[..., Any],
             calls: int) -> dict[str, Any]:
    fast, generic = sandbox(blob, name).process, generic_call(blob)
    np.testing.assert_allclose(fast(sample), reference(sample), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fast(sample), generic(sample))
    timings: dict[str, list[int]] = {"sandbox": [], "numpy": [], "generic": []}
    functions = {"sandbox": fast, "numpy": reference, "generic": generic}
    for i in range(calls):
        for label, function in functions.items():
            if label == "generic" and i % 10:  # ~10x slower: a tenth of the calls is plenty
                continue
            start = time.perf_counter_ns()
            function(sample)
            timings[label].append(time.perf_counter_ns() - start)
    return {"values_in": int(sample.size),
            **{f"{label}_us_median": round(statistics.median(ns) / 1e3, 2) for label, ns in timings.items()}}


def loop_stop(runs: int) -> dict[str, Any]:
    module = sandbox(LOOP, "looping module")
    sample = np.zeros(64, np.float32)
    stopped = []
    for _ in range(runs):  # each call meets a fresh instance (the previous one was replaced after its trap)
        start = time.perf_counter_ns()
        try:
            module.process(sample)
        except WasmCallError as exc:
            assert exc.reason == "fuel", exc
        stopped.append(time.perf_counter_ns() - start)
    assert module.failures["fuel"] == runs
    return {"values_in": 64, "fuel": fuel_for(64), "fuel_per_value": FUEL_PER_VALUE,
            "stopped_ms_median": round(statistics.median(stopped) / 1e6, 3),
            "stopped_ms_max": round(max(stopped) / 1e6, 3), "runs": runs}


def compile_ms(blob: bytes, repeats: int = 5) -> float:
    timings = []
    for _ in range(repeats):
        engine = wasmtime.Engine(wasmtime.Config())
        start = time.perf_counter_ns()
        wasmtime.Module(engine, blob)
        timings.append(time.perf_counter_ns() - start)
    return round(statistics.median(timings) / 1e6, 2)


def graphs(workdir: Path) -> dict[str, tuple[bytes, NDArray[np.float32]]]:
    """The models split in the benchmark, with 64 inputs each (the digits held-out split; seeded noise)."""
    digits = prepare_digits(workdir, seed=0)
    with np.load(digits.data_path) as npz:
        found = {"digits-mlp": (digits.model_path.read_bytes(), npz["x"][:64])}
    for name, build, shape in (("resnet8", mlperf_tiny.resnet8, (3, 32, 32)),
                               ("ds-cnn", mlperf_tiny.ds_cnn, (1, 49, 10)),
                               ("fc-autoencoder", mlperf_tiny.autoencoder, (640,))):
        found[name] = (build(), mlperf_tiny.synthetic_inputs(shape, count=64))
    return found


def split_exactness(models: dict[str, tuple[bytes, NDArray[np.float32]]]) -> dict[str, Any]:
    result = {}
    for name, (model, x) in models.items():
        entry = split_entry({"format": "onnx", "accepted": True}, model, x)
        assert entry is not None, name
        result[name] = {"candidates": entry["candidates"], "points": len(entry["points"]),
                        "exact": sum(p["exact"] for p in entry["points"]),
                        "max_abs_diff": max(p["max_abs_diff"] for p in entry["points"]),
                        "entry": entry}
    return result


TRACE = (("wifi", 10, 50e6, 4.0), ("lte", 10, 12e6, 35.0), ("3g", 10, 1.5e6, 90.0), ("edge", 10, 200e3, 250.0),
         ("wifi", 10, 50e6, 4.0), ("lte", 10, 12e6, 35.0))
EWMA = 0.8  # weight of the newest link measurement in the device's estimate


def _timed_ms(function: Callable[[], Any], runs: int = 15) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        function()
        timings.append(time.perf_counter_ns() - start)
    return statistics.median(timings) / 1e6


def hybrid_trace(model: bytes, x: NDArray[np.float32], entry: dict[str, Any]) -> dict[str, Any]:
    slowdown = ARCH_MODELS["cortex-m4"].slowdown
    whole = Runner.load(model)
    p50 = whole.latency_ms(x)[0]
    variant = {"metrics": {"latency_ms_p50": p50}, "requirements": {"min_ram_mb": 0},
               "health_check": {"inputs": [x[0].tolist()]}, "split": entry}
    policy = HybridPolicy(int8_transfer=True)
    cost = costs(variant, slowdown=slowdown, ram_mb=1 << 20, policy=policy)
    parts = {split.k: tuple(Runner.load(b) for b in head_and_tail(model, _tensor(entry, split.k)))
             for split in cost.splits}
    sample = x[:1]
    steps, estimate = [], (TRACE[0][2], TRACE[0][3])  # a probe when the link comes up
    for label, seconds, bandwidth, rtt in TRACE:
        for _ in range(seconds):
            known = Link(*estimate)
            choice = choose_mode(cost, known, policy)
            measured = {"local": _timed_ms(lambda: whole.one(sample[0])) * slowdown}
            for split in cost.splits:
                head, tail = parts[split.k]
                middle = head.many(sample)
                head_ms = _timed_ms(lambda head=head: head.many(sample)) * slowdown
                tail_ms = _timed_ms(lambda tail=tail, middle=middle: tail.many(middle))
                measured[f"split@{split.k}"] = head_ms + rtt + 8000.0 * split.bytes / bandwidth + tail_ms
            chosen = "local" if choice.mode == "local" else f"split@{choice.k}"
            best = min(measured, key=lambda name: measured[name])
            steps.append({"link": label, "chosen": chosen, "best": best, "chosen_ms": round(measured[chosen], 3),
                          "best_ms": round(measured[best], 3), "local_ms": round(measured["local"], 3),
                          "reason": choice.reason})
            estimate = (EWMA * bandwidth + (1 - EWMA) * estimate[0], EWMA * rtt + (1 - EWMA) * estimate[1])
    ratios = [s["chosen_ms"] / s["best_ms"] for s in steps]
    within = sum(r <= 1.10 for r in ratios)
    by_link: dict[str, dict[str, int]] = {}
    for step in steps:
        by_link.setdefault(step["link"], {}).setdefault(step["chosen"], 0)
        by_link[step["link"]][step["chosen"]] += 1
    total_chosen, total_best = sum(s["chosen_ms"] for s in steps), sum(s["best_ms"] for s in steps)
    worst = max(range(len(steps)), key=lambda i: ratios[i])
    change = max((i for i in range(1, worst + 1) if steps[i]["link"] != steps[i - 1]["link"]), default=0)
    after = (f"{steps[worst]['link']}, {worst - change + 1} step(s) after the link changed" if change
             else f"{steps[worst]['link']}, the first link")
    return {"model": "resnet8", "slowdown": slowdown, "steps": len(steps), "within_10pct": within,
            "total_over_best_pct": round(100 * (total_chosen / total_best - 1), 2),
            "worst_ratio": round(max(ratios), 3), "worst_step": worst, "worst_after_change": after,
            "mean_ratio": round(statistics.fmean(ratios), 4), "total_chosen_ms": round(total_chosen, 1),
            "total_best_ms": round(total_best, 1), "total_local_ms": round(sum(s["local_ms"] for s in steps), 1),
            "choices_by_link": by_link, "trace": steps}


def _tensor(entry: dict[str, Any], k: int) -> str:
    return str(next(p["tensor"] for p in entry["points"] if p["k"] == k))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--loops", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    pre, post = (EXAMPLES / "pre_digits.wasm").read_bytes(), (EXAMPLES / "post_topk.wasm").read_bytes()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 17, 64).astype(np.float32)
    logits = rng.normal(size=10).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        models = graphs(Path(tmp))
    exactness = split_exactness(models)
    hybrid = hybrid_trace(*models["resnet8"], exactness["resnet8"]["entry"])
    result = {
        "split": {name: {k: v for k, v in r.items() if k != "entry"} for name, r in exactness.items()},
        "hybrid": hybrid,
        "pre": per_call("pre", pre, pixels, numpy_pre, args.calls),
        "post": per_call("post", post, logits, numpy_post, args.calls),
        "loop": loop_stop(args.loops),
        "compile_ms": {"pre_digits": compile_ms(pre), "post_topk": compile_ms(post)},
        "sizes_bytes": {"pre_digits": len(pre), "post_topk": len(post)},
        "wasmtime": importlib.metadata.version("wasmtime"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wasm.json").write_text(json.dumps(result, indent=2) + "\n")
    pre_r, post_r, loop = result["pre"], result["post"], result["loop"]
    lines = [
        "# WebAssembly pre/post modules",
        "",
        f"Sample modules from examples/wasm/ in `tinymlops.wasm.sandbox` (wasmtime {result['wasmtime']}, "
        "Cranelift, fuel metering on); medians of interleaved calls on one sample.",
        "",
        "| measure | result | beside | target |",
        "|---|---|---|---|",
        f"| pre module per call, {pre_r['values_in']} floats (cached path) | {pre_r['sandbox_us_median']} µs | "
        f"numpy {pre_r['numpy_us_median']} µs; wasmtime's generic call {pre_r['generic_us_median']} µs | ≤ 5 µs |",
        f"| post module per call, {post_r['values_in']} scores → top-3 | {post_r['sandbox_us_median']} µs | "
        f"numpy {post_r['numpy_us_median']} µs; generic call {post_r['generic_us_median']} µs | – |",
        f"| looping module stopped ({loop['fuel']:,} fuel for {loop['values_in']} values) | median "
        f"{loop['stopped_ms_median']} ms, max {loop['stopped_ms_max']} ms over {loop['runs']} | – | ≤ 10 ms |",
        f"| Cranelift compile | pre {result['compile_ms']['pre_digits']} ms ({len(pre)} B), post "
        f"{result['compile_ms']['post_topk']} ms ({len(post)} B) | – | – |",
    ]
    split_cells = "; ".join(f"{name} {r['exact']}/{r['points']} exact (max {r['max_abs_diff']:.1e})"
                            for name, r in result["split"].items())
    lines += [
        f"| split points, head → tail vs whole (fp32, 64 inputs) | {split_cells} | – | max \\|Δ\\| ≤ {EXACT_ATOL:g} |",
        f"| hybrid choice, ResNet-8 on a device {hybrid['slowdown']:g}× slower, {hybrid['steps']}-step link trace | "
        f"{hybrid['total_chosen_ms']} ms in all vs {hybrid['total_best_ms']} ms for the best mode at every step "
        f"(+{hybrid['total_over_best_pct']} %); within 10 % at {hybrid['within_10pct']}/{hybrid['steps']} steps "
        f"(worst {hybrid['worst_ratio']}× on {hybrid['worst_after_change']}); "
        f"{hybrid['total_local_ms']} ms all-local | choices per link: "
        + ", ".join(f"{link}: {counts}" for link, counts in hybrid["choices_by_link"].items()) + " | within 10 % |",
    ]
    (args.out / "wasm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
