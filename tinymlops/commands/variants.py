"""`tinymlops variants`: the variant factory without Kubernetes (build, verify, sample model)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from rich.console import Console

PRECISIONS_HELP = "Precisions to build, comma-separated (fp32, fp16, int8, int8-dynamic)."
SPARSITIES_HELP = "Magnitude-pruning levels, comma-separated fractions (e.g. 0.5,0.75); pruned+int8 too with int8."
TARGETS_HELP = "TVM compilation targets, comma-separated (x86_64, aarch64, armv7l, cortex-m4)."


def default_key_dir() -> Path:
    return Path(os.environ.get("TINYMLOPS_KEY_DIR") or Path.home() / ".tinymlops" / "keys")


def _signing_key(key_file: Path | None, console: Console) -> Ed25519PrivateKey:
    from tinymlops.signing import PRIVATE_KEY_FILE, generate_key_pair, load_private_key

    if key_file is None:
        key_file = default_key_dir() / PRIVATE_KEY_FILE
        if not key_file.exists():
            generate_key_pair(key_file.parent)
            console.print(f"[yellow]no --key given: created a signing key pair in {key_file.parent}[/]")
    return load_private_key(key_file.read_bytes(), source=str(key_file))


def _variant_table(menu: dict[str, Any]) -> Any:
    from rich.table import Table

    labelled = any("accuracy" in v["metrics"] for v in menu["variants"])
    table = Table(title=f"{menu['model']['namespace']}/{menu['model']['name']} menu v{menu['version']}",
                  caption="p50: single sample, 1 thread, this machine; (dev): built for another architecture")
    quality = "acc %" if labelled else "agree %"
    for column in ("variant", "KB", "zip KB", quality, "p50 ms", "RAM MB", "ok"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("variant", "ok") else "right")
    for variant in menu["variants"]:
        metrics = variant["metrics"]
        latency = metrics.get("latency_ms_p50")
        score = metrics["accuracy"] if labelled else metrics["agreement"]
        table.add_row(
            variant["id"],
            f"{variant['size_bytes'] / 1024:.1f}",
            f"{metrics['compressed_bytes'] / 1024:.1f}" if "compressed_bytes" in metrics else "-",
            f"{score * 100:.2f}",
            f"{latency:.4f}" if latency is not None else "(dev)",
            str(variant["requirements"]["min_ram_mb"]),
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


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not a number", param_hint="--sparsities") from exc


@click.group()
def variants() -> None:
    """Build, score, sign and verify the variants of one ONNX model."""


@variants.command("build")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path),
              help="DATA.npz: x (float32, batch first) and optional y (int64) for calibration and scoring.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Variant directory to write (menu.json, menu.sig, blobs/).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Ed25519 private key (PEM). Default: $TINYMLOPS_KEY_DIR or ~/.tinymlops/keys, created if absent.")
@click.option("--menu-version", default=1, show_default=True, type=click.IntRange(min=1),
              help="Menu version; devices refuse a lower one than they have.")
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
              help="Keep the model's data key here (hex, mode 0600) to grant more devices later (keys grant).")
def build(model: Path, data: Path | None, out_dir: Path, key_file: Path | None, menu_version: int,
          precisions: str, sparsities: str, targets: str, accuracy_budget: float, namespace: str,
          name: str | None, cache_dir: Path | None, encrypt_for: tuple[Path, ...], data_key_out: Path | None) -> None:
    """Build the variant matrix of MODEL, score it, and write a signed variant directory.

    The directory appears whole or not at all: everything is written beside it first,
    then renamed into place (an existing directory is replaced only on success).
    """
    import shutil
    import tempfile

    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tinymlops.errors import TinyMLOpsError
    from tinymlops.signing import PUBLIC_KEY_FILE, public_key_pem
    from tinymlops.store import DirectoryStore, atomic_write
    from tinymlops.variants import VariantBuild, build_variants, variant_matrix

    console = Console()
    out_dir = out_dir.resolve()
    try:
        wanted = variant_matrix(
            _csv(precisions), [_fraction(s) for s in _csv(sparsities)], _csv(targets)
        )
        key = _signing_key(key_file, console)
        data_key, recipients = None, []
        if encrypt_for:
            from tinymlops.envelope import load_device_public, new_data_key

            recipients = [load_device_public(p.read_bytes(), source=str(p)) for p in encrypt_for]
            data_key = new_data_key()
            if data_key_out is not None:
                atomic_write(data_key_out, data_key.hex().encode())
                data_key_out.chmod(0o600)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
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
                )
            # The publisher's public key travels with a sideloaded directory: the agent pins it on first install.
            atomic_write(staging / PUBLIC_KEY_FILE, public_key_pem(key.public_key()))
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staging.rename(out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_menu(console, menu)
    console.print(f"wrote [bold]{out_dir}[/] (menu.json, menu.sig, {PUBLIC_KEY_FILE}, blobs/)")


@variants.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--pubkey", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Publisher public key (PEM). Default: the signing-key.pub.pem shipped in DIRECTORY.")
def verify(directory: Path, pubkey: Path | None) -> None:
    """Exit 0 only if the menu's signature and every blob's digest hold."""
    from rich.console import Console

    from tinymlops.errors import TinyMLOpsError
    from tinymlops.menu import verify_variant_dir
    from tinymlops.signing import PUBLIC_KEY_FILE, load_public_key

    console = Console()
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
    _print_menu(console, menu)
    console.print(f"[green]OK[/]: signature valid, {len(menu['variants'])} blob digests match")


@variants.command("digits")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for model.onnx and data.npz.")
def digits(out_dir: Path) -> None:
    """Train the sample model (an MLP on scikit-learn's bundled digits) and write model.onnx + data.npz."""
    from rich.console import Console

    from tinymlops.model import prepare_digits

    console = Console()
    with console.status("training the digits MLP"):
        artifacts = prepare_digits(out_dir)
    console.print(f"model: {artifacts.model_path} ({artifacts.model_path.stat().st_size / 1024:.1f} KB)")
    console.print(f"data:  {artifacts.data_path} (held-out split)")
    console.print(f"held-out accuracy: {artifacts.test_accuracy * 100:.2f}%")
