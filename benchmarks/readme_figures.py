"""The measured figures of the README and docs/, generated from the benchmark results so they cannot drift.

    python benchmarks/readme_figures.py [--check] [--root .] [--results benchmarks/results]

Each figure lives in a region of one of DOCUMENTS between `<!-- figures:NAME -->`
and `<!-- /figures:NAME -->` (a block or a few words inside a sentence); this
script rewrites every region from `benchmarks/results/*.json`.  `--check`
changes nothing and exits 1, showing the difference, when a document does not
say what the results files say (a unit test runs the same check).  A figure
that no results file holds has no region and does not belong in these pages.

Rendering is pure (results in, text out); only `main` reads and writes files.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Where the regions are, relative to the repository root: the demo's sample in the README, the rest in docs/.
DOCUMENTS = ("README.md", "docs/benchmarks.md", "docs/limits.md", "docs/wasm.md", "docs/hybrid.md",
             "docs/watermarks.md", "docs/federated.md")
RESULTS = ("agent", "drift", "fleet", "prada", "report_auth", "rollout", "variants", "licensing", "wasm", "mcu",
           "watermark", "hybrid_demo", "personalise", "federated")
REGION = re.compile(r"(<!-- figures:(?P<name>[a-z0-9-]+) -->)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)
TRUSTED_LOAD_TARGET = 1.10
FALSE_ALARM_TARGET = 0.01  # per feature per simulated no-drift day
PAYLOAD_TARGET_BYTES = 200  # per feature per window
MERGE_TARGET, VERIFY_TARGET, PSI_TARGET = 10_000, 5_000, 0.001
MEMORY_TARGET_KB = 20
EXTRACTION_QUERIES_TARGET, EXTRACTION_OVERHEAD_TARGET_PCT = 100, 5.0
METERING_TARGET_PCT, METER_STATE_TARGET, METER_UPLINK_TARGET = 2.0, 48, 200
TOKEN_VERIFY_TARGET_MS, CHECKPOINTS_TARGET = 2.0, 10_000
WASM_CALL_TARGET_US, WASM_LOOP_TARGET_MS = 5.0, 10.0
SPLIT_ATOL, HYBRID_TARGET_PCT = 1e-5, 10.0
FIRMWARE_SECONDS_TARGET = 60  # firmware build + qemu measurement per microcontroller variant
WATERMARK_DROP_TARGET_POINTS, WATERMARK_CPU_TARGET_S = 0.5, 60.0

Results = Mapping[str, Any]


class FiguresError(Exception):
    """The documents and the results cannot be reconciled (a region without a renderer, a missing result)."""


# --- small formatting helpers ---------------------------------------------------------------------------


def _kb(size_bytes: float) -> str:
    return f"{size_bytes / 1024:.1f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.2f} %"


def _count(n: int) -> str:
    return f"{n:,}"


def _span(values: Iterable[float], fmt: str = "{:.1f}", unit: str = "") -> str:
    """"a" or "a–b" (en dash), for a figure measured more than once."""
    ordered = sorted(values)
    if not ordered:
        return "-"
    low, high = fmt.format(ordered[0]), fmt.format(ordered[-1])
    return f"{low}{unit}" if low == high else f"{low}–{high}{unit}"


def _variant(model: Mapping[str, Any], variant_id: str) -> Mapping[str, Any]:
    for variant in model["variants"]:
        if variant["id"] == variant_id:
            return variant
    raise FiguresError(f"variants.json: model {model['model']} has no variant {variant_id}")


def _model(variants: Results, name: str) -> Mapping[str, Any]:
    for model in variants["models"]:
        if model["model"] == name:
            return model
    raise FiguresError(f"variants.json: no model {name}")


# --- variants.json --------------------------------------------------------------------------------------


def variant_rows(variants: Results) -> list[tuple[str, str]]:
    digits = _model(variants, "digits")
    fp32, int8 = _variant(digits, "fp32"), _variant(digits, "int8-static")
    drop = (fp32["accuracy"] - int8["accuracy"]) * 100
    rows = [
        ("digits int8 / fp32 size",
         f"{_kb(int8['size_bytes'])} KB / {_kb(fp32['size_bytes'])} KB = "
         f"{int8['size_bytes'] / fp32['size_bytes']:.2f} (target ≤ 0.35)"),
        ("digits int8 accuracy drop",
         f"{_pct(fp32['accuracy'])} → {_pct(int8['accuracy'])}, {drop:.2f} points (target ≤ 1)"),
    ]
    pipeline = variants.get("kfp_local_pipeline_seconds", {}).get("cold_cache")
    through_kfp = f", {pipeline} s through kfp.local" if pipeline is not None else ""
    rows.append((f"digits full matrix ({len(digits['variants'])} variants built)",
                 f"{digits['matrix_seconds']} s in-process{through_kfp} (target < 90 s)"))
    resnet = _model(variants, "resnet8")
    r_fp32, r_int8 = _variant(resnet, "fp32"), _variant(resnet, "int8-static")
    rows.append(("ResNet-8 int8 static vs fp32 (onnxruntime, 1 thread, same run)",
                 f"{r_fp32['size_bytes'] / r_int8['size_bytes']:.2f}× smaller, "
                 f"{r_fp32['latency_ms_p50'] / r_int8['latency_ms_p50']:.2f}× faster"))
    slower = [(model["model"], _slowdown(model, "tvm-x86-64")) for model in variants["models"]
              if any(v["id"] == "tvm-x86-64" for v in model["variants"])]
    rows.append(("TVM (untuned) vs onnxruntime, host, 1 thread",
                 ", ".join(f"{ratio:.0f}× slower on {name}" for name, ratio in slower)
                 + ": reported, not hidden"))
    rows.extend(tuning_rows(variants.get("tvm_tuning", [])))
    return rows


def tuning_rows(tuning: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """TVM with MetaSchedule tuning vs onnxruntime (`variants.py --tuning-only`): the ratio, or why not built."""
    rows = []
    for row in tuning:
        tuned, untuned = row.get("tuned", {}), row.get("untuned", {})
        budget = f"{row['trials']} trials / {row['time_budget_s']:g} s"
        outcome = (f"{tuned['vs_onnxruntime']}× onnxruntime's latency" if "vs_onnxruntime" in tuned
                   else f"not built ({tuned.get('not_built', 'not run')})")
        before = f"; untuned (fused) {untuned['vs_onnxruntime']}×" if "vs_onnxruntime" in untuned else ""
        record = tuned.get("tuning") if isinstance(tuned.get("tuning"), Mapping) else {}
        searched = (f"; {record['measured']} candidates measured in {record['seconds']} s"
                    if "measured" in record else "")
        load = f", load average {row['load_average_1m']} at the start" if "load_average_1m" in row else ""
        rows.append((f"TVM tuned ({budget}) vs onnxruntime on {row['model']}, host, 1 thread",
                     f"{outcome}{before}{searched}{load} (target ≤ 1× on resnet8)"))
    return rows


def _slowdown(model: Mapping[str, Any], variant_id: str) -> float:
    """How many times slower than the fp32 onnxruntime variant of the same run (from the latencies, unrounded)."""
    return float(_variant(model, variant_id)["latency_ms_p50"]) / float(_variant(model, "fp32")["latency_ms_p50"])


# --- fleet.json -----------------------------------------------------------------------------------------


def _operator_writes(run: Mapping[str, Any]) -> int:
    """The operator's API writes of a run, whichever field the benchmark keeps them in."""
    for key in ("operator_api_writes", "api_writes_total"):
        if isinstance(run.get(key), int):
            return int(run[key])
    raise FiguresError(f"fleet.json: run with {run.get('devices')} devices has no operator write count")


