"""`tinymlops drift score`: merge saved device reports offline and score their drift against the menu.

The same check, merge and score the gateway runs (`tinymlops.drift`), over files: each REPORT is what
`tinymlops agent report` prints (a signed envelope or a plain report), a JSON list of them, or a
`{"reports": [...]}` batch.  Signatures are not checked here (there is no device registry offline);
each report is validated as the gateway validates it, and a refused one is named with its reason.
Exit 0: no drift (or too few rows to say); 3: drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from tinymlops.drift.merge import Merged
    from tinymlops.drift.score import DriftScore

DRIFT_EXIT = 3
PLOTTED_FEATURES = 4


@click.group()
def drift() -> None:
    """Drift of what devices see and predict, from their histograms."""


def _items(raw: Any) -> Iterator[Any]:
    if isinstance(raw, list):
        yield from raw
    elif isinstance(raw, Mapping) and isinstance(raw.get("reports"), list):
        yield from raw["reports"]
    else:
        yield raw


def _read_reports(paths: tuple[Path, ...]) -> Iterator[tuple[str, Any, Mapping[str, Any] | None, str | None]]:
    """(where, report, its raw drift object, error) for each report in the files."""
    from tinymlops.errors import InvalidReportError
    from tinymlops.report import Report, SignedReport

    for path in paths:
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            yield str(path), None, None, f"not JSON ({str(exc)[:120]})"
            continue
        for index, item in enumerate(_items(raw)):
            where = f"{path}[{index}]" if isinstance(raw, list | dict) and item is not raw else str(path)
            try:
                if SignedReport.is_envelope(item):
                    envelope = SignedReport.from_json(item, where=where)
                    report, body = envelope.open(where=where), json.loads(envelope.payload)
                else:
                    report, body = Report.from_json(item, where=where), item
            except InvalidReportError as exc:
                yield where, None, None, str(exc)
                continue
            yield where, report, body.get("drift"), None


def merge_files(menu: Mapping[str, Any], menu_sha256: str, paths: tuple[Path, ...]) -> tuple[
        dict[tuple[str, int, str], Merged], list[dict[str, str]]]:
    """The reports' histograms merged per fleet × revision × device class, and every refusal (file, reason)."""
    from tinymlops.drift.merge import Baseline, Merged, check
    from tinymlops.errors import DriftRefusedError

    baseline = Baseline.from_menu(menu, menu_sha256=menu_sha256)
    groups: dict[tuple[str, int, str], Merged] = {}
    refused: list[dict[str, str]] = []
    seen: set[tuple[str, str, int]] = set()
    for where, report, payload, error in _read_reports(paths):
        if report is None:
            refused.append({"report": where, "reason": "malformed", "error": str(error)})
            continue
        if payload is None:
            refused.append({"report": where, "reason": "no-drift", "error": "the report carries no drift field"})
            continue
        try:
            release = check(payload, baseline, revision=report.revision, where=f"{where}.drift")
            window = (report.namespace, report.device, release.window)
            if window in seen:
                raise DriftRefusedError("old-window", f"{where}.drift.window: device {report.device}'s window "
                                        f"{release.window} was given already")
        except DriftRefusedError as exc:
            refused.append({"report": where, "reason": exc.reason, "error": str(exc)})
            continue
        seen.add(window)
        key = (f"{report.namespace}/{report.fleet}", report.revision, report.device_class)
        groups.setdefault(key, Merged(baseline)).add(release)
    return groups, refused


