"""`tinymlops keys`: Ed25519 signing keys for menus and plans; a device's X25519 key (encrypted variants) and
Ed25519 identity key (signed reports)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def keys() -> None:
    """Manage keys (PEM): Ed25519 signing keys, device keys (X25519 and Ed25519 identity), data-key grants."""


@keys.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for signing-key.pem (private, mode 0600) and signing-key.pub.pem.")
@click.option("--force", is_flag=True, help="Replace a key pair already in --out (devices trust the old one).")
def generate(out_dir: Path, force: bool) -> None:
    """Write a new Ed25519 signing key pair into the --out directory."""
    from rich.console import Console

    from tinymlops.commands.outputs import check_output_files
    from tinymlops.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, generate_key_pair

    # Either half may be what devices trust or what signs today's menus: neither is replaced silently.
    check_output_files([out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE], force=force, option="--out")
    private_path, public_path = generate_key_pair(out_dir)
    console = Console()
    console.print(f"private key: [bold]{private_path}[/] (keep it secret; it signs menus and plans)")
    console.print(f"public key:  [bold]{public_path}[/] (give it to devices: --pubkey)")


@keys.command("device")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for device-key.pem and identity.pem (private, mode 0600) and their .pub.pem halves.")
@click.option("--force", is_flag=True,
              help="Replace device keys already in --out (variants wrapped for the old key stop opening, and the "
                   "gateway refuses reports until the new identity is registered).")
def device(out_dir: Path, force: bool) -> None:
    """Write a device's keys into --out: an X25519 key pair, whose public half receives wrapped data keys, and
    an Ed25519 identity key pair, which signs the device's reports (register its public half with the gateway)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.commands.outputs import check_output_files
    from tinymlops.envelope import device_key_pem, device_public_pem, fingerprint, generate_device_key
    from tinymlops.signing import (
        IDENTITY_ANNOTATION,
        IDENTITY_KEY_FILE,
        IDENTITY_PUBLIC_KEY_FILE,
        private_key_pem,
        public_key_base64,
        public_key_pem,
    )
    from tinymlops.store import atomic_write

    private_path, public_path = out_dir / "device-key.pem", out_dir / "device-key.pub.pem"
    identity_path, identity_public_path = out_dir / IDENTITY_KEY_FILE, out_dir / IDENTITY_PUBLIC_KEY_FILE
    check_output_files([private_path, public_path, identity_path, identity_public_path], force=force, option="--out")
    key = generate_device_key()
    identity = Ed25519PrivateKey.generate()
    for path, pem in ((private_path, device_key_pem(key)), (identity_path, private_key_pem(identity))):
        atomic_write(path, pem)
        path.chmod(0o600)
    atomic_write(public_path, device_public_pem(key.public_key()))
    atomic_write(identity_public_path, public_key_pem(identity.public_key()))
    click.echo(f"device key {fingerprint(key.public_key())}: {private_path} (stays on the device: --device-key), "
               f"{public_path} (for the publisher: --encrypt-for, keys grant)")
    click.echo(f"identity key: {identity_path} (stays on the device: it signs reports), "
               f"{identity_public_path} (for the gateway's device registry)")
    # What registers it on a cluster: the operator builds the gateway's registry from this annotation.
    click.echo(f"register it: kubectl annotate device <name> "
               f"{IDENTITY_ANNOTATION}={public_key_base64(identity.public_key())}")


@keys.command("grant")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data-key", "data_key_file", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="The model's data key (what `variants build --data-key-out` wrote).")
@click.option("--device-pubkey", "pubkeys", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A device or group public key (repeatable).")
def grant(directory: Path, data_key_file: Path, pubkeys: tuple[Path, ...]) -> None:
    """Let more devices open an encrypted variant DIRECTORY, or rotate a device's key.

    Writes DIRECTORY/keys/<fingerprint>.json per device; the menu, its signature and the
    blobs stay exactly as they are, so nothing is rebuilt or re-signed.
    """
    import json

    from tinymlops.envelope import data_key_id, load_device_public
    from tinymlops.errors import TinyMLOpsError
    from tinymlops.layout import MENU_FILE
    from tinymlops.protect import grant as wrap_for
    from tinymlops.protect import model_context, write_grants
    from tinymlops.store import DirectoryStore

    try:
        menu = json.loads((directory / MENU_FILE).read_bytes())
        data_key = bytes.fromhex(data_key_file.read_text().strip())
        key_ids = {v["encryption"]["key_id"] for v in menu["variants"] if v.get("encryption")}
        if key_ids and key_ids != {data_key_id(data_key)}:
            raise click.ClickException(f"{data_key_file} is data key {data_key_id(data_key)}, the menu uses "
                                       f"{', '.join(sorted(key_ids))}")
        recipients = [load_device_public(p.read_bytes(), source=str(p)) for p in pubkeys]
        context = model_context(menu["model"]["namespace"], menu["model"]["name"])
        written = write_grants(DirectoryStore(directory.resolve().parent), directory.resolve().name,
                               wrap_for(data_key, recipients, context=context))
    except (TinyMLOpsError, ValueError, KeyError, OSError) as exc:
        raise click.ClickException(f"cannot grant: {exc}") from exc
    for key in written:
        click.echo(f"wrote {key}")
