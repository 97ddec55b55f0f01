"""Variant factory benchmark on the digits model: sizes, accuracy, latency, build and pipeline time.

    python benchmarks/variants.py [--out benchmarks/results] [--no-pipeline]

Writes variants.json and variants.md.  Latencies are single-sample, one
thread, on this machine; compare variants with each other, not machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "pipelines")]


def run(out: Path, with_pipeline: bool) -> dict[str, Any]:
    from tinymlops.model import prepare_digits
    from tinymlops.signing import generate_key_pair, load_private_key
    from tinymlops.store import DirectoryStore, model_prefix
    from tinymlops.variants import build_variants

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        digits = prepare_digits(tmp / "digits")
        train_s = time.perf_counter() - started
        private, _ = generate_key_pair(tmp / "keys")
        key = load_private_key(private.read_bytes())
        store = DirectoryStore(tmp / "store")
        started = time.perf_counter()
        menu = build_variants(digits.model_path, digits.data_path, store, model_prefix("bench", "digits"),
                              signing_key=key, model_ref=("bench", "digits"), cache_dir=tmp / "cache")
        build_s = time.perf_counter() - started
        result: dict[str, Any] = {
            "model": "digits MLP (64-256-128-10)",
            "sklearn_test_accuracy": digits.test_accuracy,
            "train_seconds": round(train_s, 3),
            "build_seconds_in_process": round(build_s, 3),
            "variants": [
                {"id": v["id"], "size_bytes": v["size_bytes"],
                 "size_ratio": round(v["size_bytes"] / menu["base"]["size_bytes"], 4),
                 **{k: v["metrics"][k] for k in ("accuracy", "agreement", "max_abs_diff", "latency_ms_p50",
                                                  "latency_ms_p95", "memory_bytes") if k in v["metrics"]},
                 "min_ram_mb": v["requirements"]["min_ram_mb"], "accepted": v["accepted"]}
                for v in menu["variants"]
            ],
        }
        if with_pipeline:
            from tinymlops_pipelines.runner import run_variants_pipeline

            timings = []
            for version in (1, 2):  # the second run hits the variant cache
                started = time.perf_counter()
                run_variants_pipeline(
                    source_uri=str(digits.model_path), data_uri=str(digits.data_path), store_root=tmp / "store",
                    namespace="bench", name="pipeline", precisions=["fp32", "int8"], accuracy_budget=0.01,
                    menu_version=version, signing_key_path=private, pipeline_root=tmp / "pipeline-root",
                    cache_dir=tmp / "pipeline-cache",
                )
                timings.append(round(time.perf_counter() - started, 3))
            result["kfp_local_pipeline_seconds"] = {"cold_cache": timings[0], "warm_cache": timings[1]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Variant factory: digits MLP", "",
        f"train {result['train_seconds']} s; in-process build of fp32+int8 {result['build_seconds_in_process']} s",
    ]
    if "kfp_local_pipeline_seconds" in result:
        timing = result["kfp_local_pipeline_seconds"]
        lines.append(f"; kfp.local pipeline run {timing['cold_cache']} s (cold), {timing['warm_cache']} s (cached)")
    lines += ["", "| variant | bytes | ratio | accuracy | agreement | p50 ms | p95 ms | memory est. | accepted |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for v in result["variants"]:
        lines.append(f"| {v['id']} | {v['size_bytes']} | {v['size_ratio']} | {v.get('accuracy', '-')} | "
                     f"{v['agreement']} | {v['latency_ms_p50']} | {v['latency_ms_p95']} | {v['memory_bytes']} | "
                     f"{v['accepted']} |")
    (out / "variants.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the kfp.local pipeline timing")
    args = parser.parse_args()
    result = run(args.out, with_pipeline=not args.no_pipeline)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
