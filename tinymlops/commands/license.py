"""`tinymlops license`: issue licence tokens, reconcile a device's usage export, print a usage statement.

Usable without Kubernetes: each command reads and writes files.  `reconcile`
exits 0 when the export is clean and 4 when it names an anomaly.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from tinymlops.licensing.export import UsageExport
    from tinymlops.licensing.reconcile import Reconciliation
    from tinymlops.licensing.token import License

ANOMALY_EXIT = 4
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def license() -> None:  # noqa: A001 (the command's name)
    """Offline pay-per-query: licence tokens, usage reconciliation and statements."""


def _public_key(path: Path, option: str) -> Ed25519PublicKey:
    """A PEM public key, or the raw key in base64 (as a Device annotation holds it)."""
    from tinymlops.errors import SignatureError
    from tinymlops.signing import load_public_key, load_public_key_base64

    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return load_public_key(data, source=str(path))
        return load_public_key_base64(data.decode("ascii", errors="replace"), source=str(path))
    except SignatureError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


def _rfc3339_option(value: str, option: str) -> float:
    from tinymlops.timestamps import seconds

    try:
        return seconds(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an RFC 3339 time with a zone ({exc})", param_hint=option) from exc


@license.command("issue")
@click.option("--key", required=True, type=FILE, help="The publisher's signing key (PEM), the one devices pinned.")
@click.option("--licensee", required=True, help="Who the licence is for (billed per licensee).")
@click.option("--device-pubkey", required=True, type=FILE,
              help="The device's identity public key: identity.pub.pem, or the raw key in base64.")
@click.option("--model-digest", required=True, multiple=True,
              help="sha256 (hex) of the exact menu.json bytes the licence covers; repeat it to cover several "
                   "revisions (a fleet's stable and canary menus) with one allowance.")
@click.option("--quota", required=True, type=click.IntRange(min=1), help="Inferences the licence allows.")
@click.option("--expires", required=True, help="End of validity, RFC 3339 (e.g. 2027-01-01T00:00:00Z).")
@click.option("--not-before", default=None, help="Start of validity, RFC 3339 [default: now].")
@click.option("--epoch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Licence epoch: a refill issues a higher one; a device never accepts a lower one.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The token file.")
@click.option("--force", is_flag=True, help="Replace --out when it exists.")
def issue(key: Path, licensee: str, device_pubkey: Path, model_digest: tuple[str, ...], quota: int, expires: str,
          not_before: str | None, epoch: int, out: Path, force: bool) -> None:
    """A PASETO v4.public licence token bound to a device identity and one or more menu digests."""
    import time

    from tinymlops.commands.outputs import check_output_files
    from tinymlops.errors import SignatureError
    from tinymlops.licensing.token import issue_token, new_license
    from tinymlops.signing import load_private_key

    check_output_files([out], force=force, option="--out", ours=lambda p: p.read_bytes().startswith(b"v4.public."))
    try:
        signing_key = load_private_key(key.read_bytes(), source=str(key))
    except SignatureError as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from exc
    start = _rfc3339_option(not_before, "--not-before") if not_before else time.time()
    try:
        lic = new_license(licensee=licensee, device=_public_key(device_pubkey, "--device-pubkey"),
                          models=[m.strip().lower() for m in model_digest], quota=quota, not_before=start,
                          expires=_rfc3339_option(expires, "--expires"), epoch=epoch, issued_at=time.time())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(issue_token(lic, signing_key) + "\n")
    click.echo(f"licence {lic.token_id[:8]} for {licensee}: {quota:,} inferences, menu "
               f"{', '.join(m[:12] + '…' for m in lic.models)}, "
               f"until {expires}; written to {out}")


def _read_export(path: Path) -> UsageExport:
    from tinymlops.errors import ReceiptsError
    from tinymlops.licensing.export import from_json

    try:
        return from_json(json.loads(path.read_bytes()), where=str(path))
    except ValueError as exc:
        if isinstance(exc, ReceiptsError):
            raise click.ClickException(str(exc)) from exc
        raise click.ClickException(f"{path}: not JSON ({exc})") from exc
    except ReceiptsError as exc:
        raise click.ClickException(str(exc)) from exc


def _licences(export: UsageExport, publisher: Ed25519PublicKey) -> tuple[list[License], list[str]]:
    """The export's licence tokens that verify under `publisher`, and what is wrong with the others."""
    from tinymlops.errors import LicenseError
    from tinymlops.licensing.token import read_license

    good, bad = [], []
    for index, token in enumerate(export.licenses):
        try:
            good.append(read_license(token, publisher))
        except LicenseError as exc:
            bad.append(f"licenses[{index}]: {exc}")
    return good, bad


@license.command("reconcile")
@click.argument("export_file", metavar="FILE", type=FILE)
@click.option("--device-pubkey", required=True, type=FILE,
              help="The device's identity public key (identity.pub.pem, or the raw key in base64).")
@click.option("--last-checkpoint", type=FILE,
              help="The last checkpoint accepted from this device (base64, as --save-checkpoint writes it).")
@click.option("--pubkey", type=FILE, help="The publisher's public key: verify the export's licences and check "
                                          "usage against their quotas.")
