"""`tinymlops agent federate`: take part in a FederatedTraining as a Flower SuperNode while the policy allows."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import click

POLICY_FORBIDS_EXIT = 6  # the fleet's policy.federated does not allow training now (retry later)


def _read_context(path: Path) -> Any:
    """The device's context now; an unreadable one ends training (nothing says the policy still holds)."""
    from tinymlops.errors import SpecError
    from tinymlops.federated.participation import context_from_json

    try:
        return context_from_json(json.loads(path.read_bytes()), source=str(path))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: not a readable JSON device context ({exc})") from exc
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc


def _check_data(path: Path) -> None:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ("x", "y") if name not in data.files]
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: not a readable .npz file ({exc})", param_hint="--data") from exc
    if missing:
        raise click.BadParameter(f"{path}: training needs arrays x and y; missing {', '.join(missing)}",
                                 param_hint="--data")


@click.command("federate")
@click.option("--state-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The device's state directory: its identity key, its fleet's policy (policy.json).")
@click.option("--superlink", required=True, help="The SuperLink's Fleet API as HOST:PORT (the FederatedTraining's "
                                                 "status.superlink.address).")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The device's own training data (DATA.npz with x and y); read on the device, never sent.")
@click.option("--context", "context_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='The device\'s current context, kept up to date by its platform: {"battery_pct": 80 | null, '
                   '"charging": true, "network": "wifi" | "metered" | "offline", "idle": true}; re-read while '
                   "training.")
@click.option("--root-certificates", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA certificate (PEM) the SuperLink's certificate must chain to; required for node "
                   "authentication.")
@click.option("--insecure", is_flag=True, help="Connect without TLS and without node authentication (tests only).")
@click.option("--poll-seconds", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="How often the policy is checked against the context while the SuperNode runs.")
def federate_command(state_dir: Path, superlink: str, data: Path, context_file: Path,
                     root_certificates: Path | None, insecure: bool, poll_seconds: float) -> None:
    """Run a Flower SuperNode for this device while the fleet's policy allows it.

    Checks policy.federated (consent, charging, unmetered network, idle) against
    the context file first and exits 6 naming every unmet rule; otherwise starts
    flower-supernode, authenticated with the device's Flower node key (made once
    and signed by its identity key: flower-node.json is what the Device's
    tinymlops.io/flower-node-key annotation must carry), and stops it as soon as
    the policy no longer holds, or on SIGTERM/SIGINT.
    """
    from tinymlops.agent.standalone import read_policy
    from tinymlops.errors import TinyMLOpsError
    from tinymlops.federated.nodekey import ensure_node_key
    from tinymlops.federated.participation import ParticipationPolicy, may_train
    from tinymlops.federated.supernode import run_supernode, runtime_port, supernode_command
    from tinymlops.signing import IDENTITY_KEY_FILE, load_private_key

    if insecure == (root_certificates is not None):
        raise click.UsageError("give --root-certificates (TLS, authenticated) or --insecure, not both or neither")
    _check_data(data)
    try:
        policy = ParticipationPolicy.from_policy(read_policy(state_dir))
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc

    def check() -> Any:
        context, idle = _read_context(context_file)
        return may_train(policy, context, idle=idle)

    node_key = None  # made and bound even when training must wait: provisioning needs the binding
    if not insecure:
        identity_path = state_dir / IDENTITY_KEY_FILE
        if not identity_path.is_file():
            raise click.ClickException(f"{identity_path}: no identity key; install with --identity first (the "
                                       "Flower node key is bound to it)")
        try:
            node_key = ensure_node_key(state_dir, load_private_key(identity_path.read_bytes(),
                                                                   source=str(identity_path))).private_key_path
        except TinyMLOpsError as exc:
            raise click.ClickException(str(exc)) from exc
    verdict = check()
    if not verdict.allowed:
        click.echo(f"not training: {verdict.reason}", err=True)
        raise SystemExit(POLICY_FORBIDS_EXIT)
    stopping: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda received, _frame: stopping.append(received))
    command = supernode_command(superlink, data, root_certificates=root_certificates, node_key=node_key,
                                runtime_port=runtime_port())
    click.echo(f"training with {superlink} ({verdict.reason})")
    end = run_supernode(command, state_dir, check, poll_s=poll_seconds, stop=lambda: bool(stopping))
    if end.exit_code:
        raise click.ClickException(end.reason)
    click.echo(end.reason)
