"""`tinymlops keys`: Ed25519 signing keys for menus and plans."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def keys() -> None:
    """Manage Ed25519 signing keys (PEM)."""


@keys.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for signing-key.pem (private, mode 0600) and signing-key.pub.pem.")
@click.option("--force", is_flag=True, help="Replace a key pair already in DIR.")
def generate(out_dir: Path, force: bool) -> None:
    """Write a new Ed25519 signing key pair into DIR."""
    from rich.console import Console

    from tinymlops.signing import PRIVATE_KEY_FILE, generate_key_pair

    if (out_dir / PRIVATE_KEY_FILE).exists() and not force:
        raise click.ClickException(
            f"{out_dir / PRIVATE_KEY_FILE} exists; devices trust its public key (pass --force to replace it)"
        )
    private_path, public_path = generate_key_pair(out_dir)
    console = Console()
    console.print(f"private key: [bold]{private_path}[/] (keep it secret; it signs menus and plans)")
    console.print(f"public key:  [bold]{public_path}[/] (give it to devices: --pubkey)")
