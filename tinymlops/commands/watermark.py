"""`tinymlops watermark`: embed a licensee's watermark in a model, and name the licensee a suspect copy came from.

`verify` exits 0 when a licensee is identified, 1 when no watermark is found, 2 when the suspect cannot be
tested at all (not ONNX, another architecture than every base model in the registry, an unusable registry or
key), as click's usage errors do.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from tinymlops.watermark import Attribution, Embedded

NOT_FOUND_EXIT = 1


def cannot_test(message: str) -> click.ClickException:
    """The input cannot be tested (or embedded) at all: a usage error, exit 2, apart from "no watermark" (1)."""
    return click.UsageError(message)


@click.group()
def watermark() -> None:
    """Per-licensee watermarks: embed one in a model, attribute a suspect copy to a licensee."""


def _read_data(path: Path) -> tuple[NDArray[np.float32], NDArray[np.int64] | None]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
        raise cannot_test(f"--data {path}: not a readable .npz file with an array x ({exc})") from exc
    if "x" not in arrays:
        raise cannot_test(f"--data {path}: has no array x (found: {', '.join(sorted(arrays)) or 'none'})")
    return arrays["x"], arrays.get("y")


@watermark.command("embed")
@click.argument("model", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--data", "data_file", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="DATA.npz: x (float32, batch first) and, when known, y (int64 labels; without it the model's "
                   "own predictions are the labels). A fifth is held out to measure accuracy before and after.")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The owner's secret: any file of at least 32 random bytes, or a PEM private key "
                   "(`tinymlops keys generate`). Never stored; keep it to verify.")
@click.option("--licensee", required=True, help="Who receives this copy (1-63 letters, digits, '.', '_', '-').")
@click.option("--registry", "registry_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Watermark registry directory (an artifact store): the record and the base model go there.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the watermarked ONNX model (same graph, new weight values).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Trigger seed (with the key and licensee, it makes the trigger set) and training seed.")
@click.option("--force", is_flag=True, help="Replace --out when it exists.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: for people; json: the record and metrics as JSON on stdout.")
def embed(model: Path, data_file: Path, key_file: Path, licensee: str, registry_dir: Path, out_file: Path,
          seed: int, force: bool, output: str) -> None:
    """Embed LICENSEE's watermark in MODEL (a BCH-coded payload in its weights and a key-derived trigger set) and
    record it in the registry; OUT is the licensee's copy."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tinymlops.commands.outputs import check_output_files
    from tinymlops.errors import InvalidDataError, MissingExtraError, TinyMLOpsError
    from tinymlops.store import DirectoryStore, atomic_write
    from tinymlops.watermark import WatermarkRegistry, key_from_file
    from tinymlops.watermark import embed as embed_model

    console = Console(stderr=output == "json")
    check_output_files([out_file], force=force, option="--out")
    x, y = _read_data(data_file)
    try:
        key = key_from_file(key_file)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task(f"embedding {licensee}'s watermark", total=None)

            def advance(done: int, planned: int) -> None:
                progress.update(task, completed=done, total=planned, description=f"fine-tuning, epoch {done}")

            embedded = embed_model(model.read_bytes(), x, y, key=key, licensee=licensee,
                                   registry=WatermarkRegistry(DirectoryStore(registry_dir)), seed=seed,
                                   progress=advance)
    except MissingExtraError:
        raise  # the command line names the extra to install (exit 1), as for every command
    except InvalidDataError as exc:
        raise cannot_test(f"--data {data_file}: {exc}") from exc
    except TinyMLOpsError as exc:
        raise cannot_test(str(exc)) from exc
    atomic_write(out_file, embedded.model)
    if output == "json":
        click.echo(json.dumps({"out": str(out_file), "record": embedded.record.to_json(),
                               "metrics": embedded.metrics}, indent=2, sort_keys=True))
        return
    _print_embedded(console, embedded, out_file)


def _print_embedded(console: Any, embedded: Embedded, out_file: Path) -> None:
    m = embedded.metrics
    console.print(f"licensee [bold]{embedded.record.licensee}[/]: payload {embedded.record.payload}, "
                  f"{embedded.record.parameters['code']} code, {embedded.record.parameters['triggers']} triggers")
    console.print(f"held-out accuracy ({m['holdout_samples']} samples, labels: {m['labels']}): "
                  f"{m['accuracy_before'] * 100:.2f}% before, {m['accuracy_after'] * 100:.2f}% after")
    console.print(f"read back: bit error rate {m['bit_error_rate']:.3f}, trigger accuracy "
                  f"{m['trigger_accuracy'] * 100:.0f}%; {m['epochs']} epochs, {m['cpu_seconds']:.1f} CPU s")
    console.print(f"wrote [bold]{out_file}[/] (sha256 {embedded.record.watermarked_sha256[:12]}…)")


@watermark.command("verify")
@click.argument("suspect", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--registry", "registry_dir", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Watermark registry directory (records and base models, as `watermark embed` wrote them).")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The owner's key the watermarks were embedded with.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: for people; json: the attribution as JSON on stdout.")
def verify(suspect: Path, registry_dir: Path, key_file: Path, output: str) -> None:
    """Name the licensee whose watermark SUSPECT carries: exit 0 identified, 1 none, 2 cannot be tested."""
    from rich.console import Console

    from tinymlops.errors import MissingExtraError, TinyMLOpsError
    from tinymlops.store import DirectoryStore
    from tinymlops.watermark import WatermarkRegistry, key_from_file
    from tinymlops.watermark import verify as verify_model

    console = Console(stderr=output == "json")
    try:
        key = key_from_file(key_file)
        with console.status("realigning the suspect's units and testing each licensee"):
            attribution = verify_model(suspect.read_bytes(), key=key,
                                       registry=WatermarkRegistry(DirectoryStore(registry_dir)), what=str(suspect))
    except MissingExtraError:
        raise
    except TinyMLOpsError as exc:
        raise cannot_test(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps(attribution.to_json(), indent=2, sort_keys=True))
    else:
        _print_attribution(console, attribution)
    raise SystemExit(0 if attribution.licensee is not None else NOT_FOUND_EXIT)


def _print_attribution(console: Any, attribution: Attribution) -> None:
    from rich.table import Table

    if attribution.licensee is not None:
        console.print(f"licensee: [bold]{attribution.licensee}[/] (chance match probability "
                      f"{attribution.chance_match_probability:.2g} <= {attribution.alpha:g})")
    else:
        console.print(f"licensee: [bold]none[/]: no watermark found (closest chance match probability "
                      f"{attribution.chance_match_probability:.2g} > {attribution.alpha:g})")
    # Narrow columns: the table must fit an 80-column terminal.
    table = Table("licensee", "base", "BER", "p bits", "payload", "triggers", "p trig.", "chance")
    for test in attribution.tests:
        table.add_row(test.licensee, test.base_sha256[:8], f"{test.bit_error_rate:.3f}", f"{test.bit_p_value:.2g}",
                      "decoded" if test.payload_recovered else "-",
                      f"{test.trigger_accuracy * 100:.0f}%" if test.trigger_error is None else "not run",
                      f"{test.trigger_p_value:.2g}", f"{test.chance_match_probability:.2g}")
    console.print(table)
    console.print(f"BER: bit error rate of the code read from the realigned weights; triggers: share of the "
                  f"trigger set given its labels; {attribution.tests_made} tests made, chance: the better p-value "
                  "times that number")
