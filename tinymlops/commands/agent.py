"""`tinymlops agent`: the device agent's standalone (sideloaded) install and its status."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from tinymlops.agent.slots import ActiveSlot

STATE_DIR_HELP = "The device's state directory (pinned key, model slots)."


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_document(active: ActiveSlot, now: float) -> dict[str, Any]:
    """What `agent status --output json` prints of the active variant (times in RFC 3339, UTC).

    `stale_seconds`: how long ago the menu it came from expired (null: still current, or it never expires);
    the model keeps serving either way, but no newer signed menu reached this device."""
    from tinymlops.freshness import stale_seconds
    from tinymlops.timestamps import seconds

    expires = active.menu_expires
    return {"variant": active.variant["id"], "sha256": active.variant["sha256"], "menu_version": active.menu_version,
            "slot": active.slot, "since": _rfc3339(active.switched_at), "reason": active.reason,
            "menu_expires": expires, "stale_seconds": stale_seconds(seconds(expires) if expires else None, now)}


def _freshness_line(document: dict[str, Any]) -> str:
    if document["stale_seconds"] is not None:
        return (f"stale:  the menu expired at {document['menu_expires']} ({document['stale_seconds']:.0f} s ago); "
                "still serving, install a newer signed menu")
    return f"fresh:  menu current until {document['menu_expires']}" if document["menu_expires"] else (
        "fresh:  the menu never expires")


@click.group()
def agent() -> None:
    """The on-device agent: install verified variants, show what runs."""


@agent.command("install")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--state-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help=STATE_DIR_HELP)
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Publisher's public key (PEM); pinned at the first install, must match afterwards.")
@click.option("--device-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="This device's X25519 key (PEM) for encrypted variants; kept in the state directory.")
@click.option("--identity", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="This device's Ed25519 identity key (PEM, `keys device` makes identity.pem), which signs its "
                   "reports; kept in the state directory, never replaced by another.")
@click.option("--objective", type=click.Choice(["accuracy", "latency", "size", "energy", "balanced"]),
              default="accuracy", show_default=True, help="What the choice among runnable variants optimises.")
def install(directory: Path, state_dir: Path, pubkey: Path | None, device_key: Path | None, identity: Path | None,
            objective: str) -> None:
    """Install the best variant of DIRECTORY (a signed variant directory) on this device.

    Checks the menu signature against the pinned publisher key, refuses a
    downgrade, verifies the blob digest, loads it in a spare slot and runs its
    health check before switching; an encrypted variant is opened with the device
    key and decrypted in memory only. On failure the previous model keeps serving.
    """
    from tinymlops.agent.install import install_from_dir
    from tinymlops.errors import TinyMLOpsError

    try:
        result = install_from_dir(
            directory, state_dir, pubkey_pem=pubkey.read_bytes() if pubkey else None,
            device_key_pem=device_key.read_bytes() if device_key else None,
            identity_pem=identity.read_bytes() if identity else None, objective=objective,
        )
    except TinyMLOpsError as exc:
        raise click.ClickException(f"install refused, the previous model keeps serving: {exc}") from exc
    verb = "installed" if result.switched else "kept"
    click.echo(f"{verb} {result.variant_id} (menu v{result.menu_version}, slot {result.slot}): {result.reason}")


@agent.command("status")
@click.option("--state-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help=STATE_DIR_HELP)
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: for people; json: one object (active: null when nothing is installed).")
def status(state_dir: Path, output: str) -> None:
    """The active variant, the menu version it came from, why it was chosen, and whether it is stale."""
    import time

    from tinymlops.agent.slots import read_active
    from tinymlops.errors import TinyMLOpsError

    try:
        active = read_active(state_dir)
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps({"active": None if active is None else status_document(active, time.time())},
                              indent=2, sort_keys=True))
        return
    if active is None:
        click.echo("no variant installed")
        return
    when = _rfc3339(active.switched_at)
    click.echo(f"active: {active.variant['id']} (menu v{active.menu_version}, slot {active.slot}, "
               f"sha256 {active.variant['sha256'][:12]}…)")
    click.echo(f"since:  {when}")
    click.echo(f"why:    {active.reason}")
    click.echo(_freshness_line(status_document(active, time.time())))
