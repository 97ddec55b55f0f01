"""`tinymlops keys` and `tinymlops variants`: build, verify (exit codes), sample model, what --out may hold."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from tinymlops.cli import main


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    result = CliRunner().invoke(main, ["variants", "digits", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    return out


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "generate", "--out", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "signing-key.pem").stat().st_mode & 0o077 == 0
    again = runner.invoke(main, ["keys", "generate", "--out", str(tmp_path)])
    assert again.exit_code != 0 and "--force" in again.output


def test_build_then_verify_then_tamper(sample: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "generate", "--out", str(tmp_path / "keys")]).exit_code == 0
    out = tmp_path / "variants"
    built = runner.invoke(main, [
        "variants", "build", str(sample / "model.onnx"), "--data", str(sample / "data.npz"), "--out", str(out),
        "--key", str(tmp_path / "keys" / "signing-key.pem"), "--menu-version", "2", "--name", "digits",
    ])
    assert built.exit_code == 0, built.output
    assert "int8-static" in built.output and (out / "menu.sig").is_file()
    pubkey = str(tmp_path / "keys" / "signing-key.pub.pem")
    verified = runner.invoke(main, ["variants", "verify", str(out), "--pubkey", pubkey])
    assert verified.exit_code == 0, verified.output
    assert "OK" in verified.output and "current until " in verified.output  # a year by default
    shipped = runner.invoke(main, ["variants", "verify", str(out)])
    assert shipped.exit_code == 0 and "shipped in the directory" in shipped.output

    blob = next((out / "blobs").iterdir())
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    tampered = runner.invoke(main, ["variants", "verify", str(out), "--pubkey", pubkey])
    assert tampered.exit_code != 0
    assert "verification failed" in tampered.output and blob.name[:12] in tampered.output


def test_build_names_an_invalid_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nonsense")
    key_dir = tmp_path / "keys"
    result = CliRunner(env={"TINYMLOPS_KEY_DIR": str(key_dir)}).invoke(
        main, ["variants", "build", str(bad), "--out", str(tmp_path / "out"), "--precisions", "fp32"]
    )
    assert result.exit_code != 0 and f"model {bad}: not a valid ONNX model" in result.output
    assert (key_dir / "signing-key.pem").is_file()  # the default key is created on first use


def _build(sample: Path, out: Path | str, *extra: str, key_dir: Path) -> Result:
    return CliRunner(env={"TINYMLOPS_KEY_DIR": str(key_dir)}).invoke(main, [
        "variants", "build", str(sample / "model.onnx"), "--data", str(sample / "data.npz"), "--out", str(out),
        "--precisions", "fp32", *extra,
    ])


def test_build_refuses_a_directory_that_holds_other_files(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "work"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"the user's model")
    (out / "notes.txt").write_text("unrelated")
    refused = _build(sample, out, key_dir=tmp_path / "keys")
    assert refused.exit_code == 1, refused.output
    assert f"--out {out}: not empty" in refused.output and "model.onnx, notes.txt" in refused.output
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "notes.txt"]
    assert not (tmp_path / "keys").exists()  # refused before anything was made

    forced = _build(sample, out, "--force", key_dir=tmp_path / "keys")
    assert forced.exit_code == 0, forced.output
    assert (out / "model.onnx").read_bytes() == b"the user's model" and (out / "notes.txt").read_text() == "unrelated"
    assert {"menu.json", "menu.sig", "signing-key.pub.pem", "blobs"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_force_never_replaces_a_name_that_is_not_ours(sample: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "keys").mkdir(parents=True)
    (work / "keys" / "signing-key.pem").write_text("the user's key")
    monkeypatch.chdir(work)  # `--out .`, as the user typed it
    for extra in ((), ("--force",)):
        refused = _build(sample, ".", *extra, key_dir=tmp_path / "default-keys")
        assert refused.exit_code == 1 and "keys there would be replaced" in refused.output, refused.output
    assert (work / "keys" / "signing-key.pem").read_text() == "the user's key"
    assert sorted(p.name for p in work.iterdir()) == ["keys"]


def test_a_previous_variant_directory_is_replaced(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "variants"
    key_dir = tmp_path / "keys"
    first = _build(sample, out, "--menu-version", "1", key_dir=key_dir)
    assert first.exit_code == 0, first.output
    (out / "keys").mkdir()  # as an encrypted build leaves it: ours, and stale once a plain build replaces it
    again = _build(sample, out, "--menu-version", "2", key_dir=key_dir)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "menu.json").read_bytes())["version"] == 2 and not (out / "keys").exists()
    verified = CliRunner().invoke(main, ["variants", "verify", str(out), "--pubkey",
                                         str(key_dir / "signing-key.pub.pem")])
    assert verified.exit_code == 0, verified.output


def test_variant_dir_entries_are_what_a_build_writes() -> None:
    from tinymlops.commands.variants import VARIANT_DIR_ENTRIES
    from tinymlops.layout import BLOBS_DIR, KEYS_DIR, MENU_FILE, MENU_SIGNATURE_FILE
    from tinymlops.signing import PUBLIC_KEY_FILE

    assert set(VARIANT_DIR_ENTRIES) == {MENU_FILE, MENU_SIGNATURE_FILE, BLOBS_DIR, KEYS_DIR, PUBLIC_KEY_FILE}


def test_the_data_key_file_is_not_overwritten(sample: Path, tmp_path: Path) -> None:
    existing = tmp_path / "data.key"
    existing.write_text("an older model's data key")
    result = _build(sample, tmp_path / "out", "--data-key-out", str(existing), key_dir=tmp_path / "keys")
    assert result.exit_code == 1 and f"--data-key-out: {existing} exists" in result.output
    assert existing.read_text() == "an older model's data key" and not (tmp_path / "out").exists()


def test_without_data_a_calibrated_variant_needs_to_be_asked_for(sample: Path, tmp_path: Path) -> None:
    runner = CliRunner(env={"TINYMLOPS_KEY_DIR": str(tmp_path / "keys")})
    args = ["variants", "build", str(sample / "model.onnx"), "--out", str(tmp_path / "out")]
    refused = runner.invoke(main, args)
    assert refused.exit_code == 2
    assert "int8-static (from --precisions int8) is calibrated on --data" in refused.output
    assert "--synthetic-data" in refused.output and not (tmp_path / "out").exists()

    built = runner.invoke(main, [*args, "--synthetic-data", "--output", "json"])
    assert built.exit_code == 0, built.output
    document = json.loads(built.stdout)
    assert document["eval_data"] == "synthetic"
    assert {v["metrics"]["eval_data"] for v in document["menu"]["variants"]} == {"synthetic"}
    assert all("accuracy" not in v["metrics"] and "not accuracy" in v["reason"] for v in document["menu"]["variants"])

    table = runner.invoke(main, ["variants", "verify", str(tmp_path / "out")])
    assert table.exit_code == 0 and "agree % (synthetic)" in table.output and "acc %" not in table.output
    assert "NOT accuracy" in table.output


def test_data_given_as_npy_names_the_format(sample: Path, tmp_path: Path) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, np.load(sample / "data.npz")["x"])
    result = CliRunner(env={"TINYMLOPS_KEY_DIR": str(tmp_path / "keys")}).invoke(main, [
        "variants", "build", str(sample / "model.onnx"), "--data", str(npy), "--out", str(tmp_path / "out"),
    ])
    assert result.exit_code == 1 and "TypeError" not in result.output
    assert "a .npy file" in result.output and "array `x` (float32, batch first)" in result.output


def test_precision_flags_round_trip_and_errors_name_the_flag(sample: Path, tmp_path: Path) -> None:
    result = _build(sample, tmp_path / "out", "--precisions", "fp8", key_dir=tmp_path / "keys")
    assert result.exit_code == 2 and "--precisions: 'fp8' has no transform" in result.output
    assert "spec." not in result.output
    twice = _build(sample, tmp_path / "out", "--precisions", "int8,int8-static", key_dir=tmp_path / "keys")
    assert twice.exit_code == 2 and "--precisions: ['int8', 'int8'] lists a value twice" in twice.output
    target = _build(sample, tmp_path / "out", "--targets", "riscv", key_dir=tmp_path / "keys")
    assert target.exit_code == 2 and "--targets: 'riscv' is not one of" in target.output


def test_build_and_verify_print_json(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    built = _build(sample, out, "--precisions", "int8-static", "--output", "json", key_dir=tmp_path / "keys")
    assert built.exit_code == 0, built.output
    document = json.loads(built.stdout)
    assert document["directory"] == str(out) and document["eval_data"] == "labelled"
    assert [v["id"] for v in document["menu"]["variants"]] == ["int8-static"]
    verified = CliRunner().invoke(main, ["variants", "verify", str(out), "--output", "json"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["verified"] is True


def test_digits_does_not_overwrite_a_model(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"the user's model")
    result = CliRunner().invoke(main, ["variants", "digits", "--out", str(tmp_path)])
    assert result.exit_code == 1 and f"{tmp_path / 'model.onnx'} exists" in result.output
    assert (tmp_path / "model.onnx").read_bytes() == b"the user's model"


def test_the_menu_expires_when_build_is_told(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "variants"
    built = _build(sample, out, "--expires", "2031-01-01T00:00:00Z", key_dir=tmp_path / "keys")
    assert built.exit_code == 0, built.output
    assert json.loads((out / "menu.json").read_bytes())["expires"] == "2031-01-01T00:00:00.000Z"
    refused = _build(sample, tmp_path / "other", "--expires", "2001-01-01T00:00:00Z", key_dir=tmp_path / "keys")
    assert refused.exit_code == 2 and "--expires" in refused.output and "is not in the future" in refused.output
    assert not (tmp_path / "other").exists()  # refused before anything was built
