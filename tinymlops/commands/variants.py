"""`tinymlops variants`: the variant factory without Kubernetes (build, verify, sample model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tinymlops.layout import BLOBS_DIR, KEYS_DIR, MENU_FILE, MENU_SIGNATURE_FILE

# What `variants build` writes into --out; nothing else there is ever touched.
VARIANT_DIR_ENTRIES = (MENU_FILE, MENU_SIGNATURE_FILE, "signing-key.pub.pem", BLOBS_DIR, KEYS_DIR)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from rich.console import Console

    from tinymlops.variants.tvm_tune import Tuning

PRECISIONS_HELP = ("Precisions to build, comma-separated: fp32, fp16, int8 (static, calibrated on --data; "
                   "also spelled int8-static), int8-dynamic.")
SPARSITIES_HELP = "Magnitude-pruning levels, comma-separated fractions (e.g. 0.5,0.75); pruned+int8 too with int8."
TARGETS_HELP = "TVM compilation targets, comma-separated (x86_64, aarch64, armv7l, cortex-m4, cortex-m7, cortex-m33)."
# variant_matrix names its inputs in errors; here they are these flags.
FLAGS = {"precisions": "--precisions", "sparsities": "--sparsities", "targets": "--targets"}
OUTPUT = click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
                      help="table: for people; json: the menu as JSON on stdout (messages go to stderr).")
# How each kind of evaluation data is shown: only labelled data gives an accuracy.
QUALITY_COLUMNS = {"labelled": "acc %", "unlabelled": "agree %", "synthetic": "agree % (synthetic)"}
EVAL_NOTES = {
    "labelled": "quality: accuracy on the labelled held-out part of --data",
    "unlabelled": "quality: agreement with the base on --data (no labels: not accuracy)",
    "synthetic": "quality: agreement with the base on random inputs (no --data: NOT accuracy)",
}


def _signing_key(key_file: Path | None, key_dir: Path, console: Console) -> Ed25519PrivateKey:
    from tinymlops.signing import PRIVATE_KEY_FILE, generate_key_pair, load_private_key

    if key_file is None:
        key_file = key_dir / PRIVATE_KEY_FILE
        if not key_file.exists():
            from tinymlops.commands.outputs import check_output_files
            from tinymlops.signing import PUBLIC_KEY_FILE

            # A lone public key there may be what devices trust: never replace it with one of a new pair.
            check_output_files([key_dir / PUBLIC_KEY_FILE], force=False, option="--key-dir")
            generate_key_pair(key_file.parent)
            console.print(f"[yellow]no --key given: created a signing key pair in {key_file.parent}[/]")
    return load_private_key(key_file.read_bytes(), source=str(key_file))


def is_variant_menu(path: Path) -> bool:
    """Whether `path` is the menu.json of a variant directory (which a new build may replace)."""
    import json

    try:
        menu = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(menu, dict) and menu.get("kind") == "VariantMenu"


def eval_data(menu: dict[str, Any]) -> str:
    """What the menu's variants were scored on (labelled, unlabelled or synthetic), from their metrics."""
    kinds = {variant["metrics"].get("eval_data") for variant in menu["variants"]}
    if len(kinds) == 1 and None not in kinds:
        return str(kinds.pop())
    # Menus from before eval_data was recorded: accuracy only ever came from labels.
    return "labelled" if any("accuracy" in v["metrics"] for v in menu["variants"]) else "unlabelled"


def _variant_table(menu: dict[str, Any]) -> Any:
    from rich.table import Table

    kind = eval_data(menu)
    table = Table(title=f"{menu['model']['namespace']}/{menu['model']['name']} menu v{menu['version']}",
                  caption=f"{EVAL_NOTES[kind]}; p50: single sample, 1 thread, this machine; "
                          "(dev): built for another architecture; est.: a microcontroller's, from its instructions "
                          "in qemu (docs/mcu.md)")
    for column in ("variant", "KB", "zip KB", QUALITY_COLUMNS[kind], "p50 ms", "RAM", "ok"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("variant", "ok") else "right")
    for variant in menu["variants"]:
        metrics = variant["metrics"]
        latency = metrics.get("latency_ms_p50")
        score = metrics["accuracy"] if kind == "labelled" else metrics["agreement"]
        table.add_row(
            variant["id"],
            f"{variant['size_bytes'] / 1024:.1f}",
            f"{metrics['compressed_bytes'] / 1024:.1f}" if "compressed_bytes" in metrics else "-",
            f"{score * 100:.2f}",
            f"{latency:.4f}" if latency is not None else (
                f"~{metrics['latency_ms_estimate']:.1f} est." if "latency_ms_estimate" in metrics else "(dev)"),
            f"{variant['requirements']['ram_bytes'] / 1024:.1f} KB" if "ram_bytes" in variant["requirements"]
            else f"{variant['requirements']['min_ram_mb']} MB",
            "[green]yes[/]" if variant["accepted"] else "[red]no[/]",
        )
    return table


