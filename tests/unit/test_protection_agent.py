"""Extraction detection and output policies on one standalone device: `agent infer --client`, `agent status`,
the signed report; normal apps are left alone, an app synthesising queries around a few seeds is flagged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tests.unit.test_agent_drift import install, variant_dir  # noqa: F401  (the module's fixture)
from tinymlops.cli import main
from tinymlops.errors import SpecError
from tinymlops.model.digits import DigitsArtifacts
from tinymlops.report import SignedReport


def infer(state: Path, x: np.ndarray, tmp_path: Path, client: str) -> list[dict[str, Any]]:
    np.savez(tmp_path / "x.npz", x=x.astype(np.float32))
    result = CliRunner().invoke(main, ["agent", "infer", "--state-dir", str(state), "--input",
                                       str(tmp_path / "x.npz"), "--client", client, "--output", "json"])
    assert result.exit_code == 0, result.output
    predictions: list[dict[str, Any]] = json.loads(result.output)["predictions"]
    return predictions


def thief_queries(digits: DigitsArtifacts, n: int) -> np.ndarray:
    """Ten seed images, then rounds of small signed steps from them (what Jacobian augmentation asks)."""
    rng = np.random.default_rng(0)
    with np.load(digits.data_path) as npz:
        current = npz["x"][:10].copy()
    queries = [current]
    while sum(len(q) for q in queries) < n:
        current = np.clip(current + 0.05 * np.sign(rng.normal(size=current.shape)), 0, 1)
        queries.append(current)
    return np.concatenate(queries)[:n]


def test_a_thief_is_flagged_and_gets_labels_only_while_normal_apps_are_left_alone(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:  # noqa: F811
    policy = {"protection": {"outputPolicy": {"mode": "top1", "applyTo": "alarmed"}}}
    state = install(tmp_path, variant_dir, policy)
    with np.load(digits.data_path) as npz:
        normal = npz["x"][np.random.default_rng(1).permutation(len(npz["x"]))[:200]]
    shown = infer(state, normal, tmp_path, "camera-app")
    assert any(sorted(p["scores"])[-2] > 0 for p in shown)  # full outputs: not one-hot
    np.savez(tmp_path / "thief.npz", x=thief_queries(digits, 100).astype(np.float32))
    text = CliRunner().invoke(main, ["agent", "infer", "--state-dir", str(state), "--input",
                                     str(tmp_path / "thief.npz"), "--client", "thief"]).output
    assert "client thief: extraction alarm raised" in text
    status = json.loads(CliRunner().invoke(main, ["agent", "status", "--state-dir", str(state),
                                                  "--output", "json"]).output)
    alarms = {c["client"]: c["alarm"] for c in status["extraction"]["clients"]}
    assert alarms == {"camera-app": False, "thief": True}
    text = CliRunner().invoke(main, ["agent", "status", "--state-dir", str(state)]).output
    assert "client: thief: EXTRACTION ALARM" in text and "client: camera-app: no extraction alarm" in text
    # The alarm outlives the process that raised it: the thief now gets labels only, the camera app full scores.
    for p in infer(state, normal[:20], tmp_path, "thief"):
        assert sorted(p["scores"]) == [0.0] * 9 + [1.0]
    assert any(sorted(p["scores"])[-2] > 0 for p in infer(state, normal[:20], tmp_path, "camera-app"))
    report = CliRunner().invoke(main, ["agent", "report", "--state-dir", str(state)])
    assert report.exit_code == 0, report.output
    extraction = SignedReport.from_json(json.loads(report.output)).open().extraction
    assert extraction is not None and extraction.clients_watched == 2
    assert [a.client for a in extraction.alarms] == ["thief"] and extraction.alarms[0].w < 0.75


def test_a_client_id_is_bounded(tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:  # noqa: F811
    state = install(tmp_path, variant_dir, None)
    with np.load(digits.data_path) as npz:
        np.savez(tmp_path / "x.npz", x=npz["x"][:1])
    result = CliRunner().invoke(main, ["agent", "infer", "--state-dir", str(state), "--input",
                                       str(tmp_path / "x.npz"), "--client", "x" * 129])
    assert result.exit_code == 1 and "client" in result.output


@pytest.mark.parametrize("mode", ["rounded", "perturbed"])
def test_the_policy_applies_to_everyone_without_changing_any_label(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts, mode: str) -> None:  # noqa: F811
    (tmp_path / "full").mkdir()
    (tmp_path / mode).mkdir()
    full = infer(install(tmp_path / "full", variant_dir, None), _held_out(digits), tmp_path, "app")
    policy = {"protection": {"outputPolicy": {"mode": mode, "decimals": 1}}}
    shown = infer(install(tmp_path / mode, variant_dir, policy), _held_out(digits), tmp_path, "app")
    assert [p["class"] for p in shown] == [p["class"] for p in full]
    assert [p["scores"] for p in shown] != [p["scores"] for p in full]


def _held_out(digits: DigitsArtifacts) -> np.ndarray:
    with np.load(digits.data_path) as npz:
        return npz["x"][:50]


def test_without_scipy_no_client_is_watched_and_the_policy_still_applies_to_everyone(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import tinymlops.agent.device as device

    monkeypatch.setattr(device, "extraction_available", lambda: False)
    state = install(tmp_path, variant_dir, {"protection": {"outputPolicy": {"mode": "top1"}}})
    for p in infer(state, thief_queries(digits, 100), tmp_path, "thief"):
        assert sorted(p["scores"])[-2:] == [0.0, 1.0]
    status = json.loads(CliRunner().invoke(main, ["agent", "status", "--state-dir", str(state),
                                                  "--output", "json"]).output)
    assert status["extraction"] == {"clients": []}


def test_a_damaged_extraction_record_is_named(tmp_path: Path, variant_dir: Path) -> None:  # noqa: F811
    state = install(tmp_path, variant_dir, None)
    (state / "telemetry.json").write_text(json.dumps({"extraction": {"clients": ["a"], "alarms": [{"client": 1}]}}))
    result = CliRunner().invoke(main, ["agent", "status", "--state-dir", str(state)])
    assert result.exit_code == 1 and "telemetry.json: extraction.alarms" in result.output


def test_a_fleet_that_switches_watching_off_gets_no_alarm_and_its_devices_hold_no_queries(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:  # noqa: F811
    policy = {"protection": {"watchClients": False, "outputPolicy": {"mode": "top1", "applyTo": "alarmed"}}}
    state = install(tmp_path, variant_dir, policy)
    shown = infer(state, thief_queries(digits, 100), tmp_path, "thief")
    assert any(sorted(p["scores"])[-2] > 0 for p in shown)  # never alarmed: full scores, even for the thief
    status = json.loads(CliRunner().invoke(main, ["agent", "status", "--state-dir", str(state),
                                                  "--output", "json"]).output)
    assert status["extraction"] == {"clients": []}


def test_the_watch_switch_follows_the_signed_policy_on_a_running_agent(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.agent import DeviceAgent, SessionCache
    from tinymlops.agent.install import host_capabilities
    from tinymlops.protection.policy import watch_clients

    agent = DeviceAgent(host_capabilities(tmp_path), Ed25519PrivateKey.generate().public_key(), SessionCache())
    assert agent.extraction is not None and watch_clients({}) is True
    agent.watch(False)
    assert agent.extraction is None
    agent.watch(True)
    assert agent.extraction is not None
    simulated = DeviceAgent(host_capabilities(tmp_path), Ed25519PrivateKey.generate().public_key(), SessionCache(),
                            watch_extraction=False)
    simulated.watch(True)  # a simulator bounding its memory: the fleet cannot make it watch
    assert simulated.extraction is None
    with pytest.raises(SpecError, match=r"policy.protection.watchClients: 'yes' is not true or false"):
        watch_clients({"protection": {"watchClients": "yes"}})
