"""The License's pure logic: which devices get a token (first, new menu, refill) and the status it shows."""

from __future__ import annotations

import pytest

from tinymlops.errors import SpecError
from tinymlops.licensing.issuer import Issued
from tinymlops_operator.logic.license import grants, license_spec, license_status

NOW = 1_799_000_000.0  # in 2027-01
MENU, NEW_MENU = "ab" * 32, "cd" * 32
SPEC = license_spec({"licensee": "acme", "fleetRef": {"name": "f"}, "quota": {"perPeriod": 250, "perToken": 100}})


def usage(**per_device: dict[str, int]) -> dict[str, object]:
    return {"inferences": sum(sum(t.values()) for t in per_device.values()), "anomalies": {},
            "devices": {name: {"per_token": tokens, "anomalies": {}} for name, tokens in per_device.items()}}


def test_new_devices_get_a_first_token_and_used_up_ones_a_refill() -> None:
    issued = {"a": None, "b": (Issued("tb", 100, 1, "2027-01", 0), MENU), "c": (Issued("tc", 100, 3, "2027-01", 0),
                                                                               MENU)}
    out = grants(SPEC, ["a", "b", "c"], issued, usage(b={"tb": 100}, c={"tc": 40}), MENU, NOW)
    assert [(g.device, g.quota, g.epoch, g.refill) for g in out] == [("a", 100, 1, False), ("b", 100, 2, True)]
    assert grants(SPEC, ["b"], issued, None, MENU, NOW) == []  # gateway unreachable: no refill decided


def test_a_new_stable_menu_rebinds_what_is_left() -> None:
    issued = {"b": (Issued("tb", 100, 2, "2027-01", 0), MENU)}
    (grant,) = grants(SPEC, ["b"], issued, usage(b={"tb": 30}), NEW_MENU, NOW)
    assert (grant.quota, grant.epoch, grant.refill, grant.period_used_before) == (70, 3, False, 30)


def test_the_spec_is_checked_and_the_status_counts_from_the_gateway() -> None:
    with pytest.raises(SpecError, match="spec.quota"):
        license_spec({"licensee": "acme", "quota": {"perPeriod": 5, "perToken": 10}})
    with pytest.raises(SpecError, match="spec.validity"):
        license_spec({"licensee": "acme", "quota": {"perPeriod": 5, "perToken": 1}, "validity": "soon"})
    seen = {"devices": {"b": {"per_token": {"tb": 10}, "anomalies": {"rolled-back-counter": 1}}},
            "inferences": 10, "anomalies": {"rolled-back-counter": 1}}
    status = license_status({}, generation=2, spec=SPEC, devices=3, refills=1, usage=seen, menu_sha256=MENU,
                            now=NOW, ready=True, message="ok")
    assert status["usage"] == {"inferences": 10, "refills": 1, "anomalyCount": 1,
                               "anomalies": {"rolled-back-counter": 1}, "devicesWithAnomalies": ["b"]}
    assert status["period"] == "2027-01" and status["conditions"][0]["type"] == "Ready"
