"""`tinymlops agent`: the device agent's standalone (sideloaded) install, its status, serving and its report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tinymlops.commands.inputs import read_inputs

if TYPE_CHECKING:
    from tinymlops.agent.slots import ActiveSlot

STATE_DIR_HELP = "The device's state directory (pinned key, model slots)."
LICENSE_REFUSED_EXIT = 5  # `agent infer`: the licence refuses (quota, validity, another menu); DESIGN §6


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
    """The on-device agent: install verified variants, show what runs, serve, show the next report."""


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
@click.option("--license", "license_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A licence token file (`tinymlops license issue` makes it), bound to this device's identity key and "
                   "the installed menu: verified now with the pinned publisher key; from then on every inference is "
                   "metered and refused (exit 5) when its quota or validity runs out.")
@click.option("--objective", type=click.Choice(["accuracy", "latency", "size", "energy", "balanced"]),
              default="accuracy", show_default=True, help="What the choice among runnable variants optimises.")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The device's telemetry policy: a JSON object like a DeviceFleet's spec.policy, e.g. "
                   '{"telemetry": {"drift": {"mode": "histograms+dp", "epsilon": 1.0}}}; kept in the state directory.')
def install(directory: Path, state_dir: Path, pubkey: Path | None, device_key: Path | None, identity: Path | None,
            license_file: Path | None, objective: str, policy_file: Path | None) -> None:
    """Install the best variant of DIRECTORY (a signed variant directory) on this device.

    Checks the menu signature against the pinned publisher key, refuses a
    downgrade, verifies the blob digest, loads it in a spare slot and runs its
    health check before switching; an encrypted variant is opened with the device
    key and decrypted in memory only. On failure the previous model keeps serving.
    """
    from tinymlops.agent.install import install_from_dir
    from tinymlops.agent.standalone import save_policy
    from tinymlops.errors import TinyMLOpsError

    try:
        policy = None if policy_file is None else json.loads(policy_file.read_bytes())
    except ValueError as exc:
        raise click.BadParameter(f"{policy_file}: not JSON ({exc})", param_hint="--policy") from exc
    if policy is not None and not isinstance(policy, dict):
        raise click.BadParameter(f"{policy_file}: not a JSON object", param_hint="--policy")
    try:
        result = install_from_dir(
            directory, state_dir, pubkey_pem=pubkey.read_bytes() if pubkey else None,
            device_key_pem=device_key.read_bytes() if device_key else None,
            identity_pem=identity.read_bytes() if identity else None, objective=objective,
        )
        if policy is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            save_policy(state_dir, policy)
    except TinyMLOpsError as exc:
        raise click.ClickException(f"install refused, the previous model keeps serving: {exc}") from exc
    verb = "installed" if result.switched else "kept"
    click.echo(f"{verb} {result.variant_id} (menu v{result.menu_version}, slot {result.slot}): {result.reason}")
    if license_file is not None:
        _install_license(state_dir, license_file)


def _install_license(state_dir: Path, license_file: Path) -> None:
    import time

    from tinymlops.agent.licensed import install_license
    from tinymlops.errors import TinyMLOpsError

    try:
        lic = install_license(state_dir, license_file.read_text(errors="replace"), time.time())
    except TinyMLOpsError as exc:
        raise click.ClickException(f"licence refused, the model is installed and serves as before: {exc}") from exc
    click.echo(f"licence {lic.token_id[:8]} for {lic.licensee}: {lic.quota:,} inferences until "
               f"{_rfc3339(lic.expires)} (epoch {lic.epoch})")


@agent.command("status")
@click.option("--state-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help=STATE_DIR_HELP)
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: for people; json: one object (active: null when nothing is installed).")
def status(state_dir: Path, output: str) -> None:
    """The active variant, the menu version it came from, why it was chosen, whether it is stale, and per
    client of the model whether an extraction alarm is raised."""
    import time

    from tinymlops.agent.slots import read_active
    from tinymlops.agent.standalone import extraction_status
    from tinymlops.errors import TinyMLOpsError

    try:
        active = read_active(state_dir)
        clients = extraction_status(state_dir)
        licence = _licence_status(state_dir, time.time())
        personal = _personal_status(state_dir) if active is not None else None
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps({"active": None if active is None else status_document(active, time.time()),
                               "extraction": {"clients": clients}, "license": licence,
                               "personalisation": personal}, indent=2, sort_keys=True))
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
    for entry in clients:
        state = (f"EXTRACTION ALARM since {_rfc3339(entry['since'])} (W {entry['w']:.3f})" if entry["alarm"]
                 else "no extraction alarm")
        click.echo(f"client: {entry['client']}: {state}")
    if licence is not None:
        click.echo(_licence_line(licence))
    if personal is not None:
        serving = "its own last layer serves" if personal["serving"] else "the base serves"
        click.echo(f"personalised: {'yes' if personal['serving'] else 'no'} ({serving}): {personal['why']}")


def _personal_status(state_dir: Path) -> dict[str, Any] | None:
    """The device's last personalisation and whether its head serves (None: never personalised)."""
    from tinymlops.agent.personalise import status as personal_status
    from tinymlops.agent.standalone import open_agent

    return personal_status(state_dir, open_agent(state_dir))


