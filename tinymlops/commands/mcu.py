"""`tinymlops mcu run`: a microcontroller variant's firmware, built (cached) and run in qemu on inputs.

Exit 0 when every input ran; 1 with the reason otherwise (a bad signature or digest,
a variant that is not a microcontroller bundle, inputs of the wrong shape, a missing
toolchain, or firmware that faulted).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from tinymlops.commands.inputs import read_inputs

OUTPUT = click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
                      help="table: for people; json: outputs and figures as JSON on stdout.")


@click.group()
def mcu() -> None:
    """Microcontroller variants on an emulated Cortex-M4 board (MPS2-AN386 in qemu)."""


@mcu.command("run")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--variant", "variant_id", required=True, help="The variant id, e.g. tvm-cortex-m4.")
@click.option("--input", "input_file", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A .npz file whose array `x` (float32, batch first) holds the inputs.")
@click.option("--pubkey", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Publisher public key (PEM). Default: the signing-key.pub.pem shipped in DIRECTORY.")
@OUTPUT
def run(directory: Path, variant_id: str, input_file: Path, pubkey: Path | None, output: str) -> None:
    """Build (cached) and run VARIANT's firmware in qemu on each input; print outputs and measured figures.

    The menu's signature and the bundle's digest are checked first. Figures: flash
    and RAM (static + stack high-water mark) of the firmware, instructions per
    inference from the board's timer, and a latency estimated from them at the
    stated clock (an estimate, not a measurement).
    """
    import numpy as np
    from rich.console import Console

    from tinymlops.errors import TinyMLOpsError
    from tinymlops.signing import PUBLIC_KEY_FILE, load_public_key
    from tinymlops.variants.mcu.run import run_variant

    console = Console(stderr=output == "json")
    if pubkey is None:
        pubkey = directory / PUBLIC_KEY_FILE
        if not pubkey.is_file():
            raise click.ClickException(f"no --pubkey given and {pubkey} does not exist")
    x = read_inputs(input_file)
    try:
        with console.status(f"building (or reusing) {variant_id}'s firmware and running {len(x)} input(s) in qemu"):
            result = run_variant(directory, variant_id, x, load_public_key(pubkey.read_bytes(), source=str(pubkey)))
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    figures = result.figures
    if output == "json":
        click.echo(json.dumps({"variant": result.variant, "firmware_cached": result.cached,
                               "outputs": result.outputs.tolist(), "figures": figures}, indent=2))
        return
    for i, row in enumerate(result.outputs):
        click.echo(f"{i}: class {int(np.argmax(row))} (score {float(np.max(row)):.4f})")
    click.echo(f"flash {figures['flash_bytes']} B, RAM {figures['ram_bytes']} B "
               f"(static {figures['static_ram_bytes']} + stack {figures['stack_bytes']}), "
               f"{figures['instructions']} instructions per inference")
    click.echo(f"latency ~{figures['latency_ms_estimate']} ms at {figures['clock_mhz']} MHz "
               f"({figures['latency_note']})")
    click.echo(f"firmware {'reused from the cache' if result.cached else 'built'}; {figures['board']}")
