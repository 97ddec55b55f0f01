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

Writes wasm.json and wasm.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
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
from tinymlops.store import sha256_bytes  # noqa: E402
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
    result = {
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
    (args.out / "wasm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