def _print_menu(console: Console, menu: dict[str, Any]) -> None:
    console.print(_variant_table(menu))
    for variant in menu["variants"]:
        if not variant["accepted"]:
            console.print(f"[red]{variant['id']} rejected[/]: {variant['reason']}")
    for entry in menu.get("not_built", ()):
        console.print(f"[yellow]{entry['id']} not built[/]: {entry['reason']}")
    for module in menu.get("modules", ()):
        console.print(f"{module['role']} module {module['sha256'][:12]}… ({module['size_bytes']} bytes, "
                      f"{module['inputs']} → {module['outputs']} values per sample), used by every variant")
    if eval_data(menu) == "synthetic":
        console.print("[yellow]scored on random inputs (no --data): agreement with the base there says little "
                      "about accuracy on real inputs[/]")


def _echo_json(document: dict[str, Any]) -> None:
    import json

    click.echo(json.dumps(document, indent=2, sort_keys=True))


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not a number", param_hint="--sparsities") from exc


def _expires(ctx: click.Context, param: click.Parameter, text: str) -> str:
    """--expires as the menu's RFC 3339 `expires` (a duration counts from now)."""
    import time

    from tinymlops.freshness import expires_option

    try:
        return expires_option(text, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _expiry_line(menu: dict[str, Any]) -> str:
    """Whether the menu is still current (docs/interfaces.md#freshness): expiry does not fail verification."""
    import time

    from tinymlops.freshness import expired, expiry

    expires = expiry(menu, what=MENU_FILE)
    if expires is None:
        return "never expires"
    if expired(expires, time.time()):
        return (f"[yellow]expired at {menu['expires']}[/]: a sideloaded install refuses it; a fresh signed plan "
                "that pins it still counts")
    return f"current until {menu['expires']}"


def _tuning(trials: int | None, budget: str | None) -> Tuning | None:
    """The MetaSchedule budget of --tune-trials/--tune-budget (both or neither)."""
    from tinymlops.errors import SpecError
    from tinymlops.variants.tvm_tune import Tuning, parse_duration

    if trials is None and budget is None:
        return None
    if trials is None or budget is None:
        raise click.UsageError("--tune-trials and --tune-budget go together (how many candidates, how long)")
    try:
        return Tuning(trials, parse_duration(budget, field="--tune-budget"))
    except SpecError as exc:
        raise click.BadParameter(str(exc).removeprefix("--tune-budget: "), param_hint="--tune-budget") from exc


def _planned(precisions: str, sparsities: str, targets: str, data: Path | None, synthetic_data: bool) -> list[str]:
    """The variant ids the flags ask for; a usage error naming the flag when they make no sense."""
    from tinymlops.errors import SpecError
    from tinymlops.variants import calibrated, variant_matrix

    try:
        wanted = variant_matrix(_csv(precisions), [_fraction(s) for s in _csv(sparsities)], _csv(targets),
                                fields=FLAGS)
    except SpecError as exc:
        raise click.UsageError(str(exc)) from exc
    if data is not None and synthetic_data:
        raise click.UsageError("--synthetic-data is for builds without --data; give one of them")
    if data is None and calibrated(wanted) and not synthetic_data:
        raise click.UsageError(
            f"{', '.join(calibrated(wanted))} (from --precisions int8) is calibrated on --data, and none was given: "
            "pass --data DATA.npz (array x float32 batch first, optional y int64), or leave int8 out of "
            "--precisions (fp32, fp16 and int8-dynamic need no data), or --synthetic-data to calibrate it on "
            "random inputs anyway"
        )
    return wanted


def _module_bytes(path: Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"{path}: cannot be read ({exc.strerror or exc})", param_hint=option) from exc


@click.group()
def variants() -> None:
    """Build, score, sign and verify the variants of one ONNX model."""


@variants.command("build")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path),
              help="DATA.npz (numpy.savez): array x (float32, batch first) and optional y (int64 labels), for "
                   "calibration and scoring; with y the table shows accuracy, without it agreement with the base.")
@click.option("--synthetic-data", is_flag=True,
              help="Without --data, score on random inputs and build calibrated variants (int8) on them anyway; "
                   "their figures are agreement on noise, not accuracy.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Variant directory to write (menu.json, menu.sig, signing-key.pub.pem, blobs/, keys/): new, "
                   "empty or a previous variant directory.")
@click.option("--force", is_flag=True,
              help="Write into a --out directory that holds other files too (they are kept, never replaced).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Ed25519 private key (PEM). Default: signing-key.pem in --key-dir, created if absent.")