def fleet_rows(fleet: Results) -> list[tuple[str, str]]:
    rows = []
    for run in fleet["runs"]:
        timings = run["timings"]
        rows.append((f"`tinymlops demo --devices {run['devices']}` (encrypted)",
                     f"{run['converged']}/{run['devices']} converged {run['seconds_to_converge']:.1f} s after the "
                     f"plan; {timings['total_s']:.0f} s in all ({timings['register_devices_s']:.0f} s of it "
                     f"registering the Device objects); peak RSS {run['peak_rss_mb']:.0f} MB for the whole stack"))
    sizes = [run["devices"] for run in fleet["runs"]]
    rows.append(("operator API writes for the first rollout (fleet benchmark)",
                 ", ".join(f"{_operator_writes(run)} ({_count(run['devices'])} devices)" for run in fleet["runs"])))
    if fleet.get("rss_kb_per_device") is not None:
        rows.append((f"memory per simulated device, whole stack in one process (peak RSS slope over "
                     f"{_count(min(sizes))}–{_count(max(sizes))} devices)", f"{fleet['rss_kb_per_device']:.0f} KB"))
    return rows


def demo_sample(fleet: Results) -> str:
    """What the demo reports for the smallest fleet of the fleet benchmark, laid out as the demo prints it."""
    run = min(fleet["runs"], key=lambda r: r["devices"])
    demo = run.get("demo")
    if demo is None:
        raise FiguresError("fleet.json: the runs carry no demo figures; re-run benchmarks/fleet.py")
    by_variant = run["by_variant"]
    header = ("variant", "precision", "KB", "accuracy %", "p50 ms", "accepted", "devices")
    table = [header] + [
        (v["id"], v["precision"], _kb(v["size_bytes"]),
         f"{v['accuracy'] * 100:.2f}" if v.get("accuracy") is not None else "-",
         f"{v['latency_ms']:.4f}" if v.get("latency_ms") is not None else "-",
         "yes" if v["accepted"] else "no", str(by_variant.get(v["id"], 0)))
        for v in demo["variants"]
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"variants (menu v{demo['model']['menu_version']}, base held-out accuracy "
             f"{demo['model']['held_out_accuracy'] * 100:.2f}%)"]
    lines += [" " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
              for row in table]
    lines.append("devices by class and variant")
    width = max(len(name) for name in demo["by_device_class"])
    lines += [f" {name.ljust(width)}  " + ", ".join(f"{variant}: {n}" for variant, n in counts.items())
              for name, counts in demo["by_device_class"].items()]
    lines.append(f"{run['converged']}/{run['devices']} devices converged in {run['seconds_to_converge']:.1f} s "
                 f"after the plan was published; {run['inferences']} inferences served, {run['sessions_loaded']} "
                 f"model sessions loaded for the whole fleet; total {run['timings']['total_s']:.1f} s")
    return "\n```\n" + "\n".join(lines) + "\n```\n"


# --- rollout.json: per-run records, read loosely (the benchmark's shape is still moving) ------------------


