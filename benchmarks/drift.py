"""Fleet drift detection benchmark, through the device's and the gateway's own code.

    python benchmarks/drift.py [--devices 200] [--rows 500] [--epsilon 1.0] [--shift 0.1] [--trials 10]
                               [--days 3] [--evaluations 24] [--reference-rows 100000]
                               [--merge-reports 20000] [--out benchmarks/results]

The input.  A synthetic tabular model: 8 input values per inference, each N(0, 1), and a fixed
softmax classifier over them (seeded weights, 5 classes).  With at most 16 values per sample the
drift features are the values themselves (`tinymlops/drift/features.py`: `x[0]` … `x[7]`), so a
0.1 SD mean shift of input value 0 moves exactly one drift feature, `x[0]`, by 0.1 of its SD (an
image's summaries could not: a brighter digit moves brightness and all four region means).  The
classifier sees the shifted input too, so the output histograms may move a little as well.

The path.  The factory's `build_reference` bins the reference data (the menu's `monitoring`
object, read back with `Monitoring.from_json`); each device counts its window with
`Monitoring.count` (what `DriftRecorder.observe` calls per inference; the benchmark counts a
window of `--rows` rows in one call and checks once that a real `DriftRecorder` gives the same
counts) and noises it with `privacy.noisy`, which calls OpenDP, as a device does; the gateway's
`drift.merge.check` + `Merged.add` merge the reports (what `DriftBook.apply` does per report) and
`Merged.score` scores.

- detection: `--trials` fleets of `--devices` devices × `--rows` inferences, DP at `--epsilon` per
  window, input 0 shifted by `--shift` SD: the share flagged, and how often x[0] was named;
- false alarms: `--days` simulated days of no-drift traffic, each `--evaluations` scorings of a
  fresh window from every device: the features (inputs and outputs) flagged at least once per day
  at the gateway's FDR per scoring (`score.FDR`: the day's 1 % split over its ~24 looks);
- payload: JSON bytes of one noisy feature histogram per window (what `drift.features[i]` costs);
- merge rate: checked histogram reports merged per second (`check` + `Merged.add`), one process;
- PSI: in `histograms` mode (no noise), the PSI of the merged histograms against PSI on the raw
  values in the same bins (np.histogram), for every input feature of a drifted fleet.
- OpenDP: the time of one noisy release (`privacy.noisy`) of a window's histograms.

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
from tinymlops.drift.policy import DriftPolicy
from tinymlops.drift.privacy import BudgetLedger, noisy
from tinymlops.drift.reference import Counts, Monitoring, build_reference
from tinymlops.drift.score import FDR, SMOOTHING, statistics
from tinymlops.drift.window import DriftRecorder, Source

INPUTS, CLASSES = 8, 5
MENU_SHA = "0" * 64
VARIANT_SHA = "1" * 64  # the one variant the devices run (the reference model itself)
SHIFTED = "x[0]"


class Model:
    """A fixed softmax classifier over the 8 inputs (seeded weights): what the device runs."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.weights = rng.standard_normal((INPUTS, CLASSES))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.weights
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float32)


def inputs(rng: np.random.Generator, rows: int, shift: float) -> np.ndarray:
    x = rng.standard_normal((rows, INPUTS)).astype(np.float32)
    x[:, 0] += shift
    return x


def payload(counts: Counts, *, rows: int, window: int, epsilon: float | None) -> dict[str, Any]:
    """A report's `drift` field as a device's DriftRecorder writes it."""
    return {"menu_sha256": MENU_SHA, "revision": 1, "variant_sha256": VARIANT_SHA, "window": window, "rows": rows,
            "mode": "histograms" if epsilon is None else "histograms+dp", "epsilon": epsilon,
            "features": [[int(c) for c in h] for h in counts.features],
            "confidence": [int(c) for c in counts.confidence], "classes": [int(c) for c in counts.classes]}


def device_window(rng: np.random.Generator, monitoring: Monitoring, model: Model, *, rows: int, shift: float,
                  epsilon: float | None, window: int) -> dict[str, Any]:
    x = inputs(rng, rows, shift)
    counts = monitoring.count(x, model(x))
    return payload(counts if epsilon is None else noisy(counts, epsilon), rows=rows, window=window, epsilon=epsilon)