@click.option("--key-dir", type=click.Path(file_okay=False, path_type=Path), envvar="TINYMLOPS_KEY_DIR",
              show_envvar=True, default=lambda: str(Path.home() / ".tinymlops" / "keys"),
              show_default="~/.tinymlops/keys", help="Where the default signing key is kept when --key is not given.")
@click.option("--menu-version", default=1, show_default=True, type=click.IntRange(min=1),
              help="Menu version; devices refuse a lower one than they have.")
@click.option("--expires", "expires", default="365d", show_default=True, callback=_expires,
              help="When the signed menu expires: a duration from now (90d, 12h) or an RFC 3339 time. After it a "
                   "device installs from this menu only when a fresh signed plan pins it (a sideloaded copy is "
                   "refused).")
@click.option("--precisions", default="fp32,int8", show_default=True, help=PRECISIONS_HELP)
@click.option("--sparsities", default="", help=SPARSITIES_HELP)
@click.option("--targets", default="", help=TARGETS_HELP)
@click.option("--accuracy-budget", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Largest accepted accuracy drop versus the base (fraction).")
@click.option("--namespace", default="default", show_default=True, help="Model namespace recorded in the menu.")
@click.option("--name", help="Model name recorded in the menu (default: the file name without .onnx).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Reuse transform outputs across builds of the same base and parameters.")
@click.option("--encrypt-for", "encrypt_for", multiple=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Encrypt every artifact and wrap its key for this device public key (repeatable).")
@click.option("--data-key-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep the model's data key in this new file (hex, mode 0600) to grant more devices later "
                   "(keys grant); an existing file is replaced only with --force.")
@click.option("--pre", "pre", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="WebAssembly pre-processing module (MODULE.wasm, ABI in docs/interfaces.md) every variant runs "
                   "with: --data then holds raw inputs, which it turns into the model's.")
@click.option("--post", "post", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="WebAssembly post-processing module every variant runs with, on the model's output.")
@click.option("--split-parts", is_flag=True,
              help="Publish each exact split point's head and tail as blobs, for devices that share the work "
                   "with the gateway's tail service (not with --encrypt-for: the two parts are the whole model).")
@click.option("--tune-trials", type=click.IntRange(min=1),
              help="MetaSchedule-tune the TVM variants this machine runs (its own architecture): at most this many "
                   "measured schedule candidates (with --tune-budget; the tuning database is cached in --cache-dir).")
@click.option("--tune-budget", help="Longest the tuning may take: seconds or a duration (90s, 10m, 1h30m).")
@OUTPUT
def build(model: Path, data: Path | None, synthetic_data: bool, out_dir: Path, force: bool, key_file: Path | None,
          key_dir: Path, menu_version: int, precisions: str, sparsities: str, targets: str, accuracy_budget: float,
          namespace: str, name: str | None, cache_dir: Path | None, encrypt_for: tuple[Path, ...],
          data_key_out: Path | None, expires: str, pre: Path | None, post: Path | None, split_parts: bool,
          tune_trials: int | None, tune_budget: str | None, output: str) -> None:
    """Build the variant matrix of MODEL, score it, and write a signed variant directory.

    Everything is built in a staging directory first and moved into --out only on
    success. --out may be new, empty, or a previous variant directory (replaced); a
    directory holding anything else is refused unless --force, and even then nothing
    already there is deleted or overwritten.
    """
    import shutil
    import tempfile

    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tinymlops.commands.outputs import STAGING_PREFIX, check_output_dir, check_output_files, install_entries
    from tinymlops.errors import TinyMLOpsError
    from tinymlops.publish import MENU_FILES_LAST
    from tinymlops.signing import PUBLIC_KEY_FILE, public_key_pem
    from tinymlops.store import DirectoryStore, atomic_write
    from tinymlops.variants import VariantBuild, build_variants

    console = Console(stderr=output == "json")
    out_dir = out_dir.resolve()
    wanted = _planned(precisions, sparsities, targets, data, synthetic_data)
    if pre is not None and data is None:
        raise click.UsageError("--pre needs --data: raw inputs for the module to turn into the model's")
    if split_parts and encrypt_for:
        raise click.UsageError("--split-parts publishes the model in two clear halves: not with --encrypt-for")
    modules = {role: _module_bytes(path, f"--{role}") for role, path in (("pre", pre), ("post", post))}
    tuning = _tuning(tune_trials, tune_budget)
    # Checked before the build, so a refusal costs nothing; the build itself only writes in staging.
    check_output_dir(out_dir, VARIANT_DIR_ENTRIES, MENU_FILE, force=force, option="--out",
                     marker_is_ours=is_variant_menu)
    if data_key_out is not None:
        check_output_files([data_key_out], force=force, option="--data-key-out")
    try:
        key = _signing_key(key_file, key_dir, console)
        data_key, recipients = None, []
        if encrypt_for:
            from tinymlops.envelope import load_device_public, new_data_key

            recipients = [load_device_public(p.read_bytes(), source=str(p)) for p in encrypt_for]
            data_key = new_data_key()
        # Staging sits on the same file system as --out (inside it when it exists), so entries move by rename.
        staging_parent = out_dir if out_dir.is_dir() else out_dir.parent
        staging_parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=staging_parent))
        try:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                          console=console, transient=True) as progress:
                task = progress.add_task(f"building {', '.join(wanted)}", total=len(wanted))

                def advance(variant_id: str, built: VariantBuild) -> None:
                    progress.update(task, advance=1, description=f"built {built.entry['id']}")

                menu = build_variants(
                    model, data, DirectoryStore(staging.parent), staging.name,
                    signing_key=key, model_ref=(namespace, name or model.stem), precisions=_csv(precisions),
                    sparsities=[_fraction(s) for s in _csv(sparsities)], targets=_csv(targets),
                    accuracy_budget=accuracy_budget, menu_version=menu_version, cache_dir=cache_dir,
                    on_variant=advance, data_key=data_key, recipients=recipients,
                    synthetic_calibration=synthetic_data, expires=expires, pre=modules["pre"], post=modules["post"],
                    split_parts=split_parts, tuning=tuning,
                )
            # The publisher's public key travels with a sideloaded directory: the agent pins it on first install.
            atomic_write(staging / PUBLIC_KEY_FILE, public_key_pem(key.public_key()))
            if data_key is not None and data_key_out is not None:
                atomic_write(data_key_out, data_key.hex().encode())
                data_key_out.chmod(0o600)
            if not out_dir.exists():
                staging.rename(out_dir)  # a new directory appears whole or not at all
            else:
                install_entries(staging, out_dir, VARIANT_DIR_ENTRIES, last=MENU_FILES_LAST)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        _echo_json({"directory": str(out_dir), "eval_data": eval_data(menu), "menu": menu})
        return
    _print_menu(console, menu)
    console.print(f"wrote [bold]{out_dir}[/] (menu.json, menu.sig, {PUBLIC_KEY_FILE}, blobs/)")


