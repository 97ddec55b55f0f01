"""Model-stealing detection benchmark: the agent's PRADA-style monitor on the digits sample model.

    python benchmarks/prada.py [--seeds 10] [--normal 1000] [--max-queries 400] [--lam 0.1]
                               [--overhead-runs 2000] [--out benchmarks/results]

The model: the digits MLP (`tinymlops.model.digits`, training seed 0), quantized to static int8 by the
factory's own transform (`variants.transforms.Int8Static`, calibrated on the held-out split); the queries
are answered by that int8 model through `runners.Runner`, as a device answers them.  The detector is
`tinymlops.protection.prada.Monitor` with its defaults (the ones the agent runs).

- no alarm on normal traffic: for each seed, 1,000 queries drawn without replacement from the 1,797 digit
  images in a shuffled order (the held-out split alone has 450 images, and repeating an image would be a
  duplicate query, which no natural client sends).  Reported: clients flagged, and the lowest W seen.
- detection: for each seed, a Jacobian-based dataset augmentation attack (Papernot et al. 2017,
  `tinymlops.protection.extraction`, which the protect demo runs against a device too): ten seed
  images from the held-out split (one per class), a substitute (softmax regression, trained on the oracle's
  labels after each round), and rounds S <- S ∪ {clip(x + λ·sign(∇ₓ F_sub[O(x)]), 0, 1)}, every new point
  queried.  Reported: queries (seeds included) until the client is flagged (target ≤ 100), and W then.
- overhead: the median time of one `Monitor.observe` (a client with a full history and window, the test
  every `stride` queries included) against the median time of one int8 inference (`Runner.one`),
  interleaved in the same loop (target ≤ 5 %).  Measured twice: on the digits MLP, whose int8 inference
  (~10 µs, mostly onnxruntime's call overhead) is smaller than any Python-side bookkeeping, and on the MLPerf
  Tiny ResNet-8 (`tinymlops.model.mlperf_tiny`, static int8, synthetic inputs as its calibration data: no
  CIFAR-10 here), the size of model a device actually serves; the detector watches its 3,072-value inputs.

Writes prada.json and prada.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tinymlops.model.digits import INPUT_NAME, prepare_digits  # noqa: E402
from tinymlops.model.mlperf_tiny import resnet8, synthetic_inputs  # noqa: E402
from tinymlops.protection.extraction import jacobian_augmentation, seed_set  # noqa: E402
from tinymlops.protection.prada import Monitor, PradaConfig  # noqa: E402
from tinymlops.runners import Runner  # noqa: E402
from tinymlops.variants.transforms import Int8Static  # noqa: E402


def load_model(workdir: Path) -> tuple[Runner, NDArray[np.float32], NDArray[np.int64]]:
    artifacts = prepare_digits(workdir, seed=0)
    with np.load(artifacts.data_path) as npz:
        x_test, y_test = npz["x"], npz["y"]
    int8 = Int8Static().apply(artifacts.model_path.read_bytes(), x_test, INPUT_NAME)
    return Runner.load(int8), x_test, y_test


def all_digits() -> NDArray[np.float32]:
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32)


def normal_run(runner: Runner, images: NDArray[np.float32], n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    queries = images[rng.permutation(len(images))[:n]]
    classes = runner.many(queries).argmax(1)
    monitor = Monitor()
    lowest = 1.0
    for i, (q, c) in enumerate(zip(queries, classes, strict=True)):
        monitor.observe("app", q, int(c), now=float(i))
        w = monitor._clients["app"].w  # the last test's W (private: a benchmark looks inside)
        if w is not None:
            lowest = min(lowest, w)
    return {"seed": seed, "flagged": monitor.alarmed("app"), "lowest_w": round(lowest, 4)}


def attack_run(runner: Runner, x_test: NDArray[np.float32], y_test: NDArray[np.int64], *, seed: int, lam: float,
               max_queries: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    monitor = Monitor()
    asked = 0

    def ask(batch: NDArray[np.float32]) -> NDArray[np.int64] | None:
        nonlocal asked
        labels = runner.many(batch.astype(np.float32)).argmax(1)
        for q, c in zip(batch, labels, strict=True):
            asked += 1
            if monitor.observe("thief", q, int(c), now=float(asked)) is not None:
                return None
        return labels

    jacobian_augmentation(ask, seed_set(x_test, y_test, 10, rng), classes=10, lam=lam, max_queries=max_queries)
    alarm = monitor.alarms.get("thief")
    return {"seed": seed, "flagged": alarm is not None, "queries": int(alarm.since) if alarm else None,
            "w": alarm.w if alarm else None}


def resnet8_int8() -> tuple[Runner, NDArray[np.float32]]:
    """The ResNet-8 a device would serve, static int8, and 400 inputs to query it with."""
    inputs = synthetic_inputs((3, 32, 32), count=400, seed=1)
    return Runner.load(Int8Static().apply(resnet8(), inputs[:200], "input")), inputs


def overhead(runner: Runner, images: NDArray[np.float32], runs: int) -> dict[str, Any]:
    monitor = Monitor()
    rng = np.random.default_rng(0)
    queries = images[rng.permutation(len(images))]
    classes = runner.many(queries).argmax(1)
    for i in range(PradaConfig().per_class * 10 + PradaConfig().window):  # a full history and window
        monitor.observe("app", queries[i % len(queries)], int(classes[i % len(queries)]), now=0.0)
    infer_ns, observe_ns = [], []
    for i in range(runs):
        q = np.ascontiguousarray(queries[i % len(queries)])
        start = time.perf_counter_ns()
        out = runner.one(q)
        middle = time.perf_counter_ns()
        monitor.observe("app", q, int(np.argmax(out)), now=0.0)
        end = time.perf_counter_ns()
        infer_ns.append(middle - start)
        observe_ns.append(end - middle)
    infer_us, observe_us = statistics.median(infer_ns) / 1e3, statistics.median(observe_ns) / 1e3
    mean_observe_us = statistics.fmean(observe_ns) / 1e3  # includes the test every `stride` queries
    return {"int8_inference_us_median": round(infer_us, 2), "observe_us_median": round(observe_us, 2),
            "observe_us_mean": round(mean_observe_us, 2),
            "overhead_pct_median": round(100 * observe_us / infer_us, 1),
            "overhead_pct_mean": round(100 * mean_observe_us / (statistics.fmean(infer_ns) / 1e3), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--normal", type=int, default=1000)
    parser.add_argument("--max-queries", type=int, default=400)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--overhead-runs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    config = PradaConfig()
    with tempfile.TemporaryDirectory() as tmp:
        runner, x_test, y_test = load_model(Path(tmp))
    images = all_digits()
    normal = [normal_run(runner, images, args.normal, seed) for seed in range(args.seeds)]
    attacks = [attack_run(runner, x_test, y_test, seed=seed, lam=args.lam, max_queries=args.max_queries)
               for seed in range(args.seeds)]
    cost = overhead(runner, images, args.overhead_runs)
    big_runner, big_inputs = resnet8_int8()
    cost_resnet8 = overhead(big_runner, big_inputs, max(args.overhead_runs // 5, 200))
    cost_resnet8["memory_bytes_per_client"] = config.memory_bytes(classes=10, features=3 * 32 * 32)
    detected = [a["queries"] for a in attacks if a["flagged"]]
    result = {
        "config": {"delta": config.delta, "window": config.window, "per_class": config.per_class,
                   "stride": config.stride, "max_clients": config.max_clients,
                   "memory_bytes_per_client": config.memory_bytes(classes=10, features=64)},
        "normal": {"queries": args.normal, "seeds": args.seeds, "flagged": sum(r["flagged"] for r in normal),
                   "lowest_w": min(r["lowest_w"] for r in normal), "runs": normal},
        "attack": {"kind": "jacobian-augmentation", "lambda": args.lam, "seeds": args.seeds,
                   "flagged": len(detected), "max_queries_to_flag": max(detected) if detected else None,
                   "median_queries_to_flag": statistics.median(detected) if detected else None,
                   "highest_w": max((a["w"] for a in attacks if a["flagged"]), default=None), "runs": attacks},
        "overhead": cost,
        "overhead_resnet8": cost_resnet8,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prada.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Model-stealing detection (PRADA-style)",
        "",
        f"Detector: W < {config.delta} over the last {config.window} nearest same-class distances, tested every "
        f"{config.stride} queries; {config.per_class} earlier queries kept per class "
        f"({result['config']['memory_bytes_per_client'] / 1024:.0f} KiB per client for digits). Oracle: the digits "
        "MLP, static int8 (onnxruntime).",
        "",
        "| test | seeds | result | target |",
        "|---|---:|---|---|",
        f"| normal: {args.normal} shuffled digit images | {args.seeds} | {result['normal']['flagged']} flagged, "
        f"lowest W {result['normal']['lowest_w']} | 0 flagged |",
        f"| Jacobian augmentation (λ = {args.lam}, 10 seed images) | {args.seeds} | {len(detected)} flagged, after "
        f"at most {result['attack']['max_queries_to_flag']} queries (median "
        f"{result['attack']['median_queries_to_flag']}), highest W {result['attack']['highest_w']} | "
        "flagged within 100 |",
        f"| overhead per inference (median) | – | {cost['observe_us_median']} µs vs {cost['int8_inference_us_median']} "
        f"µs int8 inference: {cost['overhead_pct_median']} % (mean with the test: {cost['observe_us_mean']} µs) "
        "| ≤ 5 % |",
        f"| overhead per inference, ResNet-8 (median) | – | {cost_resnet8['observe_us_median']} µs vs "
        f"{cost_resnet8['int8_inference_us_median']} µs int8 inference: {cost_resnet8['overhead_pct_median']} % "
        f"(mean with the test: {cost_resnet8['observe_us_mean']} µs, {cost_resnet8['overhead_pct_mean']} %; "
        f"{cost_resnet8['memory_bytes_per_client'] / 2**20:.1f} MiB per client) | ≤ 5 % |",
    ]
    (args.out / "prada.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
