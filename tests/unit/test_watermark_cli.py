"""`tinymlops watermark embed` and `verify` end to end on the digits model: exit codes and what they print."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tinymlops.cli import main
from tinymlops.model.digits import DigitsArtifacts


def test_embed_then_verify(digits: DigitsArtifacts, tmp_path: Path) -> None:
    key, registry, out = tmp_path / "owner.key", tmp_path / "registry", tmp_path / "acme.onnx"
    key.write_bytes(bytes(range(32, 64)))
    runner = CliRunner()
    embedded = runner.invoke(main, ["watermark", "embed", str(digits.model_path), "--data", str(digits.data_path),
                                    "--key", str(key), "--licensee", "acme", "--registry", str(registry),
                                    "--out", str(out)])
    assert embedded.exit_code == 0, embedded.output
    assert "licensee acme" in embedded.output and out.is_file()

    again = runner.invoke(main, ["watermark", "embed", str(digits.model_path), "--data", str(digits.data_path),
                                 "--key", str(key), "--licensee", "acme", "--registry", str(registry),
                                 "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output  # the copy already written is not replaced

    found = runner.invoke(main, ["watermark", "verify", str(out), "--registry", str(registry), "--key", str(key),
                                 "--output", "json"])
    assert found.exit_code == 0, found.output
    result = json.loads(found.stdout)
    assert result["licensee"] == "acme" and result["chance_match_probability"] <= 1e-6
    assert {"bit_error_rate", "bit_p_value", "trigger_accuracy", "trigger_p_value"} <= set(result["tests"][0])

    clean = runner.invoke(main, ["watermark", "verify", str(digits.model_path), "--registry", str(registry),
                                 "--key", str(key)])
    assert clean.exit_code == 1 and "licensee: none" in clean.output

    not_onnx = runner.invoke(main, ["watermark", "verify", str(digits.data_path), "--registry", str(registry),
                                    "--key", str(key)])
    assert not_onnx.exit_code == 2 and "not an ONNX model" in not_onnx.output

    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    refused = runner.invoke(main, ["watermark", "verify", str(out), "--registry", str(registry), "--key", str(short)])
    assert refused.exit_code == 2 and "at least 32" in refused.output