def rollout_records(rollout: Results | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The per-run records: the file itself when it is a list, else its `runs` (or `records`)."""
    if isinstance(rollout, Sequence):
        return list(rollout)
    for key in ("runs", "records"):
        if isinstance(rollout.get(key), list):
            return list(rollout[key])
    raise FiguresError("rollout.json: no list of runs")


def _first(record: Mapping[str, Any], *keys: str) -> Any:
    return next((record[key] for key in keys if record.get(key) is not None), None)


def _is_bad(record: Mapping[str, Any]) -> bool:
    return bool(record.get("bad")) or str(record.get("scenario", "")).startswith("bad")


def _rolled_back(record: Mapping[str, Any]) -> bool:
    if record.get("rolled_back") is not None:
        return bool(record["rolled_back"])
    if record.get("promoted") is not None:
        return not record["promoted"]
    return str(record.get("outcome", "")).replace("_", " ") == "rolled back"


def _by_size(records: Iterable[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(int(record["devices"]), []).append(record)
    return dict(sorted(groups.items()))


def _seconds(runs: Sequence[Mapping[str, Any]], *keys: str) -> list[float]:
    return [float(v) for v in (_first(run, *keys) for run in runs) if v is not None]


def _target(runs: Sequence[Mapping[str, Any]]) -> str:
    """", target N s met k/n" when the runs carry their target."""
    targets = _seconds(runs, "target_seconds")
    met = [run["target_met"] for run in runs if run.get("target_met") is not None]
    if not targets or not met:
        return ""
    return f" (target {_span(targets, fmt='{:.0f}', unit=' s')}: met {sum(map(bool, met))}/{len(met)})"


def _steps(rollout: Results | Sequence[Mapping[str, Any]]) -> str:
    """" (steps 10/25/50/100 %)" from the benchmark's strategy, when the file records it."""
    strategy = rollout.get("strategy") if isinstance(rollout, Mapping) else None
    steps = ((strategy or {}).get("canary") or {}).get("steps") or []
    weights = [str(step["setWeight"]) for step in steps if "setWeight" in step]
    pauses = sum("pause" in step for step in steps)
    return f" (steps {'/'.join(weights)} %, {pauses} pauses)" if weights else ""


def rollout_rows(rollout: Results | Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """One row for the good canary, one for the faulty one, one for the operator's writes per rollout;
    each size over all its runs (counts of outcomes, and the range of each time)."""
    records = rollout_records(rollout)
    good = _by_size(r for r in records if not _is_bad(r))
    bad = _by_size(r for r in records if _is_bad(r))
    rows = []
    if good:
        parts = []
        for devices, runs in good.items():
            promoted = sum(not _rolled_back(run) for run in runs)
            parts.append(f"{_count(devices)} devices: promoted {promoted}/{len(runs)}, at "
                         f"{_span(_seconds(runs, 'seconds_to_decision', 'seconds'), unit=' s')}, all settled at "
                         f"{_span(_seconds(runs, 'seconds_to_settle'), unit=' s')}{_target(runs)}")
        rows.append((f"canary of a normal retrained model{_steps(rollout)}", "; ".join(parts)))
    if bad:
        parts = []
        for devices, runs in bad.items():
            rolled = sum(_rolled_back(run) for run in runs)
            left = _seconds(runs, "devices_left_on_new_revision")
            parts.append(f"{_count(devices)} devices: rolled back {rolled}/{len(runs)}, "
                         f"{_span(_seconds(runs, 'seconds_from_fault_to_rollback', 'seconds'), unit=' s')} from its "
                         f"errors reaching Prometheus, {_span(left, fmt='{:.0f}')} devices left on it{_target(runs)}")
        rows.append(("faulty canary (a fault the simulator injects: a normal retrained model whose inferences "
                     "crash on a share of calls)", "; ".join(parts)))
    writes = []
    for label, groups in (("promoted", good), ("rolled back", bad)):
        for devices, runs in groups.items():
            counts = [v for v in (_first(run, "operator_api_writes", "api_writes") for run in runs)
                      if isinstance(v, int)]
            if counts:
                writes.append(f"{_span(counts, fmt='{:.0f}')} {label} ({_count(devices)} devices)")
    if writes:
        rows.append(("operator API writes per canary rollout (target: the same for every fleet size)",
                     "; ".join(writes)))
    return rows


# --- agent.json -----------------------------------------------------------------------------------------


def trusted_load_ratio(agent: Results) -> str:
    return _span((row["ratio"] for row in agent["trusted_load"]), fmt="{:.1f}", unit="×")


def agent_rows(agent: Results) -> list[tuple[str, str]]:
    loads = agent["trusted_load"]
    met = all(row["ratio"] <= TRUSTED_LOAD_TARGET for row in loads)
    extra = _span((row["trusted_load_ms"] - row["plain_load_ms"] for row in loads), unit=" ms")
    plain = _span((row["plain_load_ms"] for row in loads), unit=" ms")
    memory = agent["memory"]
    sizes = [run["devices"] for run in memory["runs"]]
    memory_met = memory["kb_per_device"] <= MEMORY_TARGET_KB
    return [
        (f"memory per simulated device: agent, task, edge-node share, gateway state (peak RSS slope over "
         f"{_count(min(sizes))}–{_count(max(sizes))} devices; target ≤ {MEMORY_TARGET_KB} KB)",
         f"{memory['kb_per_device']:.1f} KB" + ("" if memory_met else "; **target not met**")),
        (f"verify + decrypt + load vs a plain onnxruntime load (target ≤ {TRUSTED_LOAD_TARGET:.2f}×)",
         f"{trusted_load_ratio(agent)} on these sub-MB models: {extra} of SHA-256 and AES-GCM against a {plain} "
         f"session load; " + ("target met" if met else "**target not met**")),
    ]


def _met(met: bool) -> str:
    return "met" if met else "**target not met**"


def drift_rows(drift: Results) -> list[tuple[str, str]]:
    d, f, p, m = drift["detection"], drift["false_alarms"], drift["payload"], drift["merge"]
    return [
        (f"{drift['shift_sd']} SD mean shift in one input ({drift['shifted_feature']}), {_count(drift['devices'])} "
         f"devices × {drift['rows_per_device']} inferences, OpenDP at ε = {drift['epsilon']} per window",
         f"flagged in {d['flagged']}/{d['trials']} fleets, the shifted feature named first in "
         f"{d['named_shifted_feature']}; {_met(d['flagged'] == d['trials'])}"),
        (f"drift false alarms per feature per simulated no-drift day ({f['evaluations_per_day']} scorings a day, "
         f"{f['days']} days; target ≤ {FALSE_ALARM_TARGET})",
         f"{f['per_feature_per_day']:.4f} ({f['feature_days_flagged']} of {f['days'] * drift['histograms']} "
         f"feature-days) at FDR {d['fdr']:.2g} per scoring; {_met(f['per_feature_per_day'] <= FALSE_ALARM_TARGET)}"),
        (f"private drift payload per feature per window (target ≤ {PAYLOAD_TARGET_BYTES} bytes)",
         f"{p['bytes_per_feature_max']} bytes at most ({p['drift_field_bytes']} bytes for the whole drift field); "
         f"{_met(p['bytes_per_feature_max'] <= PAYLOAD_TARGET_BYTES)}"),
        (f"gateway drift merge (checked histogram reports/s, one process; target ≥ {_count(MERGE_TARGET)})",
         f"{_count(m['reports_per_s'])}; {_met(m['reports_per_s'] >= MERGE_TARGET)}"),
        (f"PSI from exact histograms vs PSI on the raw data, same bins (target within ±{PSI_TARGET})",
         f"largest gap {drift['psi_max_abs_gap']:.1e}; {_met(drift['psi_max_abs_gap'] <= PSI_TARGET)}"),
    ]


def report_auth_rows(auth: Results) -> list[tuple[str, str]]:
    all_processes = auth["verify_reports_per_s_all_processes"]
    return [
        (f"signed reports verified by the gateway (ReportGuard.admit; target ≥ {_count(VERIFY_TARGET)}/s on 2 cores)",
         f"{_count(auth['verify_reports_per_s'])}/s in one process ({auth['admit_us']} µs each, of which Ed25519 "
         f"{auth['ed25519_verify_us']} µs), {_count(all_processes)}/s in {auth['processes']} processes on "
         f"{auth['cpus']} cores; {_met(all_processes >= VERIFY_TARGET)}"),
        ("signed reports verified and their drift histograms merged (DriftBook.apply), one process",
         f"{_count(auth['verify_and_merge_reports_per_s'])}/s"),
    ]


def prada_rows(prada: Results) -> list[tuple[str, str]]:
    normal, attack, overhead = prada["normal"], prada["attack"], prada["overhead"]
    caught = attack["flagged"] == attack["seeds"] and attack["max_queries_to_flag"] <= EXTRACTION_QUERIES_TARGET
    return [
        (f"extraction alarms on normal traffic ({normal['queries']} shuffled digit queries × {normal['seeds']} seeds; "
         "target: none)",
         f"{normal['flagged']} flagged, lowest Shapiro–Wilk W {normal['lowest_w']:.2f} "
         f"(alarm below {prada['config']['delta']}); {_met(normal['flagged'] == 0)}"),
        (f"extraction attack ({attack['kind']}, {attack['seeds']} seeds) flagged within "
         f"{EXTRACTION_QUERIES_TARGET} queries",
         f"{attack['flagged']}/{attack['seeds']}, after at most {attack['max_queries_to_flag']} queries (highest W "
         f"{attack['highest_w']:.2f}); "
         f"{_met(caught)}"),
        (f"extraction detector per query vs one int8 digits inference (target ≤ {EXTRACTION_OVERHEAD_TARGET_PCT:g} %)",
         f"{overhead['observe_us_median']} µs median, {overhead['observe_us_mean']} µs mean vs "
         f"{overhead['int8_inference_us_median']} µs: {overhead['overhead_pct_median']} % (median); "
         f"{_met(overhead['overhead_pct_median'] <= EXTRACTION_OVERHEAD_TARGET_PCT)}"),
    ] + ([] if "overhead_resnet8" not in prada else [resnet8_overhead_row(prada["overhead_resnet8"])])


def resnet8_overhead_row(cost: Results) -> tuple[str, str]:
    target = EXTRACTION_OVERHEAD_TARGET_PCT
    return (f"extraction detector per query vs one int8 ResNet-8 inference (target ≤ {target:g} %)",
            f"{cost['observe_us_median']} µs median, {cost['observe_us_mean']} µs mean vs "
            f"{cost['int8_inference_us_median']} µs: {cost['overhead_pct_mean']} % (mean); "
            f"{_met(cost['overhead_pct_mean'] <= target)}")


def licensing_rows(licensing: Results) -> list[tuple[str, str]]:
    m, token, throughput = licensing["metering"], licensing["token"], licensing["throughput"]
    tampering, audit, canary = licensing["tampering"], licensing["sampled_audit"], licensing["canary_audit"]
    detected = ", ".join(f"{kind} {n}/{tampering['trials']}" for kind, n in tampering["detected"].items())
    small = m["state_bytes_per_inference"] <= METER_STATE_TARGET and m["uplink_bytes_per_1000"] <= METER_UPLINK_TARGET
    return [
        (f"licence metering per inference vs one ResNet-8 int8 inference, same loop "
         f"(target ≤ {METERING_TARGET_PCT:g} %)",
         f"{m['metering_us_mean']} µs mean (seals amortised, fsyncs in the meter's writer thread; "
         f"{m['metering_cpu_us_mean']} µs of CPU) vs "
         f"{m['int8_inference_us_mean']} µs: "
         f"{m['overhead_pct_mean']} %; median {m['metering_us_median']} µs, of which {m['input_sha256_us_median']} µs "
         f"is SHA-256 of the {_count(m['input_bytes'])}-byte input ({m['input_sha256_pct_median']} % alone); "
         f"{_met(m['overhead_pct_mean'] <= METERING_TARGET_PCT)}"),
        (f"licence metering state per inference, uplink per 1,000 inferences (targets ≤ {METER_STATE_TARGET} B, "
         f"≤ {METER_UPLINK_TARGET} B)",
         f"{m['state_bytes_per_inference']} B, {m['uplink_bytes_per_1000']} B; "
         f"{_met(small)}"),
        (f"licence token verification on load (target ≤ {TOKEN_VERIFY_TARGET_MS:g} ms)",
         f"{token['verify_ms_median']} ms median; {_met(token['verify_ms_median'] <= TOKEN_VERIFY_TARGET_MS)}"),
        (f"usage checkpoints verified (signature and continuity; target ≥ {_count(CHECKPOINTS_TARGET)}/s on 2 cores)",
         f"{_count(throughput['capacity_2_cores'])}/s on 2 cores of our own ({_count(throughput['per_cpu_second'])} "
         f"per CPU-second); wall clock on the shared machine: {_count(throughput['per_second_2_process'])}/s in 2 "
         f"processes, {_count(throughput['per_second_1_process'])}/s in 1; "
         f"{_met(throughput['capacity_2_cores'] >= CHECKPOINTS_TARGET)}"),
        ("tampering detected at the next reconcile (target 100 %)",
         f"{detected}; {_met(tampering['all_detected'])}"),
        (f"audits: {audit['k']} sampled receipts vs 1 % unbacked; canaries vs another model",
         f"caught in {audit['detection_rate'] * 100:.1f} % of {audit['trials']} trials (expected ≥ 95 %); "
         f"swapped model caught: {'yes' if canary['swapped_caught'] else 'no'}, licensed variant passes: "
         f"{'yes' if canary['licensed_passes'] else 'no'}"),
    ]


def wasm_rows(wasm: Results) -> list[tuple[str, str]]:
    pre, post, loop = wasm["pre"], wasm["post"], wasm["loop"]
    return [
        (f"WebAssembly pre module per call, {pre['values_in']} floats, cached call path "
         f"(target ≤ {WASM_CALL_TARGET_US:g} µs)",
         f"{pre['sandbox_us_median']} µs median (numpy doing the same: {pre['numpy_us_median']} µs; wasmtime's "
         f"generic call: {pre['generic_us_median']} µs); {_met(pre['sandbox_us_median'] <= WASM_CALL_TARGET_US)}"),
        (f"WebAssembly post module per call ({post['values_in']} scores → top-3)",
         f"{post['sandbox_us_median']} µs median (numpy: {post['numpy_us_median']} µs)"),
        (f"looping WebAssembly module stopped by fuel ({loop['fuel']:,} units for {loop['values_in']} values; "
         f"target ≤ {WASM_LOOP_TARGET_MS:g} ms)",
         f"{loop['stopped_ms_median']} ms median, {loop['stopped_ms_max']} ms max over {loop['runs']}; "
         f"{_met(loop['stopped_ms_max'] <= WASM_LOOP_TARGET_MS)}"),
    ] + split_rows(wasm)


def wasm_call(wasm: Results) -> str:
    pre = wasm["pre"]
    return (f"{pre['sandbox_us_median']} µs per call for {pre['values_in']} floats, beside {pre['numpy_us_median']} µs "
            f"for numpy doing the same and {pre['generic_us_median']} µs through the generic call path")


def wasm_loop(wasm: Results) -> str:
    loop = wasm["loop"]
    rate = loop["fuel"] / (loop["stopped_ms_median"] / 1000) / 1e9
    return (f"a median {loop['stopped_ms_median']} ms here, at most {loop['stopped_ms_max']} ms over {loop['runs']} "
            f"(about {rate:.1f} billion units/s, instantiating afresh included)")


def hybrid_trace(wasm: Results) -> str:
    hybrid = wasm["hybrid"]
    links = "; ".join(f"{link}: " + ", ".join(f"{mode} {count}" for mode, count in sorted(modes.items()))
                      for link, modes in hybrid["choices_by_link"].items())
    return (f"over the trace the choice took {hybrid['total_chosen_ms']} ms, {hybrid['total_over_best_pct']} % more "
            f"than running the best mode at every step ({hybrid['total_best_ms']} ms; all local "
            f"{hybrid['total_local_ms']} ms), within 10 % at {hybrid['within_10pct']} of {hybrid['steps']} steps (the "
            f"worst {hybrid['worst_ratio']}× on {hybrid['worst_after_change']}); steps per mode and link: {links}")


def hybrid_demo(result: Results) -> str:
    vs, links = result["vs_best"], result["by_link"]
    modes = "; ".join(f"{link}: " + ", ".join(f"{mode} {n}" for mode, n in sorted(counts.items()))
                      for link, counts in links.items())
    return (f"the inferences that were not cascades took {vs['chosen_ms']} ms as chosen, {result['excess_pct']} % "
            f"more than the best of local and split at every step ({vs['best_ms']} ms, {vs['inferences']} "
            f"inferences); {result['bytes_sent']} bytes sent, cascade share {result['cascade_share']}; inferences "
            f"per mode and link: {modes}")


def split_rows(wasm: Results) -> list[tuple[str, str]]:
    split, hybrid = wasm["split"], wasm["hybrid"]
    worst = max(r["max_abs_diff"] for r in split.values())
    exact = all(r["exact"] == r["points"] for r in split.values())
    return [
        (f"split points: head → tail vs the whole graph, fp32 (target max \\|Δ\\| ≤ {SPLIT_ATOL:g})",
         f"{sum(r['exact'] for r in split.values())}/{sum(r['points'] for r in split.values())} exact over "
         f"{', '.join(split)}, largest \\|Δ\\| {worst:.1e}; {_met(exact and worst <= SPLIT_ATOL)}"),
        (f"hybrid choice on a {hybrid['steps']}-step link trace, {hybrid['model']} on a device "
         f"{hybrid['slowdown']:g}× slower (target within {HYBRID_TARGET_PCT:g} % of the best mode)",
         f"+{hybrid['total_over_best_pct']} % over the trace ({hybrid['total_chosen_ms']} ms vs "
         f"{hybrid['total_best_ms']} ms; all local: {hybrid['total_local_ms']} ms), within {HYBRID_TARGET_PCT:g} % "
         f"at {hybrid['within_10pct']}/{hybrid['steps']} steps; "
         f"{_met(hybrid['total_over_best_pct'] <= HYBRID_TARGET_PCT)}"),
    ]
def _mcu_backend(row: Mapping[str, Any], label: str) -> str:
    if row is None or "error" in row:
        return f"{label}: not built ({(row or {}).get('error', 'not run')[:80]})"
    return (f"{label} {row['flash_bytes'] / 1024:.0f} KB flash, {row['ram_bytes'] / 1024:.0f} KB RAM, "
            f"{row['instructions'] / 1e6:.2f} M instructions (~{row['latency_ms_estimate']:.0f} ms), "
            f"max abs diff {row['max_abs_diff']:.1g}")


def mcu_rows(mcu: Results) -> list[tuple[str, str]]:
    """One row per model on the emulated Cortex-M4 (fp32, then int8), the other boards, then the firmware
    time per variant."""
    clock = mcu["anchor"]["clock_mhz"]
    rows = []
    for name, row in mcu["models"].items():
        anchor = row.get("anchor")
        published = (f"; MLPerf Tiny {anchor['task']} published {anchor['published_ms']:.0f} ms, int8 microTVM"
                     if anchor else "")
        rows.append((f"{name} as Cortex-M4F firmware, fp32, in qemu (est. ms at {clock} MHz, 1 instruction/cycle"
                     f"{published})",
                     f"{_mcu_backend(row.get('tvm'), 'TVM')}; {_mcu_backend(row.get('emx'), 'emx-onnx-cgen')}"))
        int8 = row.get("emx_int8")
        if int8 and "error" not in int8:
            measure = "accuracy" if "accuracy" in int8 else "agreement"
            fp32 = row.get("fp32_quality", {}).get(measure, 1.0)
            rows.append((f"{name} int8 on the Cortex-M4F (emx-int8-cortex-m4: integer kernels)",
                         f"{int8['flash_bytes'] / 1024:.0f} KB flash, {int8['ram_bytes'] / 1024:.0f} KB RAM, "
                         f"{int8['instructions'] / 1e6:.2f} M instructions; {measure} {int8[measure] * 100:.1f} % "
                         f"(fp32 {fp32 * 100:.1f} %), max abs diff vs onnxruntime's int8 "
                         f"{int8['max_abs_diff_vs_int8_graph']:.1g}"))
        for target, other in row.get("targets", {}).items():
            rows.append((f"{name} as {target} firmware, fp32, in qemu",
                         _mcu_backend(other, "TVM") + (f" at {other['clock_mhz']} MHz" if "clock_mhz" in other
                                                       else "")))
    seconds = [r["firmware_seconds"] for row in mcu["models"].values()
               for r in [row.get("tvm", {}), row.get("emx_int8", {}), *row.get("targets", {}).values()]
               if "firmware_seconds" in r]
    if seconds:
        rows.append((f"firmware build + qemu measurement per microcontroller variant "
                     f"(target ≤ {FIRMWARE_SECONDS_TARGET} s)",
                     f"{_span(seconds, unit=' s')}; {_met(max(seconds) <= FIRMWARE_SECONDS_TARGET)}"))
    return rows


def _named(attack: Mapping[str, Any]) -> bool:
    return bool(attack["correct"])


def watermark_rows(wm: Results) -> list[tuple[str, str]]:
    e, alpha = wm["embed_summary"], wm["alpha"]
    attacks = [a for name, a in wm["attacks"].items() if name != "none"]
    pruning = sorted(wm["pruning"].items(), key=lambda item: float(item[0]))
    kept = [float(level) for level, a in pruning if _named(a)]
    lost = [float(level) for level, a in pruning if not _named(a)]
    tuned = list(wm["fine_tuning"].values())
    random_keys = wm["false_attribution_random_keys"].values()
    decoys = wm["false_attribution_other_licensees"].values()
    false_named = sum(f["false_attributions"] for f in random_keys) + sum(d["false_attribution"] for d in decoys)
    trials = sum(f["trials"] for f in random_keys)
    first_lost = wm["pruning"][f"{min(lost):.2f}"] if lost else None
    breaks = (f"named up to {max(kept) * 100:.0f} % pruned" if kept else "never named") + (
        f", not at {min(lost) * 100:.0f} % (the model itself then at {first_lost['accuracy'] * 100:.0f} % accuracy)"
        if first_lost else " (the highest level tried)")
    return [
        (f"watermark embed: accuracy drop on the held-out digits, mean over {e['copies']} licensee copies "
         f"(target ≤ {WATERMARK_DROP_TARGET_POINTS} points)",
         f"{e['mean_accuracy_drop_points']} points (worst copy {e['worst_accuracy_drop_points']}); "
         f"{_met(e['mean_accuracy_drop_points'] <= WATERMARK_DROP_TARGET_POINTS)}"),
        (f"watermark embed CPU time, digits (target ≤ {WATERMARK_CPU_TARGET_S:g} s)",
         f"{e['mean_cpu_seconds']} s mean, {e['max_cpu_seconds']} s at most; "
         f"{_met(e['max_cpu_seconds'] <= WATERMARK_CPU_TARGET_S)}"),
        (f"licensee named after int8 static and dynamic quantization, 50 % pruning, permutation + rescaling, "
         f"a 10-epoch fine-tune on 10 % of the data (chance match ≤ {alpha:g})",
         f"{sum(_named(a) for a in attacks)}/{len(attacks)} attacks; bit error rate ≤ "
         f"{max(a['bit_error_rate'] for a in attacks):.3f}, trigger accuracy ≥ "
         f"{min(a['trigger_accuracy'] for a in attacks) * 100:.0f} %, chance match ≤ "
         f"{max(a['chance_match_probability'] for a in attacks):.1g}; {_met(all(_named(a) for a in attacks))}"),
        ("where the watermark breaks: magnitude pruning 50–99 %; fine-tuning 10–2,000 epochs on 10 % of the data",
         f"{breaks}; named after {sum(_named(a) for a in tuned)}/{len(tuned)} fine-tunes (up to "
         f"{max(a['epochs'] for a in tuned):,} epochs at 1× and 10× the learning rate; bit error rate ≤ "
         f"{max(a['bit_error_rate'] for a in tuned):.3f}, trigger accuracy down to "
         f"{min(a['trigger_accuracy'] for a in tuned) * 100:.0f} %)"),
        (f"false attributions: an unwatermarked model and another licensee's copy, {trials:,} random-key trials, "
         f"and {max(d['licensees_tested'] for d in decoys):,} licensee records with the right key (target 0)",
         f"{false_named}; {_met(false_named == 0)}"),
    ]


def watermark_attacks(wm: Results) -> str:
    """The attack table of docs/watermarks.md."""
    lines = ["", "| suspect (acme's copy after ...) | accuracy % | bit error rate | payload decoded | "
             "trigger accuracy % | named | chance match |", "|---|---:|---:|---|---:|---|---:|"]
    rows = [*wm["attacks"].items(), *((f"{float(level) * 100:.0f} % magnitude pruning", a)
                                      for level, a in wm["pruning"].items() if float(level) > 0.5),
            *((f"fine-tune {name} on 10 % of the data", a) for name, a in wm["fine_tuning"].items())]
    for name, a in rows:
        lines.append(f"| {name} | {a['accuracy'] * 100:.1f} | {a['bit_error_rate']:.3f} | "
                     f"{'yes' if a['payload_recovered'] else 'no'} | {a['trigger_accuracy'] * 100:.0f} | "
                     f"{a['identified'] or 'none'} | {a['chance_match_probability']:.1g} |")
    return "\n".join(lines) + "\n"


def personalise_figures(result: Results) -> str:
    """Per base: devices that kept their head (fp32, int8) and the per-class gain on the class's own images."""
    parts = []
    for base in result["bases"]:
        fp32, int8 = base["variants"][0], base["variants"][1]
        used = [sum(c["used"] for c in v["classes"]) for v in (fp32, int8)]
        devices = sum(c["devices"] for c in fp32["classes"])
        gains = [(c["class_test_served"] - c["class_test_base"]) * 100 for c in fp32["classes"]]
        parts.append(f"from a base trained on {base['slice']} images ({fp32['held_out_accuracy']:.1%} held-out), "
                     f"{used[0]} of {devices} devices keep their head ({used[1]} on int8) and each class's own "
                     f"images change by {min(gains):+.1f} to {max(gains):+.1f} points on average")
    fits = [d["fit_ms"] for b in result["bases"] for v in b["variants"] for d in v["devices"]]
    head = result["bases"][0]["variants"][0]["head_bytes"]
    return (f"{'; '.join(parts)}. A head is {head:,} bytes; a fit takes {sorted(fits)[len(fits) // 2]:.0f} ms "
            "(median, this shared machine)")


# --- regions --------------------------------------------------------------------------------------------


def benchmark_table(results: Mapping[str, Results]) -> str:
    rows = (variant_rows(results["variants"]) + fleet_rows(results["fleet"]) + rollout_rows(results["rollout"])
            + agent_rows(results["agent"]) + drift_rows(results["drift"]) + report_auth_rows(results["report_auth"])
            + prada_rows(results["prada"]) + licensing_rows(results["licensing"]) + wasm_rows(results["wasm"])
            + mcu_rows(results["mcu"]) + watermark_rows(results["watermark"]))
    cpus = results["variants"].get("cpus")
    lines = [f"Measured on a {cpus}-core machine shared with other work, so times are noisy "
             "(the full tables are in `benchmarks/results/`):", "", "| what | figure |", "|---|---|"]
    lines += [f"| {what} | {figure} |" for what, figure in rows]
    return "\n" + "\n".join(lines) + "\n"


def federated_summary(result: Results) -> str:
    """benchmarks/federated.py: FedAvg (the target's strategy) and DP against central, FedAvgM beside them."""
    setup, fedavg, dp, fedavgm = result["setup"], result["fedavg"], result["dp"], result["fedavgm"]
    gap, target = result["fedavg_gap_points"], result["target_gap_points"]
    return (f"{setup['clients']} simulated clients × {setup['rounds']} rounds of FedAvg on non-IID shards reach "
            f"{_pct(fedavg['accuracy'])} held-out accuracy against {_pct(result['central_accuracy'])} central, "
            f"{gap:.2f} points under it (target ≤ {target:g}: {'met' if gap <= target else 'not met'}; 95 % of the "
            f"final accuracy after round {fedavg['rounds_to_95pct_of_final']}), in {fedavg['wall_s']} s with "
            f"{fedavg['peak_rss_mib']} MiB peak (host load average {fedavg['load_average_1m_at_start']} on "
            f"{setup['os_cpus']} cores); with DP (clip {dp['clip_norm']:g}, noise × {dp['noise_multiplier']:g}, "
            f"ε {dp['epsilon']} at δ {dp['delta']:g}) {_pct(dp['accuracy'])}, {result['dp_gap_points']:.2f} points "
            f"under central; FedAvgM (server momentum {fedavgm['server_momentum']:g}) {_pct(fedavgm['accuracy'])}, "
            f"{result['fedavgm_gap_points']:.2f} points under")


RENDERERS: Mapping[str, Callable[[Mapping[str, Results]], str]] = {
    "benchmarks": benchmark_table,
    "demo-sample": lambda results: demo_sample(results["fleet"]),
    "trusted-load-ratio": lambda results: trusted_load_ratio(results["agent"]),
    "wasm-call": lambda results: wasm_call(results["wasm"]),
    "wasm-loop": lambda results: wasm_loop(results["wasm"]),
    "split-diff": lambda results: f"{max(r['max_abs_diff'] for r in results['wasm']['split'].values()):.1e}",
    "hybrid-trace": lambda results: hybrid_trace(results["wasm"]),
    "watermark-attacks": lambda results: watermark_attacks(results["watermark"]),
    "hybrid-demo": lambda results: hybrid_demo(results["hybrid_demo"]),
    "personalise": lambda results: personalise_figures(results["personalise"]),
    "federated": lambda results: federated_summary(results["federated"]),
}


def render(documents: Mapping[str, str], results: Mapping[str, Results]) -> dict[str, str]:
    """Each document (name -> text) with every figures region rewritten from `results`; every renderer must have
    a region in one of them."""
    seen: set[str] = set()

    def rendered(name: str, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            region = match["name"]
            if region not in RENDERERS:
                raise FiguresError(f"{name}: region figures:{region} has no renderer in benchmarks/readme_figures.py")
            seen.add(region)
            return f"{match.group(1)}{RENDERERS[region](results)}{match.group(4)}"

        return REGION.sub(replace, text)

    out = {name: rendered(name, text) for name, text in documents.items()}
    missing = sorted(set(RENDERERS) - seen)
    if missing:
        raise FiguresError(f"no document has a region for {', '.join('figures:' + m for m in missing)}")
    return out


def load_results(directory: Path) -> dict[str, Results]:
    return {name: json.loads((directory / f"{name}.json").read_text()) for name in RESULTS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a document disagrees")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root DOCUMENTS are relative to")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    current = {name: (args.root / name).read_text() for name in DOCUMENTS}
    try:
        rendered = render(current, load_results(args.results))
    except FiguresError as exc:
        print(exc, file=sys.stderr)
        return 1
    stale = [name for name in DOCUMENTS if rendered[name] != current[name]]
    for name in stale:
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(current[name].splitlines(True), rendered[name].splitlines(True),
                                                       name, f"{name} (from the results)"))
        else:
            (args.root / name).write_text(rendered[name])
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
