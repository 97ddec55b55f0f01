"""When a real device may train: the fleet's policy.federated over the device's context (pure)."""

from __future__ import annotations

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