def _licence_status(state_dir: Path, now: float) -> dict[str, Any] | None:
    """The licence and its usage (None: unlicensed device); a licence that does not verify is shown, not raised."""
    from tinymlops.agent.metering import read_meter
    from tinymlops.errors import LicenseRefusedError

    try:
        if read_meter(state_dir) is None:
            return None
        from tinymlops.agent.licensed import licence_status

        return licence_status(state_dir, now)
    except LicenseRefusedError as exc:
        return {"refusal": str(exc)}


def _licence_line(licence: dict[str, Any]) -> str:
    if "licensee" not in licence:
        return f"licence: REFUSED: {licence['refusal']}"
    line = (f"licence: {licence['licensee']} (token {licence['token_id'][:8]}, epoch {licence['epoch']}): "
            f"{licence['used']:,} of {licence['quota']:,} inferences used, valid until {licence['expires']}; "
            f"{licence['sealed']:,} sealed in checkpoints, {licence['pending']:,} pending")
    if licence["refusal"]:
        line += f"\nlicence: REFUSING: {licence['refusal']}"
    if licence["clock_set_back_seconds"]:
        line += (f"\nlicence: the clock reads {licence['clock_set_back_seconds']:.0f} s before the latest time seen; "
                 "validity is judged by the latest")
    return line


