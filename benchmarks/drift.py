"""Fleet drift detection benchmark: power, false alarms, payload size and merge rate.

    python benchmarks/drift.py [--features 8] [--devices 200] [--rows 500] [--epsilon 1.0] [--shift 0.1]
                               [--trials 20] [--days 5] [--evaluations 24] [--reference-rows 100000]
                               [--merge-reports 20000] [--out benchmarks/results]

Device windows come from a small local generator in the pinned report format (standard normal
features binned at quantiles of a reference sample; per-count Laplace noise of scale H/epsilon, H the
release's histograms, rounded and clamped at zero as a device would post-process), not from the
agent: the fleet side (tinymlops.drift.merge / score) is what is measured.

- detection: `--trials` fleets of `--devices` devices × `--rows` inferences with DP at `--epsilon`
  per window, feature 0's mean shifted by `--shift` SD: the share flagged, and whether feature 0 was named;
- false alarms: `--days` simulated days of no-drift traffic, each `--evaluations` scorings of fresh
  windows from every device: features flagged at least once per day, per feature;
- payload: JSON bytes of one noisy feature histogram per window (what `drift.features[i]` costs);
- merge rate: checked histogram reports merged per second (`check` + `Merged.add`), one core.

Writes drift.json and drift.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.drift.merge import Baseline, Merged, check

BINS = 10
MENU_SHA = "0" * 64


def monitoring(rng: np.random.Generator, features: int, rows: int) -> tuple[dict[str, Any], np.ndarray]:
    sample = rng.standard_normal((rows, features))
    edges = np.quantile(sample, np.linspace(0, 1, BINS + 1)[1:-1], axis=0)
    counts = [np.bincount(np.searchsorted(edges[:, f], sample[:, f]), minlength=BINS).tolist() for f in range(features)]
    out = rng.uniform(size=rows)
    return {"schema": 1, "rows": rows,
            "features": [{"name": f"x[{f}]", "edges": edges[:, f].tolist()} for f in range(features)],
            "reference": {"features": counts, "confidence": np.bincount((out * 5).astype(int), minlength=5).tolist(),
                          "classes": np.bincount((out * 3).astype(int), minlength=3).tolist()},
            "confidence_edges": [0.2, 0.4, 0.6, 0.8], "classes": 3}, edges


def window(rng: np.random.Generator, edges: np.ndarray, *, rows: int, epsilon: float | None, shift: float,
           index: int) -> dict[str, Any]:
    features = edges.shape[1]
    x = rng.standard_normal((rows, features))
    x[:, 0] += shift
    out = rng.uniform(size=rows)
    hists = [np.bincount(np.searchsorted(edges[:, f], x[:, f]), minlength=BINS) for f in range(features)]
    hists += [np.bincount((out * 5).astype(int), minlength=5), np.bincount((out * 3).astype(int), minlength=3)]
    if epsilon is not None:
        scale = len(hists) / epsilon
        hists = [np.maximum(np.rint(h + rng.laplace(0.0, scale, h.size)), 0) for h in hists]
    as_lists = [[int(c) for c in h] for h in hists]
    return {"menu_sha256": MENU_SHA, "revision": 1, "window": index, "rows": rows,
            "mode": "histograms" if epsilon is None else "histograms+dp", "epsilon": epsilon,
            "features": as_lists[:-2], "confidence": as_lists[-2], "classes": as_lists[-1]}


def fleet_score(rng: np.random.Generator, baseline: Baseline, edges: np.ndarray, args: argparse.Namespace,
                shift: float, seed: int) -> tuple[bool, list[str]]:
    merged = Merged(baseline)
    for device in range(args.devices):
        payload = window(rng, edges, rows=args.rows, epsilon=args.epsilon, shift=shift, index=device)
        merged.add(check(payload, baseline, revision=1))
    result = merged.score(seed=seed)
    return result.drifted, [f.name for f in result.features if f.drifted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--shift", type=float, default=0.1)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--evaluations", type=int, default=24)
    parser.add_argument("--reference-rows", type=int, default=100_000)
    parser.add_argument("--merge-reports", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rng = np.random.default_rng(12)
    monitoring_object, edges = monitoring(rng, args.features, args.reference_rows)
    baseline = Baseline.from_monitoring(monitoring_object, menu_sha256=MENU_SHA)

    started = time.perf_counter()
    detections = [fleet_score(rng, baseline, edges, args, args.shift, seed) for seed in range(args.trials)]
    flagged = sum(drifted for drifted, _ in detections)
    named = sum("x[0]" in names for _, names in detections)
    detection_s = time.perf_counter() - started

    false_alarm_feature_days = 0
    histograms = len(baseline.names)
    for day in range(args.days):
        flagged_today: set[str] = set()
        for evaluation in range(args.evaluations):
            flagged_today |= set(fleet_score(rng, baseline, edges, args, 0.0, day * 1000 + evaluation)[1])
        false_alarm_feature_days += len(flagged_today)

    payload = window(rng, edges, rows=args.rows, epsilon=args.epsilon, shift=0.0, index=0)
    feature_bytes = [len(json.dumps(h, separators=(",", ":"))) for h in payload["features"]]
    whole = len(json.dumps(payload, separators=(",", ":")))

    reports = [window(rng, edges, rows=args.rows, epsilon=args.epsilon, shift=0.0, index=i)
               for i in range(min(args.merge_reports, 2000))]
    merged = Merged(baseline)
    started = time.perf_counter()
    for i in range(args.merge_reports):
        merged.add(check(reports[i % len(reports)], baseline, revision=1))
    merge_rate = args.merge_reports / (time.perf_counter() - started)

    results = {
        "features": args.features, "bins": BINS, "devices": args.devices, "rows_per_device": args.rows,
        "epsilon": args.epsilon, "shift_sd": args.shift, "reference_rows": args.reference_rows,
        "detection": {"trials": args.trials, "flagged": flagged, "named_shifted_feature": named,
                      "rate": flagged / args.trials, "seconds": round(detection_s, 2)},
        "false_alarms": {"days": args.days, "evaluations_per_day": args.evaluations, "histograms": histograms,
                         "feature_days_flagged": false_alarm_feature_days,
                         "per_feature_per_day": false_alarm_feature_days / (args.days * histograms)},
        "payload": {"bytes_per_feature_max": max(feature_bytes),
                    "bytes_per_feature_mean": round(sum(feature_bytes) / len(feature_bytes), 1),
                    "drift_field_bytes": whole},
        "merge": {"reports": args.merge_reports, "reports_per_s": round(merge_rate)},
        "cpus": os.cpu_count(), "generator": "local (benchmarks/drift.py), pinned report format",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(results, indent=2) + "\n")
    d, f, p, m = results["detection"], results["false_alarms"], results["payload"], results["merge"]
    (args.out / "drift.md").write_text(
        "# Fleet drift detection\n\n"
        f"{args.devices} devices × {args.rows} inferences per window, {args.features} features in {BINS} bins "
        f"(plus confidence and class), DP ε = {args.epsilon} per window (Laplace, scale H/ε per count), reference "
        f"of {args.reference_rows} rows; Benjamini–Hochberg at FDR 1 %.\n\n"
        "| measure | value | target |\n|---|---:|---|\n"
        f"| {args.shift} SD mean shift in one feature flagged | {d['flagged']}/{d['trials']} "
        f"(named: {d['named_shifted_feature']}) | flagged |\n"
        f"| false alarms per feature per simulated day ({args.evaluations} scorings/day, {args.days} days) | "
        f"{f['per_feature_per_day']:.4f} | ≤ 0.01 |\n"
        f"| private payload bytes per feature per window (max / mean) | {p['bytes_per_feature_max']} / "
        f"{p['bytes_per_feature_mean']} | ≤ 200 |\n"
        f"| gateway merge rate (checked histogram reports/s, one core) | {m['reports_per_s']} | ≥ 10,000 |\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