def fleet(rng: np.random.Generator, baseline: Baseline, model: Model, args: argparse.Namespace, *, shift: float,
          epsilon: float | None) -> Merged:
    merged = Merged(baseline)
    for device in range(args.devices):
        merged.add(check(device_window(rng, baseline.monitoring, model, rows=args.rows, shift=shift, epsilon=epsilon,
                                       window=device), baseline, revision=1))
    return merged


def recorder_agrees(rng: np.random.Generator, monitoring: Monitoring, model: Model, rows: int) -> bool:
    """A real DriftRecorder, one inference at a time, counts a window exactly as one `Monitoring.count` call."""
    policy = DriftPolicy(mode="histograms", window_inferences=rows)
    recorder = DriftRecorder(BudgetLedger(policy.daily_epsilon))
    x = inputs(rng, rows, 0.0)
    scores = model(x)
    wire = monitoring.to_json()
    for sample, output in zip(x, scores, strict=True):
        recorder.observe(policy, Source(MENU_SHA, 1, VARIANT_SHA), wire, sample, output, now=0.0)
    window, _ = recorder.take()
    assert window is not None
    recorded = {k: v for k, v in window.to_json().items() if k in ("features", "confidence", "classes")}
    return recorded == monitoring.count(x, scores).to_json()


def raw_psi(reference_x: np.ndarray, live_x: np.ndarray, edges: tuple[float, ...]) -> float:
    """PSI straight from raw values in the same bins (np.histogram; our bins are right-closed, so negate)."""
    bounds = -np.concatenate(([-np.inf], edges, [np.inf]))[::-1]
    ref = np.histogram(-reference_x, bins=bounds)[0][::-1] + SMOOTHING
    live = np.histogram(-live_x, bins=bounds)[0][::-1] + SMOOTHING
    ref, live = ref / ref.sum(), live / live.sum()
    return float(np.sum((live - ref) * np.log(live / ref)))