@click.option("--save-checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the last accepted checkpoint here, for the next reconcile's --last-checkpoint.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def reconcile_command(export_file: Path, device_pubkey: Path, last_checkpoint: Path | None, pubkey: Path | None,
                      save_checkpoint: Path | None, output: str) -> None:
    """Verify a usage export (`agent receipts --out FILE`); exit 0 clean, 4 when an anomaly is named."""
    from tinymlops.errors import ReceiptsError
    from tinymlops.licensing.checkpoint import from_base64
    from tinymlops.licensing.reconcile import after, reconcile

    if save_checkpoint is not None:
        from tinymlops.commands.outputs import check_output_files

        check_output_files([save_checkpoint], force=False, option="--save-checkpoint", ours=_is_checkpoint_file)
    export = _read_export(export_file)
    device = _public_key(device_pubkey, "--device-pubkey")
    try:
        last = from_base64(last_checkpoint.read_text(), where=str(last_checkpoint)) if last_checkpoint else None
    except ReceiptsError as exc:
        raise click.BadParameter(str(exc), param_hint="--last-checkpoint") from exc
    quotas: dict[str, int] | None = None
    refused: list[str] = []
    if pubkey is not None:
        licences, refused = _licences(export, _public_key(pubkey, "--pubkey"))
        quotas = {lic.token_id: lic.quota for lic in licences}
    result = reconcile(after(export.checkpoints, last), device, last=last, receipts=export.receipts, quotas=quotas)
    if save_checkpoint is not None and result.last is not None:
        save_checkpoint.write_text(result.last.to_base64() + "\n")
    _print_reconciliation(result, refused, output)
    if not result.clean or refused:
        raise SystemExit(ANOMALY_EXIT)


def _is_checkpoint_file(path: Path) -> bool:
    """A previous --save-checkpoint output (one base64 checkpoint), which may be replaced."""
    from tinymlops.errors import ReceiptsError
    from tinymlops.licensing.checkpoint import from_base64

    try:
        from_base64(path.read_text(errors="replace"))
    except (OSError, ReceiptsError):
        return False
    return True


def _print_reconciliation(result: Reconciliation, refused: list[str], output: str) -> None:
    document: dict[str, Any] = {
        "clean": result.clean and not refused, "usage": result.usage, "checkpoints": len(result.accepted),
        "receipts_verified": result.receipts_verified, "voided": result.voided,
        "per_token": result.per_token, "anomalies": [a.to_json() for a in result.anomalies],
        "refused_licenses": refused, "last_checkpoint": result.last.to_base64() if result.last else None}
    if output == "json":
        click.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    click.echo(f"{result.usage:,} inferences in {len(result.accepted)} checkpoint(s); {result.receipts_verified:,} "
               f"receipts verified against their heads and roots ({result.voided:,} voided by a crash, counted)")
    for token, used in sorted(result.per_token.items()):
        click.echo(f"  token {token[:8]}: {used:,}")
    for anomaly in result.anomalies:
        click.echo(f"ANOMALY {anomaly.kind}: {anomaly.message}")
    for line in refused:
        click.echo(f"ANOMALY licence refused: {line}")
    if document["clean"]:
        click.echo("clean")


@license.command("usage")
@click.argument("exports", metavar="EXPORT...", nargs=-1, required=True, type=FILE)
@click.option("--pubkey", required=True, type=FILE,
              help="The publisher's public key: only licences it signed are billed, each to its licensee.")
@click.option("--period", type=click.Choice(["day", "month"]), default="month", show_default=True)
@click.option("--output", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
def usage_command(exports: tuple[Path, ...], pubkey: Path, period: str, output: str) -> None:
    """A usage statement per licensee and period (inferences, refills, anomalies) from devices' usage exports.

    Each export's checkpoints are verified under the device key its licences are bound to (never the key
    the export names itself), and reconciled as `license reconcile` does."""
    from tinymlops.licensing.reconcile import reconcile
    from tinymlops.licensing.statement import CSV_COLUMNS, DeviceUsage, statement
    from tinymlops.signing import load_public_key_base64

    publisher = _public_key(pubkey, "--pubkey")
    usages = []
    for path in exports:
        export = _read_export(path)
        licences, refused = _licences(export, publisher)
        if not licences:
            raise click.ClickException(f"{path}: no licence in it verifies under --pubkey ({'; '.join(refused)})")
        device = load_public_key_base64(licences[-1].device, source=f"{path}: licence device")
        result = reconcile(export.checkpoints, device, receipts=export.receipts,
                           quotas={lic.token_id: lic.quota for lic in licences})
        usages.append(DeviceUsage(licences[-1].device, licences, result))
    rows = statement(usages, period)
    if output == "json":
        click.echo(json.dumps({"period": period, "rows": [r.to_json() for r in rows]}, indent=2))
    elif output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(r.csv_values() for r in rows)
        sys.stdout.write(buffer.getvalue())
    else:
        for r in rows:
            anomalies = ", ".join(f"{k} {v}" for k, v in sorted(r.anomalies.items())) or "none"
            click.echo(f"{r.licensee}  {r.period}  {len(r.devices)} device(s)  {r.inferences:,} inferences  "
                       f"{r.refills} refill(s)  anomalies: {anomalies}")