@agent.command("infer")
@click.option("--state-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help=STATE_DIR_HELP)
@click.option("--input", "input_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A .npz file whose array `x` (float32, batch first) holds the inputs.")
@click.option("--client", default="default", show_default=True,
              help="The application asking (an app id, 1..128 characters): the extraction monitor watches each "
                   "client's queries apart, and the fleet's output policy may treat a client under alarm apart.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: one line per input; json: the variant, each input's class and its scores.")
def infer_command(state_dir: Path, input_file: Path, client: str, output: str) -> None:
    """Run the active variant on each input of X.npz, as the device's application would.

    Records telemetry in the state directory as a resident agent would (counts,
    latencies, and the drift histograms' counts when the policy asks for them:
    never the inputs or the outputs), feeds the client's extraction monitor, and
    prints the predictions as the output policy lets that client see them.
    """

    from tinymlops.agent.standalone import infer
    from tinymlops.errors import TinyMLOpsError

    x = read_inputs(input_file)
    from tinymlops.errors import LicenseRefusedError

    try:
        predictions = infer(state_dir, x, client)
    except LicenseRefusedError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(LICENSE_REFUSED_EXIT) from exc
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if predictions.post_module is not None:
        _echo_post_processed(predictions, output, len(x), state_dir)
        return
    confidence, classes = predictions.confidence_and_class()
    if output == "json":
        click.echo(json.dumps({"variant": predictions.variant, "client": predictions.client,
                               "extraction_alarm": predictions.extraction_alarm,
                               "personalised": predictions.personalised, "predictions": [
            {"class": int(c), "confidence": round(float(p), 6), "scores": [float(v) for v in row]}
            for c, p, row in zip(classes, confidence, predictions.scores, strict=True)]}, indent=2))
        return
    for i, (c, p) in enumerate(zip(classes, confidence, strict=True)):
        click.echo(f"{i}: class {int(c)} (confidence {float(p):.3f})")
    own = " with this device's own last layer (agent personalise)" if predictions.personalised else ""
    click.echo(f"{len(x)} inference(s) on {predictions.variant}{own} for client {client}, recorded in {state_dir}")
    if predictions.extraction_alarm:
        click.echo(f"client {client}: extraction alarm raised (see `tinymlops agent status`)")


def _echo_post_processed(predictions: Any, output: str, count: int, state_dir: Path) -> None:
    """What the variant's post module returned, in its own layout (docs/wasm.md), not read as class scores."""
    post = str(predictions.post_module)
    if output == "json":
        click.echo(json.dumps({"variant": predictions.variant, "client": predictions.client,
                               "extraction_alarm": predictions.extraction_alarm, "post_module": post,
                               "predictions": [{"outputs": [float(v) for v in row]} for row in predictions.scores]},
                              indent=2))
        return
    for i, row in enumerate(predictions.scores):
        click.echo(f"{i}: post module outputs {', '.join(f'{float(v):.4g}' for v in row)}")
    click.echo(f"{count} inference(s) on {predictions.variant} (post module {post[:12]}…) for client "
               f"{predictions.client}, recorded in {state_dir}")
    if predictions.extraction_alarm:
        click.echo(f"client {predictions.client}: extraction alarm raised (see `tinymlops agent status`)")


@agent.command("report")
@click.option("--state-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help=STATE_DIR_HELP)
@click.option("--namespace", default="default", show_default=True, help="The namespace the report names.")
@click.option("--fleet", default="standalone", show_default=True, help="The fleet the report names.")
def report_command(state_dir: Path, namespace: str, fleet: str) -> None:
    """Print the next report exactly as it would be uploaded: the signed JSON envelope.

    Signed with the device's identity key (identity.pem in the state directory) and
    numbered from its report-seq file; what it reports stays recorded, since nothing
    is uploaded. Without an identity key it says so and exits 1.
    """
    from tinymlops.agent.standalone import next_report
    from tinymlops.errors import TinyMLOpsError

    try:
        signed = next_report(state_dir, namespace=namespace, fleet=fleet)
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(signed.to_json(), sort_keys=True))


@agent.command("receipts")
@click.option("--state-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help=STATE_DIR_HELP)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the usage export (JSON), for `tinymlops license reconcile`.")
@click.option("--force", is_flag=True, help="Replace --out when it exists and is not a usage export.")
def receipts_command(state_dir: Path, out: Path, force: bool) -> None:
    """Export the usage chain and checkpoints for reconciling.

    Seals the receipts since the last checkpoint first (signed with the identity key),
    then writes the licence tokens, every checkpoint and every receipt (32 bytes per
    inference: hashes of inputs and outputs, never the data) to --out.
    """
    import time

    from tinymlops.agent.licensed import export_usage
    from tinymlops.commands.outputs import check_output_files
    from tinymlops.errors import TinyMLOpsError
    from tinymlops.licensing.export import FORMAT

    def ours(path: Path) -> bool:
        try:
            return bool(json.loads(path.read_bytes()).get("format") == FORMAT)
        except (OSError, ValueError, AttributeError):
            return False

    check_output_files([out], force=force, option="--out", ours=ours)
    try:
        export = export_usage(state_dir, time.time())
    except TinyMLOpsError as exc:
        raise click.ClickException(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(export.to_json(), indent=1) + "\n")
    counted = export.checkpoints[-1].end if export.checkpoints else 0
    click.echo(f"{counted:,} inferences in {len(export.checkpoints)} checkpoint(s), "
               f"{len(export.receipts.data) // 32:,} receipts, written to {out}")


def _register_federate() -> None:
    from tinymlops.commands.federate import federate_command

    agent.add_command(federate_command)


_register_federate()  # `agent federate` lives in its own module (Flower's SuperNode, the participation policy)


def _register_personalise() -> None:
    """`agent personalise` lives in its own module (commands/personalise.py)."""
    from tinymlops.commands.personalise import personalise_command

    agent.add_command(personalise_command)


_register_personalise()
