"""`tinymlops keys` and `tinymlops variants`: build, verify (exit codes), sample model."""

from pathlib import Path

import pytest
from click.testing import CliRunner

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
    assert "OK" in verified.output
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
        main, ["variants", "build", str(bad), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code != 0 and f"model {bad}: not a valid ONNX model" in result.output
    assert (key_dir / "signing-key.pem").is_file()  # the default key is created on first use
