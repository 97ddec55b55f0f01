"""`tinymlops demo`: the whole loop on the embedded local stack, with a live progress display."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

SCENARIOS = ("converge", "battery", "canary", "bad-canary", "drift", "protect", "pay-per-query", "far-edge",
             "hybrid", "federated")
# tinymlops.fleet.shift.SHIFTS, spelled here so that `--help` does not import the simulator (a test keeps them equal).
SHIFTS = ("brighter", "noisier", "rotated", "none")
PROMETHEUS_BIN_ENV = "TINYMLOPS_PROMETHEUS_BIN"  # read by tinymlops.stack.prometheus.find_prometheus
# Top-level keys every demo report has: how a previous report is told from someone else's file.
REPORT_KEYS = {"model", "variants", "fleet", "timings", "scenario"}


class RichProgress:
    """Stage lines plus a live bar of converged devices (plain lines when not on a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.console, transient=False)
        self.task = self.bar.add_task("starting", total=None)
        self._stage = ""
        self._detail = ""

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def stage(self, name: str, detail: str = "") -> None:
        if (name, detail) == (self._stage, self._detail):
            return
        if name != self._stage or not self.console.is_terminal:
            self.console.log(f"[bold]{name}[/]: {detail}" if detail else f"[bold]{name}[/]")
        self._stage, self._detail = name, detail
        self.bar.update(self.task, description=f"{name}: {detail}"[:70])

    def fleet(self, converged: int, total: int, by_phase: Mapping[str, int]) -> None:
        phases = ", ".join(f"{phase} {n}" for phase, n in sorted(by_phase.items()))
        self.bar.update(self.task, description=f"devices converged ({phases or 'no reports yet'})"[:70],
                        completed=converged, total=total)


