"""`tinymlops agent personalise`: fit the installed model's last layer on this device's own labelled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command("personalise")
@click.option("--state-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The device's state directory (pinned key, model slots).")
@click.option("--data", "data_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A .npz file with this device's labelled samples: `x` (float32, batch first, the model's input) "
                   "and `y` (integer classes). Read here, never stored or uploaded.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: for people; json: one object (before/after local validation accuracy, used, reason).")
def personalise_command(state_dir: Path, data_file: Path, output: str) -> None:
    """Fit the active variant's last layer on this device's labelled samples (X.npz) and keep it here.

    The signed variant stays as installed (its digest and health check hold); a
    share of the samples is held out, and the device's own head serves only when
    it beats the base there by the policy's minImprovement (default 2 points).
    Prints the local validation accuracy before and after, and whether the head
    is used and why. The head never leaves the device: reports carry only
    `personalised: true/false`. A new variant or revision makes it stale.
    """
    import numpy as np

    from tinymlops.agent.personalise import personalise_device
    from tinymlops.agent.standalone import open_agent
    from tinymlops.errors import TinyMLOpsError

    try:
        with np.load(data_file, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise click.BadParameter(f"{data_file}: has no array `x` (found: {', '.join(npz.files) or 'none'})",
                                         param_hint="--data")
            x, y = npz["x"], (npz["y"] if "y" in npz.files else None)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{data_file}: not a readable .npz file ({exc})", param_hint="--data") from exc
    try:
        agent = open_agent(state_dir)
        fit = personalise_device(state_dir, agent, x, y, source=str(data_file))
    except TinyMLOpsError as exc:
        raise click.ClickException(f"personalisation refused, the base keeps serving: {exc}") from exc
    assert agent.active is not None
    outcome = fit.outcome
    document: dict[str, Any] = {
        "variant": agent.active.variant_id, "sha256": agent.active.sha256, "used": outcome.used,
        "reason": outcome.reason, "base_accuracy": round(outcome.base_accuracy, 6),
        "personal_accuracy": round(outcome.personal_accuracy, 6), "train_samples": outcome.train_samples,
        "validation_samples": outcome.validation_samples, "fit_ms": round(fit.fit_ms, 3),
        "head_bytes": fit.head_bytes}
    if output == "json":
        click.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    click.echo(f"variant:  {document['variant']} (sha256 {agent.active.sha256[:12]}…)")
    click.echo(f"samples:  {outcome.train_samples} to fit, {outcome.validation_samples} held out")
    click.echo(f"local validation accuracy: base {outcome.base_accuracy:.1%}, personalised "
               f"{outcome.personal_accuracy:.1%}")
    if outcome.used:
        click.echo(f"used: {outcome.reason}; fit in {fit.fit_ms:.0f} ms, head {fit.head_bytes:,} bytes kept in "
                   f"{state_dir}, never uploaded")
    else:
        click.echo(outcome.reason)
