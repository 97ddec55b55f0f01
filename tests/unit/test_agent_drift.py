"""Drift telemetry end to end on one device: the factory's reference in the menu, `agent infer` counting into
its bins, `agent report` printing the signed report; and no input value or output vector in what leaves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.cli import main
from tinymlops.drift.features import IMAGE_FEATURES
from tinymlops.drift.reference import Monitoring
from tinymlops.layout import model_prefix
from tinymlops.model.digits import DigitsArtifacts
from tinymlops.publish import write_variant_dir
from tinymlops.report import SignedReport
from tinymlops.signing import load_private_key, private_key_pem, public_key_pem
from tinymlops.store import DirectoryStore
from tinymlops.variants import build_variants

KEY = Ed25519PrivateKey.generate()
DISTINCTIVE = 0.123456789  # a value no count, edge or latency of a report would spell


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> Path:
    root = tmp_path_factory.mktemp("store")
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                          signing_key=KEY, model_ref=("ns", "digits"), precisions=("fp32",))
    blobs = {v["sha256"]: (root / "models/ns/digits/blobs" / v["sha256"]).read_bytes() for v in menu["variants"]}
    out = tmp_path_factory.mktemp("variants") / "digits"
    write_variant_dir(out, menu, blobs, KEY)
    return out


def test_the_menu_carries_reference_histograms_of_the_build_data(variant_dir: Path, digits: DigitsArtifacts) -> None:
    menu = json.loads((variant_dir / "menu.json").read_bytes())
    monitoring = Monitoring.from_json(menu["monitoring"])
    with np.load(digits.data_path) as npz:
        rows = len(npz["x"])
    assert [f.name for f in monitoring.features] == list(IMAGE_FEATURES)
    assert monitoring.classes == 10 and 0 < monitoring.rows <= rows
    assert all(int(h.sum()) == monitoring.rows for h in monitoring.reference.features)


def install(tmp_path: Path, variant_dir: Path, policy: dict[str, Any] | None, *, identity: bool = True) -> Path:
    state = tmp_path / "state"
    (tmp_path / "pub.pem").write_bytes(public_key_pem(KEY.public_key()))
    args = ["agent", "install", str(variant_dir), "--state-dir", str(state), "--pubkey", str(tmp_path / "pub.pem")]
    if identity:
        (tmp_path / "identity.pem").write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
        args += ["--identity", str(tmp_path / "identity.pem")]
    if policy is not None:
        (tmp_path / "policy.json").write_text(json.dumps(policy))
        args += ["--policy", str(tmp_path / "policy.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return state


def distinctive_inputs(digits: DigitsArtifacts, n: int) -> np.ndarray:
    with np.load(digits.data_path) as npz:
        x = npz["x"][:n].copy()
    x[:, 27] = DISTINCTIVE  # one pixel of every input
    x[:, 36] = np.float32(0.987654321)
    return x


def infer(state: Path, x: np.ndarray, tmp_path: Path) -> dict[str, Any]:
    np.savez(tmp_path / "x.npz", x=x)
    result = CliRunner().invoke(main, ["agent", "infer", "--state-dir", str(state), "--input", str(tmp_path / "x.npz"),
                                       "--output", "json"])
    assert result.exit_code == 0, result.output
    printed: dict[str, Any] = json.loads(result.output)
    return printed


def report(state: Path) -> tuple[str, SignedReport]:
    result = CliRunner().invoke(main, ["agent", "report", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    return result.output, SignedReport.from_json(json.loads(result.output))


def spellings(value: float) -> set[str]:
    """How a value could appear in JSON text: float64 and float32 reprs, and their leading digits."""
    forms = {repr(float(value)), repr(float(np.float32(value))), str(np.float32(value))}
    return forms | {form[:8] for form in forms if len(form) >= 8}


def test_infer_counts_and_the_report_carries_only_counts(tmp_path: Path, variant_dir: Path,
                                                          digits: DigitsArtifacts) -> None:
    state = install(tmp_path, variant_dir, {"telemetry": {"drift": {"mode": "histograms", "windowInferences": 5}}})
    x = distinctive_inputs(digits, 12)
    printed = infer(state, x, tmp_path)
    assert printed["variant"] == "fp32" and len(printed["predictions"]) == 12
    text, signed = report(state)
    signed.verify(load_private_key((tmp_path / "identity.pem").read_bytes()).public_key())
    sent = signed.open()
    assert sent.seq >= 1 and sent.inferences == 12 and sent.drift is not None
    assert (sent.drift.window, sent.drift.rows, sent.drift.mode) == (0, 5, "histograms")
    assert len(sent.drift.features) == len(IMAGE_FEATURES)
    assert all(sum(h) == 5 for h in (*sent.drift.features, sent.drift.confidence, sent.drift.classes))
    # The privacy search: no input value and no output score, in the report or in what the device keeps.
    kept = (state / "telemetry.json").read_text()
    scores = [s for p in printed["predictions"] for s in p["scores"] if len(repr(s)) >= 10]
    assert scores, "the model's scores should have enough digits to search for"
    for payload in (text, signed.payload.decode(), kept):
        for value in [DISTINCTIVE, 0.987654321, *scores]:
            found = [form for form in spellings(value) if form in payload]
            assert not found, f"{found} (from {value!r}) leaked into {payload[:200]}…"
    # Asking again shows the same counts (nothing was uploaded) under a higher sequence number.
    again = report(state)[1].open()
    assert again.seq > sent.seq and again.drift == sent.drift


def test_dp_mode_noises_and_charges_the_ledger(tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:
    policy = {"telemetry": {"drift": {"mode": "histograms+dp", "epsilon": 2.0, "windowInferences": 4,
                                      "dailyEpsilon": 2.0}}}
    state = install(tmp_path, variant_dir, policy)
    infer(state, distinctive_inputs(digits, 8), tmp_path)  # two windows; the budget pays for one
    sent = report(state)[1].open()
    assert sent.drift is not None and sent.drift.mode == "histograms+dp" and sent.drift.epsilon == 2.0
    assert sent.drift_withheld is not None and "daily privacy budget is spent" in sent.drift_withheld
    assert json.loads((state / "privacy-budget.json").read_text())["spent"] == 2.0


def test_off_sends_no_drift(tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:
    state = install(tmp_path, variant_dir, None)
    infer(state, distinctive_inputs(digits, 6), tmp_path)
    wire = json.loads(report(state)[1].payload)
    assert "drift" not in wire and wire["inferences"] == 6


def test_report_without_an_identity_key_says_so(tmp_path: Path, variant_dir: Path) -> None:
    state = install(tmp_path, variant_dir, None, identity=False)
    result = CliRunner().invoke(main, ["agent", "report", "--state-dir", str(state)])
    assert result.exit_code == 1 and "no identity key (identity.pem)" in result.output


def test_infer_names_bad_input(tmp_path: Path, variant_dir: Path) -> None:
    state = install(tmp_path, variant_dir, None)
    np.savez(tmp_path / "bad.npz", y=np.zeros(3))
    result = CliRunner().invoke(main, ["agent", "infer", "--state-dir", str(state), "--input",
                                       str(tmp_path / "bad.npz")])
    assert result.exit_code == 2 and re.search(r"has no array `x`", result.output)
    (tmp_path / "policy.json").write_text(json.dumps({"telemetry": {"drift": {"mode": "raw"}}}))
    refused = CliRunner().invoke(main, ["agent", "install", str(variant_dir), "--state-dir", str(state),
                                        "--policy", str(tmp_path / "policy.json")])
    assert refused.exit_code == 1 and "policy.telemetry.drift.mode" in refused.output


def test_a_fleet_device_counts_under_its_plan_policy_and_the_outbox_keeps_windows_apart(
        variant_dir: Path, digits: DigitsArtifacts) -> None:
    from tinymlops.agent.device import DeviceAgent
    from tinymlops.agent.sessions import SessionCache
    from tinymlops.agent.telemetry import ReportBuffer
    from tinymlops.devices import DeviceCapabilities

    menu = json.loads((variant_dir / "menu.json").read_bytes())
    variant = menu["variants"][0]
    caps = DeviceCapabilities(name="pc", arch="x86_64", device_class="pc", ram_mb=4096, model_storage_kb=1 << 20)
    agent = DeviceAgent(caps, KEY.public_key(), SessionCache())
    agent.choose(menu, {"telemetry": {"drift": {"mode": "histograms", "windowInferences": 3}}})
    agent.install(variant, (variant_dir / "blobs" / variant["sha256"]).read_bytes(), 1, "test", revision=2,
                  menu_sha256="c" * 64, monitoring=menu["monitoring"])
    outbox = ReportBuffer()
    for sample in distinctive_inputs(digits, 6)[:3]:
        agent.infer(sample)
    outbox.add(agent.report(namespace="ns", fleet="f").to_json())
    for sample in distinctive_inputs(digits, 6)[3:]:
        agent.infer(sample)
    outbox.add(agent.report(namespace="ns", fleet="f").to_json())  # same state, but its own window
    sent = outbox.drain()
    assert [r["drift"]["window"] for r in sent] == [0, 1]
    assert all(r["drift"]["revision"] == r["revision"] == 2 for r in sent)


def test_a_fleet_device_times_its_windows_with_its_own_clock_and_closes_one_when_it_reports(
        variant_dir: Path, digits: DigitsArtifacts) -> None:
    from tinymlops.agent.device import DeviceAgent
    from tinymlops.agent.sessions import SessionCache
    from tinymlops.devices import DeviceCapabilities

    menu = json.loads((variant_dir / "menu.json").read_bytes())
    variant = menu["variants"][0]
    caps = DeviceCapabilities(name="pc", arch="x86_64", device_class="pc", ram_mb=4096, model_storage_kb=1 << 20)
    now = [1_000_000.0]  # the agent's clock, here in the test's hands; the recorder reads no other
    agent = DeviceAgent(caps, KEY.public_key(), SessionCache(), clock=lambda: now[0])
    agent.choose(menu, {"telemetry": {"drift": {"mode": "histograms", "windowInferences": 500, "windowSeconds": 60}}})
    agent.install(variant, (variant_dir / "blobs" / variant["sha256"]).read_bytes(), 1, "test", revision=2,
                  menu_sha256="c" * 64, monitoring=menu["monitoring"])
    samples = distinctive_inputs(digits, 4)
    for sample in samples[:3]:
        agent.infer(sample)
        now[0] += 10
    assert agent.report(namespace="ns", fleet="f").drift is None  # 30 s into a 60 s window
    now[0] += 30
    sent = agent.report(namespace="ns", fleet="f").drift  # 60 s since the first inference: closed, sent
    assert sent is not None and (sent.window, sent.rows) == (0, 3)
    assert all(sum(h) == 3 for h in (*sent.features, sent.confidence, sent.classes))
    now[0] += 3600  # an hour without inferences: no window, nothing sent
    assert agent.report(namespace="ns", fleet="f").drift is None
    agent.infer(samples[3])
    now[0] += 60
    assert agent.report(namespace="ns", fleet="f").drift.window == 1  # type: ignore[union-attr]
