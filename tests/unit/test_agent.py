"""The device agent's trusted install path: pinning, downgrade refusal, digests, health check, A/B slots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.samples import picked, with_metrics
from tests.unit.signed_build import BIG, KEY, PUB, SMALL, Built
from tinymlops.agent import DeviceAgent, SessionCache
from tinymlops.agent.install import install_from_dir
from tinymlops.agent.slots import read_active, switch_to
from tinymlops.cli import main
from tinymlops.errors import DowngradeError, HealthCheckError, IntegrityError, ModelLoadError, SignatureError
from tinymlops.menu import menu_bytes
from tinymlops.plan import build_plan, menu_ref, plan_bytes
from tinymlops.publish import write_variant_dir
from tinymlops.report import Report
from tinymlops.selection.energy import HOST, energy_mj, target_model
from tinymlops.signing import private_key_pem, public_key_pem, sign
from tinymlops.store import sha256_bytes

# Set rather than trained: fp32 a point more accurate, so BIG wants another variant than SMALL runs.
FP32_MORE_ACCURATE = {"fp32": {"accuracy": 0.98}, "int8-static": {"accuracy": 0.97}}


@pytest.fixture(scope="module")
def built(signed_build: Built) -> Built:
    return signed_build


def variant_dir(path: Path, built: tuple[dict[str, Any], dict[str, bytes]], **changes: Any) -> Path:
    menu, blobs = built
    menu = json.loads(json.dumps(menu))
    menu.update(changes)
    write_variant_dir(path, menu, blobs, KEY)
    return path


def test_first_install_pins_the_key_and_installs_the_best_variant_for_the_device(tmp_path: Path, built: Any) -> None:
    source = variant_dir(tmp_path / "v2", built)
    result = install_from_dir(source, tmp_path / "state", pubkey_pem=PUB, caps=SMALL)
    assert result.switched and result.variant_id == "int8-static"  # 200 KB fp32 does not fit 128 KB
    active = read_active(tmp_path / "state")
    assert active is not None and active.variant["id"] == "int8-static" and active.menu_version == 2
    assert (tmp_path / "state" / "publisher.pem").read_bytes() == PUB
    again = install_from_dir(source, tmp_path / "state", caps=SMALL)  # pinned key, no --pubkey needed
    assert not again.switched


def test_a_different_key_is_never_accepted_after_pinning(tmp_path: Path, built: Any) -> None:
    source = variant_dir(tmp_path / "v2", built)
    install_from_dir(source, tmp_path / "state", pubkey_pem=PUB, caps=BIG)
    other = public_key_pem(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(SignatureError, match="pinned"):
        install_from_dir(source, tmp_path / "state", pubkey_pem=other, caps=BIG)


def test_the_identity_key_is_kept_on_the_first_install_and_never_replaced(tmp_path: Path, built: Any) -> None:
    identity, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    source = variant_dir(tmp_path / "v2", built)
    install_from_dir(source, tmp_path / "state", pubkey_pem=PUB, identity_pem=private_key_pem(identity), caps=SMALL)
    kept = tmp_path / "state" / "identity.pem"
    assert kept.read_bytes() == private_key_pem(identity) and kept.stat().st_mode & 0o777 == 0o600
    install_from_dir(source, tmp_path / "state", identity_pem=private_key_pem(identity), caps=SMALL)  # the same: fine
    with pytest.raises(SignatureError, match="--identity differs from the key provisioned"):
        install_from_dir(source, tmp_path / "state", identity_pem=private_key_pem(other), caps=SMALL)
    assert kept.read_bytes() == private_key_pem(identity)


def test_first_install_without_a_key_is_refused(tmp_path: Path, built: Any) -> None:
    with pytest.raises(SignatureError, match="--pubkey"):
        install_from_dir(variant_dir(tmp_path / "v2", built), tmp_path / "state", caps=BIG)


def test_a_menu_signed_by_another_key_is_refused_and_the_old_model_keeps_serving(tmp_path: Path, built: Any) -> None:
    install_from_dir(variant_dir(tmp_path / "v2", built), tmp_path / "state", pubkey_pem=PUB, caps=BIG)
    forged = variant_dir(tmp_path / "v3", built, version=3)
    (forged / "menu.sig").write_text(sign(Ed25519PrivateKey.generate(), (forged / "menu.json").read_bytes()))
    with pytest.raises(SignatureError):
        install_from_dir(forged, tmp_path / "state", caps=BIG)
    assert read_active(tmp_path / "state").menu_version == 2  # type: ignore[union-attr]


def test_a_downgrade_is_refused(tmp_path: Path, built: Any) -> None:
    install_from_dir(variant_dir(tmp_path / "v2", built), tmp_path / "state", pubkey_pem=PUB, caps=BIG)
    with pytest.raises(DowngradeError, match="version 1 is older than the installed version 2"):
        install_from_dir(variant_dir(tmp_path / "v1", built, version=1), tmp_path / "state", caps=BIG)


def test_a_tampered_blob_is_refused_and_the_old_model_keeps_serving(tmp_path: Path, built: Any) -> None:
    install_from_dir(variant_dir(tmp_path / "v2", built, version=2), tmp_path / "state", pubkey_pem=PUB, caps=SMALL)
    favoured = with_metrics(built[0], FP32_MORE_ACCURATE)
    newer = variant_dir(tmp_path / "v3", built, version=3, variants=favoured["variants"])
    menu = json.loads((newer / "menu.json").read_bytes())
    assert picked(menu, BIG)["id"] == "fp32"
    blob = newer / "blobs" / next(v["sha256"] for v in menu["variants"] if v["id"] == "fp32")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="variant fp32"):
        install_from_dir(newer, tmp_path / "state", caps=BIG)
    active = read_active(tmp_path / "state")
    assert active is not None and active.variant["id"] == "int8-static" and active.menu_version == 2


def test_a_failed_health_check_keeps_the_previous_model(tmp_path: Path, built: Any) -> None:
    install_from_dir(variant_dir(tmp_path / "v2", built), tmp_path / "state", pubkey_pem=PUB, caps=SMALL)
    menu, blobs = built
    bad = json.loads(json.dumps(menu))
    bad["version"] = 3
    for variant in bad["variants"]:  # signed by the publisher, but the golden outputs are wrong
        variant["health_check"]["outputs"] = [[9.0] * len(o) for o in variant["health_check"]["outputs"]]
    write_variant_dir(tmp_path / "v3", bad, blobs, KEY)
    with pytest.raises(HealthCheckError, match="golden sample 0 differs"):
        install_from_dir(tmp_path / "v3", tmp_path / "state", caps=SMALL)
    assert read_active(tmp_path / "state").menu_version == 2  # type: ignore[union-attr]


def test_bytes_the_runtime_cannot_load_keep_the_previous_model(tmp_path: Path, built: Any) -> None:
    install_from_dir(variant_dir(tmp_path / "v2", built), tmp_path / "state", pubkey_pem=PUB, caps=SMALL)
    bad = json.loads(json.dumps(built[0]))
    bad["version"] = 3
    garbage = b"signed by the publisher, but not an ONNX model"
    for variant in bad["variants"]:
        variant.update(sha256=sha256_bytes(garbage), size_bytes=len(garbage))
    write_variant_dir(tmp_path / "v3", bad, {sha256_bytes(garbage): garbage}, KEY)
    with pytest.raises(ModelLoadError, match="the runtime cannot load it"):
        install_from_dir(tmp_path / "v3", tmp_path / "state", caps=SMALL)
    active = read_active(tmp_path / "state")
    assert active is not None and active.variant["id"] == "int8-static" and active.menu_version == 2


def test_a_crash_before_the_switch_leaves_the_previous_slot_active(tmp_path: Path, built: Any) -> None:
    install_from_dir(variant_dir(tmp_path / "v2", built), tmp_path / "state", pubkey_pem=PUB, caps=SMALL)
    state = tmp_path / "state"
    # The spare slot was written, then the device lost power before active.json moved.
    (state / "slots" / "b.model").write_bytes(b"half a model")
    active = read_active(state)
    assert active is not None and active.slot == "a" and active.variant["id"] == "int8-static"


def test_switching_alternates_slots(tmp_path: Path, built: Any) -> None:
    menu, blobs = built
    fp32, int8 = menu["variants"]
    assert switch_to(tmp_path, fp32, blobs[fp32["sha256"]], menu_version=1, reason="r") == "a"
    assert switch_to(tmp_path, int8, blobs[int8["sha256"]], menu_version=2, reason="r") == "b"
    assert read_active(tmp_path).variant["id"] == int8["id"]  # type: ignore[union-attr]


def test_a_corrupted_active_slot_is_detected(tmp_path: Path, built: Any) -> None:
    install_from_dir(variant_dir(tmp_path / "v2", built), tmp_path / "state", pubkey_pem=PUB, caps=SMALL)
    model = tmp_path / "state" / "slots" / "a.model"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError, match="slot a"):
        read_active(tmp_path / "state")


def test_plan_selector_decides_membership_and_a_forged_plan_is_refused(built: Any) -> None:
    agent = DeviceAgent(SMALL, KEY.public_key(), SessionCache())
    plan = build_plan(namespace="ns", fleet="f", model="digits",
                      menu=menu_ref(namespace="ns", model="digits", menu_sha256="0" * 64, menu_version=2, revision=1),
                      policy={"objective": "accuracy"}, selector={"matchLabels": {"tinymlops.io/arch": "armv7l"}},
                      serial=5)
    data = plan_bytes(plan)
    assert agent.accept_plan(data, sign(KEY, data)) == plan
    other = plan_bytes({**plan, "selector": {"matchLabels": {"tinymlops.io/arch": "x86_64"}}})
    assert agent.accept_plan(other, sign(KEY, other)) is None and agent.phase == "Pending"
    with pytest.raises(SignatureError):
        agent.accept_plan(other, sign(KEY, data))
    replayed = plan_bytes({**plan, "serial": 4})  # an older plan, validly signed: a replay
    with pytest.raises(DowngradeError, match="serial 4 is older"):
        agent.accept_plan(replayed, sign(KEY, replayed))


def test_online_steps_install_serve_and_report(built: Any) -> None:
    menu, blobs = built
    sessions = SessionCache()
    agent = DeviceAgent(SMALL, KEY.public_key(), sessions)
    accepted = agent.accept_menu(menu_bytes(menu), sign(KEY, menu_bytes(menu)))
    variant = agent.choose(accepted, {"objective": "accuracy"})
    assert agent.install(variant, blobs[variant["sha256"]], 2, "test").load_ms is not None
    sample = np.asarray(variant["health_check"]["inputs"][0], dtype=np.float32)
    assert agent.infer(sample) is not None
    report = agent.report(namespace="ns", fleet="f", now=1.0)
    assert report.phase == "Running" and report.variant == "int8-static" and report.inferences == 1
    assert report.model_memory_bytes == variant["metrics"]["memory_bytes"]
    # The energy of this device's class (an armv7l core), not the build host's.
    assert report.energy_mj == pytest.approx(energy_mj(variant, target_model("zero", "armv7l")), abs=1e-6)
    assert report.energy_mj > energy_mj(variant, HOST)
    assert report.load_ms is not None and report.load_ms > 0
    assert Report.from_json(report.to_json()) == report  # what the gateway reads is what the agent sent
    assert agent.report(namespace="ns", fleet="f").inferences == 0  # counters reset per report
    # A second device with the same variant shares the loaded session: it loaded nothing, so it reports no
    # load time (a 0 would pass for a real, instant load in the gateway's histogram).
    twin = DeviceAgent(SMALL, KEY.public_key(), sessions)
    assert twin.install(variant, blobs[variant["sha256"]], 2, "test").load_ms is None
    assert sessions.loads == 1
    assert twin.report(namespace="ns", fleet="f").load_ms is None


def test_agent_cli_install_and_status(tmp_path: Path, built: Any) -> None:
    source = variant_dir(tmp_path / "v2", built)
    (tmp_path / "pub.pem").write_bytes(PUB)
    runner = CliRunner()
    state = str(tmp_path / "state")
    result = runner.invoke(main, ["agent", "install", str(source), "--state-dir", state,
                                  "--pubkey", str(tmp_path / "pub.pem")])
    assert result.exit_code == 0, result.output
    assert "installed" in result.output
    status = runner.invoke(main, ["agent", "status", "--state-dir", state])
    assert status.exit_code == 0 and "active:" in status.output and "why:" in status.output
    newer = variant_dir(tmp_path / "v3", built, version=3)
    shutil.rmtree(newer / "blobs")
    refused = runner.invoke(main, ["agent", "install", str(newer), "--state-dir", state])
    assert refused.exit_code == 1
    assert "install refused, the previous model keeps serving" in refused.output and "blob" in refused.output
    assert "menu v2" in runner.invoke(main, ["agent", "status", "--state-dir", state]).output