def psi_agreement(rng: np.random.Generator, baseline: Baseline, model: Model, reference_x: np.ndarray,
                  args: argparse.Namespace) -> float:
    """The largest |PSI(histograms) - PSI(raw)| over the input features of one drifted fleet without noise."""
    merged, raw = Merged(baseline), []
    for device in range(args.devices):
        x = inputs(rng, args.rows, args.shift)
        raw.append(x)
        merged.add(check(payload(baseline.monitoring.count(x, model(x)), rows=args.rows, window=device,
                                 epsilon=None), baseline, revision=1))
    live_x = np.concatenate(raw)
    gaps = [abs(float(statistics(baseline.counts[i], merged.counts[i])[0])
                - raw_psi(reference_x[:, i], live_x[:, i], feature.edges))
            for i, feature in enumerate(baseline.monitoring.features)]
    return max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--shift", type=float, default=0.1)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=24)
    parser.add_argument("--reference-rows", type=int, default=100_000)
    parser.add_argument("--merge-reports", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rng = np.random.default_rng(12)
    model = Model(rng)
    reference_x = inputs(rng, args.reference_rows, 0.0)
    baseline = Baseline.from_monitoring(build_reference(reference_x, model(reference_x)).to_json(),
                                        menu_sha256=MENU_SHA, variants=[VARIANT_SHA])
    histograms = len(baseline.names)
    assert recorder_agrees(rng, baseline.monitoring, model, args.rows)

    started = time.perf_counter()
    scores = [fleet(rng, baseline, model, args, shift=args.shift, epsilon=args.epsilon).score(seed=seed)
              for seed in range(args.trials)]
    flagged = sum(s.drifted for s in scores)
    named = sum(bool(s.top()) and s.top()[0].name == SHIFTED for s in scores)
    detection_s = time.perf_counter() - started

    started = time.perf_counter()
    false_alarm_feature_days = 0
    for day in range(args.days):
        flagged_today: set[str] = set()
        for evaluation in range(args.evaluations):
            result = fleet(rng, baseline, model, args, shift=0.0, epsilon=args.epsilon).score(
                seed=1000 * (day + 1) + evaluation)
            flagged_today |= {f.name for f in result.features if f.drifted}
        false_alarm_feature_days += len(flagged_today)
    false_alarm_s = time.perf_counter() - started

    window = device_window(rng, baseline.monitoring, model, rows=args.rows, shift=0.0, epsilon=args.epsilon, window=0)
    feature_bytes = [len(json.dumps(h, separators=(",", ":"))) for h in window["features"]]
    whole = len(json.dumps(window, separators=(",", ":")))

    x = inputs(rng, args.rows, 0.0)
    counts = baseline.monitoring.count(x, model(x))
    started = time.perf_counter()
    for _ in range(200):
        noisy(counts, args.epsilon)
    opendp_ms = (time.perf_counter() - started) / 200 * 1000

    reports = [device_window(rng, baseline.monitoring, model, rows=args.rows, shift=0.0, epsilon=args.epsilon,
                             window=i) for i in range(min(args.merge_reports, 1000))]
    merged = Merged(baseline)
    started = time.perf_counter()
    for i in range(args.merge_reports):
        merged.add(check(reports[i % len(reports)], baseline, revision=1))
    merge_rate = args.merge_reports / (time.perf_counter() - started)
    started = time.perf_counter()
    merged.score()
    score_ms = (time.perf_counter() - started) * 1000

    psi_gap = psi_agreement(rng, baseline, model, reference_x, args)

    results = {
        "input": f"synthetic: {INPUTS} N(0, 1) input values, a fixed softmax classifier ({CLASSES} classes)",
        "shifted_feature": SHIFTED, "features": INPUTS, "histograms": histograms,
        "bins": list(baseline.monitoring.bins), "devices": args.devices, "rows_per_device": args.rows,
        "epsilon": args.epsilon, "shift_sd": args.shift, "reference_rows": args.reference_rows,
        "detection": {"trials": args.trials, "flagged": flagged, "named_shifted_feature": named,
                      "rate": flagged / args.trials, "seconds": round(detection_s, 1), "fdr": FDR},
        "false_alarms": {"days": args.days, "evaluations_per_day": args.evaluations,
                         "feature_days_flagged": false_alarm_feature_days,
                         "per_feature_per_day": false_alarm_feature_days / (args.days * histograms),
                         "seconds": round(false_alarm_s, 1)},
        "payload": {"bytes_per_feature_max": max(feature_bytes),
                    "bytes_per_feature_mean": round(sum(feature_bytes) / len(feature_bytes), 1),
                    "drift_field_bytes": whole},
        "merge": {"reports": args.merge_reports, "reports_per_s": round(merge_rate),
                  "score_ms": round(score_ms, 1)},
        "opendp_release_ms": round(opendp_ms, 3),
        "psi_max_abs_gap": psi_gap,
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(results, indent=2) + "\n")
    d, f, p, m = results["detection"], results["false_alarms"], results["payload"], results["merge"]
    (args.out / "drift.md").write_text(
        "# Fleet drift detection\n\n"
        f"{args.devices} devices × {args.rows} inferences per window; {results['input']}; {histograms} histograms "
        f"(inputs, confidence, class) in the factory's quantile bins over a reference of {args.reference_rows} rows; "
        f"each window noised on the device by OpenDP at ε = {args.epsilon} (discrete Laplace, scale {histograms}/ε "
        "per count, clamped at 0); merged by the gateway's check + Merged.add; scored with Benjamini–Hochberg at "
        f"FDR {FDR:.2g} per scoring.\n\n"
        "| measure | value | target |\n|---|---:|---|\n"
        f"| {args.shift} SD mean shift in {SHIFTED} flagged | {d['flagged']}/{d['trials']} "
        f"(named first: {d['named_shifted_feature']}) | flagged |\n"
        f"| false alarms per feature per simulated day ({args.evaluations} scorings/day, {args.days} days) | "
        f"{f['per_feature_per_day']:.4f} ({f['feature_days_flagged']} of {args.days * histograms} feature-days) "
        "| ≤ 0.01 |\n"
        f"| private payload bytes per feature per window (max / mean) | {p['bytes_per_feature_max']} / "
        f"{p['bytes_per_feature_mean']} | ≤ 200 |\n"
        f"| gateway merge rate (checked histogram reports/s, one process) | {m['reports_per_s']} | ≥ 10,000 |\n"
        f"| PSI from histograms vs raw data, same bins, no noise (max abs gap) | {psi_gap:.2e} | ≤ 0.001 |\n"
        f"| OpenDP release of one window (ms) | {results['opendp_release_ms']} | |\n"
        f"| one fleet scoring ({histograms} histograms, 400 simulations each; ms) | {m['score_ms']} | |\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
