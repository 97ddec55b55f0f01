"""A licensed standalone device end to end through the CLI: issue, install, metered serving, refusal (exit 5),
status, export, reconcile (exit 0 clean, 4 named anomaly); and the meter's crash safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.agent.licensed import export_usage, open_meter
from tinymlops.agent.metering import CHECKPOINTS, METER, RECEIPTS
from tinymlops.cli import main
from tinymlops.layout import model_prefix
from tinymlops.licensing import chain
from tinymlops.licensing.reconcile import reconcile
from tinymlops.model.digits import DigitsArtifacts
from tinymlops.publish import write_variant_dir
from tinymlops.signing import private_key_pem, public_key_pem
from tinymlops.store import DirectoryStore, sha256_bytes
from tinymlops.variants import build_variants

KEY = Ed25519PrivateKey.generate()
IDENTITY = Ed25519PrivateKey.generate()
EXPIRES = "2100-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> Path:
    root = tmp_path_factory.mktemp("store")
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                          signing_key=KEY, model_ref=("ns", "digits"), precisions=("fp32",))
    blobs = {v["sha256"]: (root / "models/ns/digits/blobs" / v["sha256"]).read_bytes() for v in menu["variants"]}
    out = tmp_path_factory.mktemp("variants") / "digits"
    write_variant_dir(out, menu, blobs, KEY)
    return out


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def keys(tmp_path: Path) -> None:
    (tmp_path / "signing-key.pem").write_bytes(private_key_pem(KEY))
    (tmp_path / "pub.pem").write_bytes(public_key_pem(KEY.public_key()))
    (tmp_path / "identity.pem").write_bytes(private_key_pem(IDENTITY))
    (tmp_path / "identity.pub.pem").write_bytes(public_key_pem(IDENTITY.public_key()))


def issue(tmp_path: Path, variant_dir: Path, quota: int, name: str = "token", **extra: str) -> Path:
    digests = extra.pop("digest", sha256_bytes((variant_dir / "menu.json").read_bytes())).split(",")
    args = ["license", "issue", "--key", str(tmp_path / "signing-key.pem"), "--licensee", "acme",
            "--device-pubkey", str(tmp_path / "identity.pub.pem"), "--quota", str(quota),
            "--expires", extra.pop("expires", EXPIRES), "--out", str(tmp_path / name)]
    for digest in digests:
        args += ["--model-digest", digest]
    for option, value in extra.items():
        args += [f"--{option.replace('_', '-')}", value]
    result = run(*args)
    assert result.exit_code == 0, result.output
    return tmp_path / name


def install(tmp_path: Path, variant_dir: Path, token: Path) -> tuple[Path, Result]:
    state = tmp_path / "state"
    return state, run("agent", "install", str(variant_dir), "--state-dir", str(state), "--pubkey",
                      str(tmp_path / "pub.pem"), "--identity", str(tmp_path / "identity.pem"), "--license", str(token))


def infer(state: Path, tmp_path: Path, digits: DigitsArtifacts, n: int, offset: int = 0) -> Result:
    with np.load(digits.data_path) as npz:
        np.savez(tmp_path / "x.npz", x=npz["x"][offset:offset + n])
    return run("agent", "infer", "--state-dir", str(state), "--input", str(tmp_path / "x.npz"))


def test_a_licensed_device_serves_its_quota_then_refuses_and_reconciles(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:
    keys(tmp_path)
    state, installed = install(tmp_path, variant_dir, issue(tmp_path, variant_dir, 10))
    assert installed.exit_code == 0 and "licence" in installed.output and "10 inferences" in installed.output
    assert infer(state, tmp_path, digits, 6).exit_code == 0
    too_many = infer(state, tmp_path, digits, 6)
    assert too_many.exit_code == 5 and "4 of 10 left" in too_many.output
    assert infer(state, tmp_path, digits, 4).exit_code == 0
    refused = infer(state, tmp_path, digits, 1)
    assert refused.exit_code == 5
    assert "quota exhausted: 10 of 10 inferences used; reconnect to refill" in refused.output
    status = run("agent", "status", "--state-dir", str(state))
    assert status.exit_code == 0 and "active:" in status.output and "10 of 10 inferences used" in status.output
    assert "REFUSING: quota exhausted" in status.output
    exported = run("agent", "receipts", "--state-dir", str(state), "--out", str(tmp_path / "usage.json"))
    assert exported.exit_code == 0, exported.output
    clean = run("license", "reconcile", str(tmp_path / "usage.json"), "--device-pubkey",
                str(tmp_path / "identity.pub.pem"), "--pubkey", str(tmp_path / "pub.pem"), "--output", "json",
                "--save-checkpoint", str(tmp_path / "last.b64"))
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.output)["usage"] == 10 and json.loads(clean.output)["receipts_verified"] == 10

    # Refill: a new licence (higher epoch) serves again, under its own token id in the chain.
    refill = issue(tmp_path, variant_dir, 5, "refill", epoch="2")
    assert run("agent", "install", str(variant_dir), "--state-dir", str(state), "--license", str(refill)).exit_code == 0
    backup = tmp_path / "backup"
    shutil.copytree(state, backup)  # what a customer might keep to re-use the refill
    assert infer(state, tmp_path, digits, 5).exit_code == 0
    assert run("agent", "receipts", "--state-dir", str(state), "--out", str(tmp_path / "u2.json")).exit_code == 0
    second = run("license", "reconcile", str(tmp_path / "u2.json"), "--device-pubkey",
                 str(tmp_path / "identity.pub.pem"), "--last-checkpoint", str(tmp_path / "last.b64"),
                 "--save-checkpoint", str(tmp_path / "last.b64"))
    assert second.exit_code == 0 and "5 inferences" in second.output, second.output

    # The backup comes back, and its counters are spent again: caught at the next reconcile.
    shutil.rmtree(state)
    shutil.copytree(backup, state)
    assert infer(state, tmp_path, digits, 5, offset=20).exit_code == 0  # other queries on the re-used counters
    assert run("agent", "receipts", "--state-dir", str(state), "--out", str(tmp_path / "u3.json")).exit_code == 0
    caught = run("license", "reconcile", str(tmp_path / "u3.json"), "--device-pubkey",
                 str(tmp_path / "identity.pub.pem"), "--last-checkpoint", str(tmp_path / "last.b64"))
    assert caught.exit_code == 4 and "ANOMALY rolled-back-counter" in caught.output

    # An edited receipt in an export is named.
    document = json.loads((tmp_path / "usage.json").read_text())
    raw = bytearray(__import__("base64").b64decode(document["receipts"]))
    raw[3] ^= 0x01
    document["receipts"] = __import__("base64").b64encode(bytes(raw)).decode()
    (tmp_path / "edited.json").write_text(json.dumps(document))
    edited = run("license", "reconcile", str(tmp_path / "edited.json"), "--device-pubkey",
                 str(tmp_path / "identity.pub.pem"))
    assert edited.exit_code == 4 and "ANOMALY edited-receipt" in edited.output

    statement = run("license", "usage", str(tmp_path / "usage.json"), str(tmp_path / "u3.json"), "--pubkey",
                    str(tmp_path / "pub.pem"), "--output", "csv")
    assert statement.exit_code == 0, statement.output
    assert statement.output.splitlines()[0] == "licensee,period,devices,inferences,refills,anomalies"


@pytest.mark.parametrize(("case", "needle"), [
    ("model", "covers menu sha256"), ("expired", "expired at"), ("foreign", "pinned publisher key")])
def test_bad_licences_are_refused_and_the_model_still_serves(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts, case: str, needle: str) -> None:
    keys(tmp_path)
    if case == "model":
        token = issue(tmp_path, variant_dir, 10, digest="00" * 32)
    elif case == "expired":
        token = issue(tmp_path, variant_dir, 10, expires="2001-01-01T00:00:00Z", not_before="2000-01-01T00:00:00Z")
    else:
        token = issue(tmp_path, variant_dir, 10)
        (tmp_path / "pub.pem").write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    state, installed = install(tmp_path, variant_dir, token)
    if case == "foreign":  # the stranger's key was pinned: the licence signed by KEY cannot hold, nor the menu
        assert installed.exit_code == 1
        return
    assert installed.exit_code == 1 and "licence refused, the model is installed" in installed.output
    assert needle in installed.output
    assert infer(state, tmp_path, digits, 3).exit_code == 0  # no licence took hold: serving as before


def test_a_licence_for_stable_and_canary_menus_serves_on_either(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:
    keys(tmp_path)
    menu = sha256_bytes((variant_dir / "menu.json").read_bytes())
    token = issue(tmp_path, variant_dir, 10, digest=f"{'00' * 32},{menu}")  # the device runs the second
    state, installed = install(tmp_path, variant_dir, token)
    assert installed.exit_code == 0, installed.output
    assert infer(state, tmp_path, digits, 3).exit_code == 0
    status = run("agent", "status", "--state-dir", str(state), "--output", "json")
    assert json.loads(status.output)["license"]["models"] == sorted(("00" * 32, menu))


def _meter_state(tmp_path: Path, variant_dir: Path, quota: int = 2000) -> Path:
    keys(tmp_path)
    state, installed = install(tmp_path, variant_dir, issue(tmp_path, variant_dir, quota))
    assert installed.exit_code == 0, installed.output
    return state


def test_a_crash_loses_no_counted_inference_and_never_corrupts_the_chain(tmp_path: Path, variant_dir: Path) -> None:
    state = _meter_state(tmp_path, variant_dir)
    meter = open_meter(state, 1e9)
    assert meter is not None
    meter.reserve, meter.seal_every = 8, 1000
    for i in range(11):  # the writer thread reserves the next block (on disk) once half of one is used
        meter.record(bytes([i]), b"out", 1e9)
        reserved_on_disk = json.loads((state / METER).read_bytes())["reserved"]
        assert meter.count <= meter.reserved <= reserved_on_disk <= meter.count + 8  # nothing served unreserved
    meter._drain()  # whatever the writer was doing has landed; then the power is cut, without close
    reserved = json.loads((state / METER).read_bytes())["reserved"]
    on_disk = (state / RECEIPTS).stat().st_size // 32
    assert on_disk < 11 <= reserved  # receipts reach the file once per half block: the last ones were lost
    with (state / RECEIPTS).open("r+b") as handle:
        handle.truncate(on_disk * 32 + 5)  # and a torn record was left behind
    reopened = open_meter(state, 1e9)
    assert reopened is not None and reopened.count == reserved and reopened.used == reserved  # all counted
    assert (state / RECEIPTS).stat().st_size == reserved * 32
    reopened.record(b"after", b"crash", 1e9)
    reopened.close(1e9)
    export = export_usage(state, 1e9)
    result = reconcile(export.checkpoints, IDENTITY.public_key(), receipts=export.receipts)
    assert result.clean and result.usage == reserved + 1 and result.voided == reserved - on_disk
    assert result.receipts_verified == reserved + 1


def test_a_torn_checkpoint_is_cut_and_sealed_again(tmp_path: Path, variant_dir: Path) -> None:
    state = _meter_state(tmp_path, variant_dir)
    meter = open_meter(state, 1e9)
    assert meter is not None
    meter.seal_every = 4
    for i in range(6):
        meter.record(bytes([i]), b"o", 1e9)
    meter.close(1e9)
    with (state / CHECKPOINTS).open("ab") as handle:
        handle.write(b"\x01" * 100)  # a crash in the middle of writing the next checkpoint
    export = export_usage(state, 1e9)
    assert [(c.start, c.end) for c in export.checkpoints] == [(0, 4), (4, 6)]
    assert reconcile(export.checkpoints, IDENTITY.public_key(), receipts=export.receipts).clean


def test_state_per_inference_is_one_receipt(tmp_path: Path, variant_dir: Path) -> None:
    state = _meter_state(tmp_path, variant_dir)
    meter = open_meter(state, 1e9)
    assert meter is not None
    before = sum(p.stat().st_size for p in state.iterdir() if p.name in (RECEIPTS, CHECKPOINTS))
    for i in range(500):
        meter.record(i.to_bytes(4, "big"), b"o", 1e9)
    meter.close(1e9)
    after = sum(p.stat().st_size for p in state.iterdir() if p.name in (RECEIPTS, CHECKPOINTS))
    assert (after - before) / 500 == chain.RECEIPT_BYTES <= 48


def test_deleting_meter_json_refuses_instead_of_serving_unmetered(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:
    keys(tmp_path)
    token = issue(tmp_path, variant_dir, 600)
    state, installed = install(tmp_path, variant_dir, token)
    assert installed.exit_code == 0, installed.output
    assert infer(state, tmp_path, digits, 7).exit_code == 0
    meter = open_meter(state, 1e9)
    assert meter is not None
    meter.seal(1e9)
    meter.close(1e9)
    assert infer(state, tmp_path, digits, 3).exit_code == 0  # 10 counted: 7 sealed, 3 pending
    (state / METER).unlink()
    refused = infer(state, tmp_path, digits, 1)
    assert refused.exit_code == 5 and "meter.json is missing" in refused.output
    assert "installed with a licence" in refused.output
    status = run("agent", "status", "--state-dir", str(state))
    assert status.exit_code == 0 and "REFUSED" in status.output and "meter.json is missing" in status.output
    # Installing the licence again rebuilds the meter: no counted inference is forgotten (a whole reservation
    # block beyond the receipts on disk counts as possibly served), and the chain continues.
    again = run("agent", "install", str(variant_dir), "--state-dir", str(state), "--license", str(token))
    assert again.exit_code == 0, again.output
    reopened = open_meter(state, 1e9)
    assert reopened is not None and reopened.used == 10 + 256 and reopened.count == 10 + 256
    reopened.close(1e9)
    assert infer(state, tmp_path, digits, 2).exit_code == 0
    export = export_usage(state, 1e9)
    result = reconcile(export.checkpoints, IDENTITY.public_key(), receipts=export.receipts)
    assert result.clean and result.usage == 268, result


def test_an_unlicensed_install_serves_unmetered(tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:
    keys(tmp_path)
    state = tmp_path / "state"
    installed = run("agent", "install", str(variant_dir), "--state-dir", str(state), "--pubkey",
                    str(tmp_path / "pub.pem"))
    assert installed.exit_code == 0, installed.output
    assert infer(state, tmp_path, digits, 3).exit_code == 0 and not (state / METER).exists()


def test_the_install_record_keeps_the_licence_across_model_switches(tmp_path: Path) -> None:
    from tinymlops.agent.slots import record_licence, recorded_licence, switch_to

    variant = {"id": "v1", "sha256": sha256_bytes(b"model")}
    switch_to(tmp_path, variant, b"model", menu_version=1, reason="install")
    assert recorded_licence(tmp_path) == []
    record_licence(tmp_path, ["v4.public.one"])
    switch_to(tmp_path, {**variant, "id": "v2"}, b"model", menu_version=2, reason="update")
    assert recorded_licence(tmp_path) == ["v4.public.one"]