@variants.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--pubkey", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Publisher public key (PEM). Default: the signing-key.pub.pem shipped in DIRECTORY.")
@OUTPUT
def verify(directory: Path, pubkey: Path | None, output: str) -> None:
    """Exit 0 only if the menu's signature and every blob's digest of DIRECTORY hold."""
    from rich.console import Console

    from tinymlops.errors import TinyMLOpsError
    from tinymlops.menu import verify_variant_dir
    from tinymlops.signing import PUBLIC_KEY_FILE, load_public_key

    console = Console(stderr=output == "json")
    if pubkey is None:
        pubkey = directory / PUBLIC_KEY_FILE
        if not pubkey.is_file():
            raise click.ClickException(f"no --pubkey given and {pubkey} does not exist")
        console.print(f"[yellow]using the key shipped in the directory ({pubkey}); pass --pubkey to check "
                      "who published it[/]")
    try:
        menu = verify_variant_dir(directory, load_public_key(pubkey.read_bytes(), source=str(pubkey)))
    except TinyMLOpsError as exc:
        raise click.ClickException(f"verification failed: {exc}") from exc
    if output == "json":
        _echo_json({"directory": str(directory), "verified": True, "eval_data": eval_data(menu), "menu": menu})
        return
    _print_menu(console, menu)
    modules = len(menu.get("modules", ()))
    console.print(f"[green]OK[/]: signature valid, {len(menu['variants']) + modules} blob digests match"
                  + (f" ({modules} pre/post module(s))" if modules else ""))
    console.print(_expiry_line(menu))


@variants.command("digits")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for model.onnx and data.npz (other files there are left alone).")
@click.option("--force", is_flag=True, help="Replace a model.onnx or data.npz already in --out.")
def digits(out_dir: Path, force: bool) -> None:
    """Train the sample model (an MLP on scikit-learn's bundled digits) and write model.onnx + data.npz."""
    from rich.console import Console

    from tinymlops.commands.outputs import check_output_files
    from tinymlops.model import prepare_digits

    check_output_files([out_dir / "model.onnx", out_dir / "data.npz"], force=force, option="--out")
    console = Console()
    with console.status("training the digits MLP"):
        artifacts = prepare_digits(out_dir)
    console.print(f"model: {artifacts.model_path} ({artifacts.model_path.stat().st_size / 1024:.1f} KB)")
    console.print(f"data:  {artifacts.data_path} (held-out split)")
    console.print(f"held-out accuracy: {artifacts.test_accuracy * 100:.2f}%")
