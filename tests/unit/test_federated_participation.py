"""When a real device may train: the fleet's policy.federated over the device's context (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinymlops.errors import SpecError
from tinymlops.federated.participation import ParticipationPolicy, context_from_json, may_train
from tinymlops.selection.choice import DeviceContext

CONSENTED = ParticipationPolicy.from_policy({"federated": {"consent": True}})
GOOD = DeviceContext(battery_pct=80, charging=True, network="wifi")


def test_without_a_federated_section_there_is_no_consent() -> None:
    verdict = may_train(ParticipationPolicy.from_policy({"objective": "latency"}), GOOD, idle=True)
    assert not verdict.allowed
    assert "policy.federated.consent" in verdict.reason


def test_consent_and_every_condition_met_allows_training() -> None:
    verdict = may_train(CONSENTED, GOOD, idle=True)
    assert verdict.allowed
    assert verdict.reason == "may train: consent, charging, unmetered network, idle"


@pytest.mark.parametrize(("context", "idle", "named"), [
    (DeviceContext(battery_pct=80, charging=False), True, "requireCharging"),
    (DeviceContext(battery_pct=80, charging=True, network="metered"), True, "requireUnmetered"),
    (DeviceContext(battery_pct=80, charging=True, network="offline"), True, "network is offline"),
    (GOOD, False, "requireIdle"),
])
def test_each_unmet_condition_is_named(context: DeviceContext, idle: bool, named: str) -> None:
    verdict = may_train(CONSENTED, context, idle=idle)
    assert not verdict.allowed
    assert named in verdict.reason


def test_every_unmet_condition_is_named_at_once() -> None:
    verdict = may_train(CONSENTED, DeviceContext(battery_pct=40, charging=False, network="metered"), idle=False)
    assert verdict.reason.count(";") == 2


def test_a_mains_powered_device_counts_as_charging() -> None:
    assert may_train(CONSENTED, DeviceContext(battery_pct=None, charging=False), idle=True).allowed


def test_relaxed_requirements_allow_a_metered_busy_device_on_battery_but_never_offline() -> None:
    relaxed = ParticipationPolicy.from_policy({"federated": {"consent": True, "requireCharging": False,
                                                             "requireUnmetered": False, "requireIdle": False}})
    assert may_train(relaxed, DeviceContext(battery_pct=30, network="metered"), idle=False).allowed
    offline = may_train(relaxed, DeviceContext(battery_pct=30, network="offline"), idle=False)
    assert not offline.allowed and "offline" in offline.reason


@pytest.mark.parametrize(("section", "field"), [
    ({"consent": "yes"}, "policy.federated.consent"),
    ({"requireWifi": True}, "policy.federated.requireWifi"),
    ([True], "policy.federated"),
])
def test_a_bad_policy_names_its_field(section: object, field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        ParticipationPolicy.from_policy({"federated": section})


def test_a_context_file_is_read_and_checked() -> None:
    context, idle = context_from_json({"battery_pct": 55, "charging": True, "network": "metered", "idle": False},
                                      source="ctx.json")
    assert context == DeviceContext(battery_pct=55.0, charging=True, network="metered") and idle is False
    with pytest.raises(SpecError, match="ctx.json: idle"):
        context_from_json({"charging": True}, source="ctx.json")
    with pytest.raises(SpecError, match="ctx.json: context.network"):
        context_from_json({"network": "5g", "idle": True}, source="ctx.json")
    with pytest.raises(SpecError, match="battery_pct"):
        context_from_json({"battery_pct": 140, "idle": True}, source="ctx.json")


def _device(tmp_path: Path, policy: dict[str, Any], context: dict[str, Any]) -> Path:
    import json

    from tinymlops.agent.standalone import save_policy

    save_policy(tmp_path, policy)
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64))
    (tmp_path / "context.json").write_text(json.dumps(context))
    return tmp_path


def _federate(state: Path, *extra: str) -> Any:
    from click.testing import CliRunner

    from tinymlops.cli import main

    return CliRunner().invoke(main, ["agent", "federate", "--state-dir", str(state), "--superlink", "127.0.0.1:1",
                                     "--data", str(state / "data.npz"), "--context", str(state / "context.json"),
                                     *extra])


def test_agent_federate_exits_6_naming_every_unmet_rule_before_starting_anything(tmp_path: Path) -> None:
    state = _device(tmp_path, {"federated": {"consent": True}},
                    {"battery_pct": 30, "charging": False, "network": "metered", "idle": True})
    result = _federate(state, "--insecure")
    assert result.exit_code == 6
    assert "not training: not charging (battery 30%" in result.output and "requireUnmetered" in result.output
    assert not (state / "flower-supernode.log").exists() and not (state / "flower-node.key").exists()


def test_agent_federate_without_consent_or_with_a_bad_context_refuses(tmp_path: Path) -> None:
    state = _device(tmp_path, {}, {"charging": True, "idle": True})
    result = _federate(state, "--insecure")
    assert result.exit_code == 6 and "policy.federated.consent" in result.output
    (state / "context.json").write_text('{"charging": true}')
    result = _federate(state, "--insecure")
    assert result.exit_code == 1 and "idle must be true or false" in result.output


def test_agent_federate_needs_tls_or_an_explicit_insecure_and_labelled_data(tmp_path: Path) -> None:
    state = _device(tmp_path, {"federated": {"consent": True}}, {"charging": True, "idle": True})
    result = _federate(state)
    assert result.exit_code == 2 and "--root-certificates" in result.output
    np.savez(state / "data.npz", x=np.zeros((2, 4), np.float32))
    result = _federate(state, "--insecure")
    assert result.exit_code == 2 and "missing y" in result.output


def test_agent_federate_binds_its_node_key_even_while_training_must_wait(tmp_path: Path) -> None:
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.federated.nodekey import verified_node_key
    from tinymlops.signing import IDENTITY_KEY_FILE, private_key_pem

    state = _device(tmp_path, {"federated": {"consent": True}}, {"charging": False, "battery_pct": 50, "idle": True})
    identity = Ed25519PrivateKey.generate()
    (state / IDENTITY_KEY_FILE).write_bytes(private_key_pem(identity))
    (state / "ca.pem").write_text("a CA")
    result = _federate(state, "--root-certificates", str(state / "ca.pem"))
    assert result.exit_code == 6 and not (state / "flower-supernode.log").exists()
    binding = json.loads((state / "flower-node.json").read_bytes())
    assert verified_node_key(binding, identity.public_key(), source="dev").startswith(b"-----BEGIN PUBLIC KEY")
