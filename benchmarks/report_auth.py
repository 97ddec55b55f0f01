"""Gateway report intake benchmark: signed reports verified, and drift histograms merged, per second.

    python benchmarks/report_auth.py [--devices 500] [--reports 5000] [--processes 2] [--out benchmarks/results]

`--devices` devices each get an Ed25519 identity key and sign reports with `sign_report` (signing is not
timed: it happens on the devices).  Each report carries a drift window (8 input features, confidence and
class, 10 bins each, OpenDP-noised at ε = 1, as benchmarks/drift.py makes them), so the envelope is
what a device with drift telemetry on uploads.  Measured, on envelopes as the gateway's JSON decoder
hands them over:

- verify: `ReportGuard.admit` (the gateway's real path: envelope, `Report.from_json`, the registry,
  the Ed25519 signature, the sequence number, the rate limiter) per second, in one process;
- ed25519: `Ed25519PublicKey.verify` alone over the same bytes, the floor of the above;
- merge: `ReportGuard.admit` then `DriftBook.apply` (check the histograms against the menu's reference,
  add them to the fleet × revision × class sum) per second, in one process;
- processes: the verify rate of `--processes` processes each admitting its own devices' reports at once
  (the gateway's registry is per device, so the work splits by device).

Writes report_auth.json and report_auth.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tinymlops.drift.merge import Baseline
from tinymlops.drift.privacy import noisy
from tinymlops.drift.reference import build_reference
from tinymlops.gateway.authn import Refusal, ReportGuard
from tinymlops.gateway.driftstate import DriftBook
from tinymlops.gateway.ratelimit import RateLimiter
from tinymlops.report import DriftHistograms, Report, sign_report

MENU_SHA = "0" * 64
VARIANT_SHA = "1" * 64  # the variant every device runs
INPUTS = 8


def reference(rng: np.random.Generator) -> tuple[Baseline, np.ndarray]:
    x = rng.standard_normal((20_000, INPUTS))
    scores = rng.dirichlet(np.ones(5), len(x))
    return Baseline.from_monitoring(build_reference(x, scores).to_json(), menu_sha256=MENU_SHA,
                                    variants=[VARIANT_SHA]), scores


def drift_window(rng: np.random.Generator, baseline: Baseline, window: int) -> DriftHistograms:
    x = rng.standard_normal((500, INPUTS))
    counts = noisy(baseline.monitoring.count(x, rng.dirichlet(np.ones(5), 500)), 1.0)
    return DriftHistograms(menu_sha256=MENU_SHA, revision=1, variant_sha256=VARIANT_SHA, window=window, rows=500,
                           mode="histograms+dp",
                           epsilon=1.0, features=tuple(tuple(int(c) for c in h) for h in counts.features),
                           confidence=tuple(int(c) for c in counts.confidence),
                           classes=tuple(int(c) for c in counts.classes))


def envelopes(seed: int, devices: int, reports: int, first_device: int = 0) -> tuple[
        dict[tuple[str, str], bytes], list[dict[str, Any]]]:
    """Public keys (raw bytes, picklable) and `reports` signed envelopes, round-robin over the devices."""
    rng = np.random.default_rng(seed)
    baseline, _ = reference(np.random.default_rng(0))
    keys = {f"dev-{first_device + i}": Ed25519PrivateKey.generate() for i in range(devices)}
    windows = [drift_window(rng, baseline, 0) for _ in range(min(reports, 200))]
    out = []
    for i in range(reports):
        name = f"dev-{first_device + i % devices}"
        seq = i // devices + 1
        report = Report(device=name, namespace="edge", fleet="cams", device_class="cortex-a53", arch="arm64",
                        phase="Running", menu_version=1, sent_at=1.7e9 + i, variant="int8", inferences=500,
                        revision=1, target_revision=1,
                        drift=DriftHistograms(**{**windows[i % len(windows)].__dict__, "window": seq - 1}))
        out.append(json.loads(json.dumps(sign_report(report, keys[name], seq).to_json())))
    public = {("edge", name): key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
              for name, key in keys.items()}
    return public, out


def guard(public: dict[tuple[str, str], bytes]) -> ReportGuard:
    registry = {device: Ed25519PublicKey.from_public_bytes(raw) for device, raw in public.items()}
    return ReportGuard(registry, limiter=RateLimiter(rate=1e12, burst=1e12))  # measure the path, not the limit


def admit_rate(public: dict[tuple[str, str], bytes], items: list[dict[str, Any]]) -> float:
    door = guard(public)
    started = time.perf_counter()
    for i, item in enumerate(items):
        if isinstance(door.admit(item, where=f"reports[{i}]"), Refusal):
            raise SystemExit(f"report {i} refused")
    return len(items) / (time.perf_counter() - started)


def _worker(args: tuple[int, int, int, int, Any]) -> float:
    seed, devices, reports, first, barrier = args
    public, items = envelopes(seed, devices, reports, first)
    barrier.wait()
    return admit_rate(public, items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--reports", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    public, items = envelopes(1, args.devices, args.reports)
    envelope_bytes = len(json.dumps(items[0], separators=(",", ":")))

    verify_rate = admit_rate(public, items)

    keys = {device: Ed25519PublicKey.from_public_bytes(raw) for device, raw in public.items()}
    opened = [(keys[("edge", json.loads(item["report"])["device"])], item["report"].encode(),
               base64.b64decode(item["signature"])) for item in items]
    started = time.perf_counter()
    for key, payload, signature in opened:
        key.verify(signature, payload)
    ed25519_rate = len(opened) / (time.perf_counter() - started)

    baseline, _ = reference(np.random.default_rng(0))
    book = DriftBook(lambda namespace, fleet, revision: baseline, clock=lambda: 1.7e9)
    door = guard(public)
    started = time.perf_counter()
    for i, item in enumerate(items):
        report = door.admit(item, where=f"reports[{i}]")
        if isinstance(report, Refusal) or book.apply(report) is not None:
            raise SystemExit(f"report {i} refused")
    merge_rate = len(items) / (time.perf_counter() - started)

    per_process = args.reports // args.processes
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(args.processes)
        with multiprocessing.Pool(args.processes) as pool:
            started = time.perf_counter()
            rates = pool.map(_worker, [(10 + p, args.devices // args.processes, per_process,
                                        p * args.devices, barrier) for p in range(args.processes)])
    processes_rate = sum(rates)

    results = {
        "devices": args.devices, "reports": args.reports, "envelope_bytes": envelope_bytes,
        "verify_reports_per_s": round(verify_rate), "ed25519_verify_per_s": round(ed25519_rate),
        "ed25519_verify_us": round(1e6 / ed25519_rate, 1), "admit_us": round(1e6 / verify_rate, 1),
        "verify_and_merge_reports_per_s": round(merge_rate),
        "processes": args.processes, "verify_reports_per_s_all_processes": round(processes_rate),
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report_auth.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "report_auth.md").write_text(
        "# Gateway report intake\n\n"
        f"{args.reports} signed reports from {args.devices} devices, each with a drift window (8 features, "
        f"confidence and class, OpenDP-noised), {envelope_bytes} bytes per envelope; the gateway's "
        "`ReportGuard.admit` (parse, validate, registry, Ed25519, sequence number, rate limiter) and "
        "`DriftBook.apply` (check and merge the histograms).\n\n"
        "| measure | reports/s | target |\n|---|---:|---|\n"
        f"| signed reports verified, one process | {results['verify_reports_per_s']} "
        f"({results['admit_us']} µs each) | |\n"
        f"| signed reports verified, {args.processes} processes on {os.cpu_count()} cores | "
        f"{results['verify_reports_per_s_all_processes']} | ≥ 5,000 on 2 cores |\n"
        f"| Ed25519 verify alone (`cryptography`) | {results['ed25519_verify_per_s']} "
        f"({results['ed25519_verify_us']} µs each) | |\n"
        f"| verified and drift histograms merged, one process | {results['verify_and_merge_reports_per_s']} | |\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
