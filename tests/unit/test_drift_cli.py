"""`tinymlops drift score`: saved reports merged offline, scores, exit codes, refusals and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit import drift_samples as samples
from tinymlops.cli import main
from tinymlops.menu import assemble_menu, read_menu_files
from tinymlops.publish import write_variant_dir
from tinymlops.report import Report, sign_report
from tinymlops.signing import PUBLIC_KEY_FILE, public_key_pem
from tinymlops.store import sha256_bytes

MONITORING, EDGES = samples.monitoring(0)


@pytest.fixture
def variant_dir(tmp_path: Path) -> tuple[Path, str]:
    key = Ed25519PrivateKey.generate()
    blob = samples.VARIANT_BLOB  # the variant the reports name (samples.VARIANT_SHA)
    variant = {"id": "fp32", "sha256": sha256_bytes(blob), "size_bytes": len(blob), "format": "onnx",
               "precision": "fp32", "target": "any", "accepted": True, "reason": "a test variant",
               "metrics": {"agreement": 1.0, "max_abs_diff": 0.0, "latency_ms_p50": 0.1, "latency_ms_p95": 0.2,
                           "threads": 1, "memory_bytes": 1},
               "lineage": {"parent": "b" * 64, "transforms": [], "tools": {}},
               "requirements": {"arch": ["x86_64"], "min_ram_mb": 1, "runtime": "onnxruntime", "operators": []},
               "health_check": {"atol": 1e-6, "inputs": [[0.0]], "outputs": [[0.0]]}}
    menu = {**assemble_menu(model_ref=("edge", "digits"), version=1,
                                  base={"sha256": "b" * 64, "size_bytes": 1, "source": "model.onnx"},
                                  variants=[variant]),
            "monitoring": MONITORING}
    out = tmp_path / "variants"
    write_variant_dir(out, menu, {variant["sha256"]: blob}, key)
    (out / PUBLIC_KEY_FILE).write_bytes(public_key_pem(key.public_key()))
    return out, sha256_bytes(read_menu_files(out)[0])


def write_reports(folder: Path, sha: str, *, devices: int, shift: float = 0.0, signed: bool = False) -> list[str]:
    rng = np.random.default_rng(8)
    key = Ed25519PrivateKey.generate()
    paths = []
    for d in range(devices):
        report = Report(device=f"d{d}", namespace="edge", fleet="cams", device_class="rpi4", arch="aarch64",
                        phase="Running", menu_version=1, sent_at=1.0, revision=1)
        payload = samples.drift_payload(rng, EDGES, shift=shift, feature=2, menu_sha256=sha, epsilon=1.0)
        # The drift field as report.py will carry it: inside the signed bytes when signed.
        wire: dict[str, Any] = {**report.to_json(), "drift": payload}
        if signed:
            envelope = sign_report(report, key, seq=d + 1).to_json()
            body = json.loads(envelope["report"])
            body["drift"] = payload
            wire = {"report": json.dumps(body, sort_keys=True, separators=(",", ":")), "signature": "unchecked"}
        path = folder / f"report-{d}.json"
        path.write_text(json.dumps(wire))
        paths.append(str(path))
    return paths


def test_drift_is_found_named_and_exits_3(variant_dir: tuple[Path, str], tmp_path: Path) -> None:
    out, sha = variant_dir
    paths = write_reports(tmp_path, sha, devices=30, shift=0.4, signed=True)
    result = CliRunner().invoke(main, ["drift", "score", str(out), *paths, "--output", "json"])
    assert result.exit_code == 3, result.output
    body = json.loads(result.stdout)
    assert body["drifted"] and body["menu_sha256"] == sha and body["refused"] == []
    [group] = body["groups"]
    assert (group["fleet"], group["revision"], group["device_class"]) == ("edge/cams", 1, "rpi4")
    assert group["rows"] == 15000 and group["top"][0] == "x[2]"


def test_no_drift_exits_0_and_a_bad_report_is_named(variant_dir: tuple[Path, str], tmp_path: Path) -> None:
    out, sha = variant_dir
    paths = write_reports(tmp_path, sha, devices=12)
    broken = json.loads(Path(paths[0]).read_text())
    broken["drift"]["features"][0] = [1, 2]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result = CliRunner().invoke(main, ["drift", "score", str(out), *paths, str(tmp_path / "broken.json")])
    assert result.exit_code == 0, result.output
    assert "edge/cams revision 1 rpi4: 6000 rows from 12 windows: no drift" in result.stdout
    assert "refused (wrong-bins)" in result.stderr and "broken.json" in result.stderr


def test_too_few_rows_are_not_scored(variant_dir: tuple[Path, str], tmp_path: Path) -> None:
    out, sha = variant_dir
    result = CliRunner().invoke(main, ["drift", "score", str(out), *write_reports(tmp_path, sha, devices=2)])
    assert result.exit_code == 0 and "not scored (fewer than 5000 rows)" in result.stdout


def test_plot_draws_a_png(variant_dir: tuple[Path, str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, sha = variant_dir
    png = tmp_path / "drift.png"
    paths = write_reports(tmp_path, sha, devices=20, shift=0.4)
    result = CliRunner().invoke(main, ["drift", "score", str(out), *paths, "--plot", str(png)])
    assert result.exit_code == 3, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tampered_menu_is_refused(variant_dir: tuple[Path, str], tmp_path: Path) -> None:
    out, sha = variant_dir
    paths = write_reports(tmp_path, sha, devices=1)
    (out / "menu.json").write_bytes((out / "menu.json").read_bytes().replace(b'"rows"', b'"rowz"'))
    result = CliRunner().invoke(main, ["drift", "score", str(out), *paths])
    assert result.exit_code == 1 and "verification failed" in result.output