def is_demo_report(path: Path) -> bool:
    """Whether `path` holds a report a previous `tinymlops demo` wrote (which a new run may replace)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and report.keys() >= REPORT_KEYS


def _summary(console: Any, report: Mapping[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"variants (menu v{report['model']['menu_version']}, "
                        f"base held-out accuracy {report['model']['held_out_accuracy'] * 100:.2f}%)")
    for column in ("variant", "precision", "KB", "accuracy %", "p50 ms", "accepted", "devices"):
        table.add_column(column, justify="left" if column in ("variant", "precision", "accepted") else "right")
    by_variant = report["fleet"]["by_variant"]
    for v in report["variants"]:
        table.add_row(v["id"], v["precision"], f"{v['size_bytes'] / 1024:.1f}",
                      f"{v['accuracy'] * 100:.2f}" if v["accuracy"] is not None else "-",
                      f"{v['latency_ms']:.4f}" if v["latency_ms"] is not None else "-",
                      "yes" if v["accepted"] else f"no: {v['reason']}", str(by_variant.get(v["id"], 0)))
    console.print(table)
    classes = Table(title="devices by class and variant")
    classes.add_column("device class")
    classes.add_column("variants")
    for cls, counts in report["fleet"]["by_device_class"].items():
        classes.add_row(cls, ", ".join(f"{variant}: {n}" for variant, n in counts.items()))
    console.print(classes)
    fleet = report["fleet"]
    console.print(f"{fleet['converged']}/{fleet['devices']} devices converged in {fleet['seconds_to_converge']:.1f} s "
                  f"after the plan was published; {fleet['inferences']} inferences served, "
                  f"{fleet['sessions_loaded']} model sessions loaded for the whole fleet; "
                  f"total {report['timings']['total_s']:.1f} s")


def _far_edge_summary(console: Any, far_edge: Mapping[str, Any]) -> None:
    if far_edge.get("skipped"):
        console.print(far_edge["skipped"])
        return
    for mcu in far_edge["devices"]:
        figures = mcu["menu_figures"]
        console.print(f"{mcu['device']} ({mcu['flash_kb']} KB flash, {mcu['ram_kb']} KB RAM) behind "
                      f"{mcu['edge_node']}: {mcu['phase']} {mcu['variant'] or '-'}, firmware {figures['flash_bytes']} "
                      f"B flash, {figures['ram_bytes']} B RAM, {mcu['instructions_per_inference']} instructions per "
                      f"inference (~{figures['latency_ms_estimate']} ms at {figures['clock_mhz']} MHz, an estimate), "
                      f"{mcu['inferences']} inferences")


def _federated_summary(console: Any, federated: Mapping[str, Any]) -> None:
    rounds = ", ".join(f"{a:.1%} ({c} clients)" for a, c in zip(federated["accuracy_per_round"],
                                                             federated["clients_per_round"], strict=True))
    console.print(f"federated ({federated['strategy']}): base {federated['base_accuracy']:.1%}, rounds {rounds}")
    verdict = (federated.get("verdict") or {}).get("reason") or (federated.get("conditions") or [{}])[0].get("message")
    console.print(f"{federated['phase']}: {verdict}")
    if "revision" in federated:
        console.print(f"revision {federated['revision']} {federated['rollout']}: "
                      f"{federated['devices_on_new_revision']} devices on it "
                      f"{federated['seconds_from_verdict_to_fleet']} s after the verdict")


def _drift_summary(console: Any, drift: Mapping[str, Any]) -> None:
    from rich.table import Table

    shift = drift["shift"]
    table = Table(title=f"drift ({drift['mode']}, epsilon {drift['epsilon']} per window of "
                        f"{drift['window_inferences']} inferences; {shift['kind']} inputs on {shift['device_class']})")
    for column in ("class (*shifted)", "devices", "control", "verdict", "top features: PSI (p)", "windows", "bytes"):
        table.add_column(column, justify="right" if column in ("devices", "windows", "bytes") else "left")
    for cls, entry in drift["by_class"].items():
        top = ", ".join(f"{f['feature']} {f['psi']:.2f} ({f['p_value']:.0e})" for f in entry["top"][:2]) or "-"
        windows = entry.get("windows_to_detection")
        table.add_row(cls + ("*" if entry["shifted"] else ""), str(entry["devices"]),
                      drift["control"]["by_class"][cls]["verdict"], entry["verdict"], top,
                      "-" if windows is None else f"{windows:g}",
                      "-" if entry["bytes_per_report"] is None else f"{entry['bytes_per_report']:.0f}")
    console.print(table)
    control, condition = drift["control"]["condition"], drift["condition"]
    console.print(f"control: Drifted {control['status']} ({control['reason']}); after the shift: Drifted "
                  f"{condition['status']} ({condition['reason']}) naming {', '.join(drift['named_classes']) or 'none'}"
                  + (f" after {drift['seconds_to_condition']} s" if drift["seconds_to_condition"] is not None else ""))


def _protection_summary(console: Any, protection: Mapping[str, Any]) -> None:
    for menu in protection["licensee_menus"]:
        console.print(f"licensee {menu['licensee']}: fleet {menu['fleet']} follows {menu['plan_folder']} "
                      f"(menu {str(menu['menu_sha256'])[:12]}, {menu['accepted_variants']} accepted variants), "
                      f"{menu['converged']}/{menu['devices']} devices converged")
    refused = protection["refused_fleet"]
    console.print(f"fleet {refused['fleet']}: {refused['reason']}: {refused['message']}")
    leak = protection["leak"]
    tests = {t["licensee"]: t for t in leak["attribution"]["tests"]}
    named = leak["attribution"]["licensee"]
    best = tests.get(named or "", {})
    console.print(f"leak from {leak['device']} ({leak['licensee']}), then {'; '.join(leak['thief'])}: named "
                  f"{named or 'none'}" + (f" (bit error rate {best.get('bit_error_rate')}, trigger accuracy "
                                          f"{best.get('trigger_accuracy')}, chance match "
                                          f"{leak['attribution']['chance_match_probability']:.1e})" if best else "")
                  + f"; the never-watermarked source: {leak['control']['named'] or 'none'}")
    other = leak["other_licensee"]
    console.print(f"{other['licensee']}'s copy tried on {other['device']}: "
                  + (f"refused: {other['refused']}" if not other["opened"] else
                     "OPENED: its menu is not encrypted, so a leak of it would frame " + str(other["licensee"])))
    extraction = protection["extraction"]
    attacker = extraction["attacker"]
    console.print(f"extraction on {extraction['device']}: {attacker['client']} flagged after "
                  f"{attacker['queries_to_flag']} queries (W {attacker['w']}), then answered "
                  f"{attacker['output_after_alarm']}; "
                  + ", ".join(f"{c['client']} {c['queries']} queries {'FLAGGED' if c['flagged'] else 'not flagged'}"
                              for c in extraction["normal_clients"])
                  + f"; fleet metric {extraction['fleet_metric']}")


@click.command()
@click.option("--devices", default=100, show_default=True, type=click.IntRange(1, 100_000),
              help="Simulated KubeEdge devices in the fleet.")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="converge", show_default=True,
              help="converge: build the variants and bring the whole fleet onto them; battery: then play "
                   "battery, charger and network traces and watch devices switch variant on their own; canary: "
                   "then roll a retrained model out through the fleet's canary steps, gated by Prometheus; "
                   "bad-canary: the same, but the new revision crashes on devices and is rolled back; drift: "
                   "drift telemetry on (histograms+dp, epsilon 1 per window), then one device class sees shifted "
                   "inputs and the fleet's Drifted condition must name it; pay-per-query: a License is applied, "
                   "four devices serve offline within their tokens, one runs out and is refilled on reconnect, one "
                   "restores an old state and is caught at reconcile, one swapped model is caught by a canary audit; "
                   "far-edge: then an edge node flashes "
                   "three Cortex-M4 boards (qemu) with the variant that fits each, refuses a corrupted image and "
                   "relays their reports; protect: two licensees' fleets get "
                   "differently watermarked menus, a model leaked from one licensee's device and disguised (pruned, "
                   "int8) is attributed to that licensee, the other licensee's copy cannot be opened on that "
                   "device, and a device flags an app running an extraction attack; hybrid: then four slow "
                   "devices run the digits model with its pre/post "
                   "WebAssembly modules and choose local, split with the gateway or cascade to the fp32 variant as "
                   "a link trace (LAN, Wi-Fi, LTE, offline, EDGE) plays; federated: start from a weak model, "
                   "train it with Flower on the devices' own non-IID data, promote it and roll it out.")
@click.option("--shift", type=click.Choice(SHIFTS), default="brighter", show_default=True,
              help="--scenario drift: how the jetson-nano devices' inputs change (none: a control run that must "
                   "raise nothing).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default="demo-report.json",
              show_default=True, help="Where to write the JSON report; replaces a previous demo report, any other "
                                      "existing file only with --force.")
@click.option("--force", is_flag=True, help="Replace --report FILE even when it is not a previous demo report.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=".tinymlops/demo",
              show_default=True, help="State of the embedded stack (store, keys, kubeconfig).")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Give up (exit 1) after this many seconds.")
@click.option("--encrypt/--no-encrypt", default=True, show_default=True,
              help="Publish the artifacts encrypted, the data key wrapped for one key per device class.")
@click.option("--examples", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Directory of the EdgeModel and DeviceFleet manifests to apply (default: the bundled examples/).")
@click.option("--prometheus-bin", envvar=PROMETHEUS_BIN_ENV, show_envvar=True,
              help="The prometheus server executable canary analysis queries (default: `prometheus` on PATH).")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: the summary tables (on stderr, beside the progress); json: the report on stdout instead.")
@click.option("--far-edge-devices", type=click.IntRange(0, 3), default=2, show_default=True,
              help="converge: emulated Cortex-M4 boards (qemu) that join the fleet behind one edge node, when the "
                   "Arm toolchain, qemu and TVM are present (otherwise the demo says why and runs without them).")
def demo(devices: int, scenario: str, shift: str, report_path: Path, force: bool, workdir: Path, timeout_s: float,
         encrypt: bool, examples: Path | None, prometheus_bin: str | None, output: str, far_edge_devices: int) -> None:
    """Run the whole loop on the embedded local stack and write a JSON report.

    Trains the sample model, starts the Kubernetes API emulator, the operator and
    the gateway, applies examples/, builds the variants with the KFP pipeline,
    registers --devices simulated KubeEdge devices that verify, load and serve
    their variant, and waits until the fleet has converged. Leaves nothing running.
    """
    import logging

    from tinymlops.commands.outputs import check_output_files
    from tinymlops.errors import TinyMLOpsError
    from tinymlops.stack.demo import DemoOptions, run_demo
    from tinymlops.stack.protect import run_protect

    # Before minutes of work, not after: the report must not land on someone's file.
    check_output_files([report_path], force=force, option="--report", ours=is_demo_report)
    if prometheus_bin:
        os.environ[PROMETHEUS_BIN_ENV] = prometheus_bin  # the embedded stack looks it up there (stack/prometheus.py)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = DemoOptions(root=workdir, devices=devices, timeout_s=timeout_s, scenario=scenario, encrypt=encrypt,
                          shift=shift, far_edge_devices=far_edge_devices)
    if examples is not None:
        options = dataclasses.replace(options, examples=examples)
    with RichProgress() as progress:
        try:
            report = (run_protect if scenario == "protect" else run_demo)(options, progress)
        except TinyMLOpsError as exc:
            raise click.ClickException(str(exc)) from exc
    report["scenario"] = scenario
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if output == "json":
        click.echo(json.dumps(report, indent=2))
        return
    _summary(progress.console, report)
    if "authentication" in report:
        auth = report["authentication"]
        refused = ", ".join(f"{i['kind']} report " + (f"refused ({i['reason']})" if i["refused"] else "ACCEPTED")
                            for i in auth["injected"])
        progress.console.print(f"in the name of {auth['device']}: {refused}; gateway refusals by reason "
                               f"{auth['rejected_by_reason']}")
    if "far_edge" in report["fleet"]:
        _far_edge_summary(progress.console, report["fleet"]["far_edge"])
    if "context" in report:
        context = report["context"]
        for point in context["timeline"]:
            progress.console.print(f"  t={point['t']:>5}s  low battery {point['low_battery']:>4}  charging "
                                   f"{point['charging']:>4}  offline {point['offline']:>4}  {point['by_variant']}")
        progress.console.print(f"{context['offline_switches']} switches made offline from cached variants")
    if "rollout" in report:
        rollout = report["rollout"]
        for step in rollout["steps"]:
            progress.console.print(f"  t={step['t_s']:>6}s  {step['step']}")
        outcome = "rolled back" if rollout["rolled_back"] else "promoted"
        progress.console.print(f"revision {rollout['revision']} {outcome} after {rollout['seconds_to_decision']}s: "
                               f"{rollout['reason']}; {rollout['api_writes']} operator API writes")
    if "drift" in report:
        _drift_summary(progress.console, report["drift"])
    if "licensing" in report:
        lic = report["licensing"]
        usage = lic["license"]["status"].get("usage", {})
        progress.console.print(f"licence acme: {usage.get('inferences')} inferences counted, {usage.get('refills')} "
                               f"refill(s), anomalies {usage.get('anomalies')}; refused offline: {lic['refused']}")
    for mcu in report.get("far_edge", {}).get("devices", []):
        figures = (f"{mcu['variant']}: flash {mcu['flash_bytes']} B, RAM {mcu['ram_bytes']} B, "
                   f"{mcu['instructions_per_inference']} instructions/inference (~{mcu['latency_ms_estimate']} ms "
                   f"at {mcu['clock_mhz']} MHz, estimated), {mcu['inferences']} inferences"
                   if mcu["variant"] else f"nothing flashed: {'; '.join(mcu['refusals'])[:160]}")
        progress.console.print(f"far edge {mcu['device']} ({mcu['flash_kb']} KB flash, {mcu['ram_kb']} KB RAM): "
                               f"{figures}")
    if "protection" in report:
        _protection_summary(progress.console, report["protection"])
    if "hybrid" in report:
        hybrid = report["hybrid"]
        for point in hybrid["timeline"][::4]:
            progress.console.print(f"  t={point['t_s']:>5}s  {point['link']:<8} {point['modes']}")
        vs = hybrid["vs_best"]
        p50 = {mode: v["p50"] for mode, v in hybrid["latency_ms"].items()}
        progress.console.print(f"hybrid: latency p50 by mode {p50} ms, {hybrid['bytes_sent']} bytes sent, "
                               f"cascade share {hybrid['cascade_share']}; "
                               f"local/split {vs['chosen_ms']} ms against {vs['best_ms']} ms for the best mode "
                               f"at every step")
    if "federated" in report:
        _federated_summary(progress.console, report["federated"])
    progress.console.print(f"report: {report_path}")