@drift.command("score")
@click.argument("variant_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--pubkey", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Publisher public key (PEM). Default: the signing-key.pub.pem shipped in VARIANT_DIR.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: for people; json: the scores as JSON on stdout.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw reference vs live histograms of the top drifting features into this PNG (needs the "
                   "`plot` extra).")
@click.option("--fdr", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="False discovery rate across the features (default: the gateway's).")
@click.option("--min-rows", type=click.IntRange(1), default=None,
              help="Live rows needed before a group is scored (default: the gateway's).")
def score(variant_dir: Path, reports: tuple[Path, ...], pubkey: Path | None, output: str, plot_file: Path | None,
          fdr: float | None, min_rows: int | None) -> None:
    """Merge saved REPORTs, score drift per feature against VARIANT_DIR's menu; exit 0 no drift, 3 drift."""
    from tinymlops.drift.score import FDR, MIN_ROWS
    from tinymlops.errors import TinyMLOpsError
    from tinymlops.menu import read_menu_files, verify_variant_dir
    from tinymlops.signing import PUBLIC_KEY_FILE, load_public_key
    from tinymlops.store import sha256_bytes

    if pubkey is None:
        pubkey = variant_dir / PUBLIC_KEY_FILE
        if not pubkey.is_file():
            raise click.ClickException(f"no --pubkey given and {pubkey} does not exist")
        click.echo(f"using the key shipped in the directory ({pubkey}); pass --pubkey to check who published it",
                   err=True)
    try:
        menu = verify_variant_dir(variant_dir, load_public_key(pubkey.read_bytes(), source=str(pubkey)))
    except TinyMLOpsError as exc:
        raise click.ClickException(f"verification failed: {exc}") from exc
    if not isinstance(menu.get("monitoring"), Mapping):
        raise click.ClickException(f"{variant_dir}/menu.json has no monitoring object: its variants were built "
                                   "without reference histograms")
    menu_sha256 = sha256_bytes(read_menu_files(variant_dir)[0])
    try:
        groups, refused = merge_files(menu, menu_sha256, reports)
    except ValueError as exc:
        raise click.ClickException(f"{variant_dir}/menu.json: {exc}") from exc
    results = {key: merged.score(fdr=fdr or FDR, min_rows=min_rows or MIN_ROWS) for key, merged in groups.items()}
    drifted = any(result.drifted for result in results.values())
    if output == "json":
        click.echo(json.dumps({
            "menu_sha256": menu_sha256, "drifted": drifted,
            "groups": [{"fleet": fleet, "revision": revision, "device_class": device_class,
                        "reports": groups[(fleet, revision, device_class)].windows, **result.as_json()}
                       for (fleet, revision, device_class), result in sorted(results.items())],
            "refused": refused}, indent=2))
    else:
        _print(results, groups, refused)
    if plot_file is not None:
        _plot(plot_file, groups, results)
        click.echo(f"wrote {plot_file}", err=output == "json")
    raise SystemExit(DRIFT_EXIT if drifted else 0)


def _print(results: Mapping[tuple[str, int, str], DriftScore], groups: Mapping[tuple[str, int, str], Merged],
           refused: list[dict[str, str]]) -> None:
    for (fleet, revision, device_class), result in sorted(results.items()):
        merged = groups[(fleet, revision, device_class)]
        head = f"{fleet} revision {revision} {device_class}: {result.rows} rows from {merged.windows} windows"
        if not result.scored:
            click.echo(f"{head}: not scored (fewer than {result.min_rows} rows)")
            continue
        verdict = "DRIFT in " + ", ".join(f.name for f in result.top()) if result.drifted else "no drift"
        click.echo(f"{head}: {verdict} (Benjamini-Hochberg at FDR {result.fdr:g})")
        click.echo(f"  {'feature':<16} {'psi':>9} {'js':>9} {'ks':>9} {'p':>9}  drifted")
        for f in sorted(result.features, key=lambda f: (f.p_value, -f.psi)):
            click.echo(f"  {f.name:<16} {f.psi:9.4f} {f.js:9.4f} {f.ks:9.4f} {f.p_value:9.2g}  "
                       f"{'yes' if f.drifted else ''}")
    for refusal in refused:
        click.echo(f"refused ({refusal['reason']}): {refusal['error']}", err=True)
    if not results:
        click.echo("no histograms to score", err=True)


def _plot(path: Path, groups: Mapping[tuple[str, int, str], Merged],
          results: Mapping[tuple[str, int, str], DriftScore]) -> None:
    """Reference vs live proportions of the most significant features (drifted or not) of every group."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    from tinymlops.drift.score import proportions

    panels = [(key, feature) for key, result in sorted(results.items()) if result.scored
              for feature in sorted(result.features, key=lambda f: (f.p_value, -f.psi))[:PLOTTED_FEATURES]]
    if not panels:
        raise click.ClickException("--plot: no group has enough rows to be scored, nothing to draw")
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), squeeze=False)
    for axis, ((fleet, revision, device_class), feature) in zip(axes[:, 0], panels, strict=True):
        merged = groups[(fleet, revision, device_class)]
        index = merged.baseline.names.index(feature.name)
        reference, live = proportions(merged.baseline.counts[index]), proportions(merged.counts[index])
        bins = np.arange(reference.size)
        axis.bar(bins - 0.2, reference, width=0.4, label="reference")
        axis.bar(bins + 0.2, live, width=0.4, label="live")
        axis.set_title(f"{device_class} r{revision} {feature.name}: PSI {feature.psi:.3g}, p={feature.p_value:.2g}"
                       + (" (drifted)" if feature.drifted else ""), fontsize=9)
        axis.set_xticks(bins)
        axis.set_ylabel("share")
        axis.legend(fontsize=7)
    axes[-1, 0].set_xlabel("bin (the menu's fixed edges)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
