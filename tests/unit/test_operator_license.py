"""The License's pure logic: which devices get a token (first, new menu, refill) and the status it shows."""

from __future__ import annotations

import time
from pathlib import Path

import kopf
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import generate_latest

from tinymlops.errors import SpecError
from tinymlops.layout import license_key
from tinymlops.licensing.issuer import Issued
from tinymlops.licensing.token import verify_license
from tinymlops.signing import IDENTITY_ANNOTATION, public_key_base64
from tinymlops.store import DirectoryStore
from tinymlops_operator.handlers.license import reconcile
from tinymlops_operator.logic.license import fleet_menus, grants, license_spec, license_status
from tinymlops_operator.logic.registry import device_identity
from tinymlops_operator.metrics import OperatorMetrics

PUBLISHER = Ed25519PrivateKey.generate()

NOW = 1_799_000_000.0  # in 2027-01
MENU, NEW_MENU = "ab" * 32, "cd" * 32
SPEC = license_spec({"licensee": "acme", "fleetRef": {"name": "f"}, "quota": {"perPeriod": 250, "perToken": 100}})


def usage(**per_device: dict[str, int]) -> dict[str, object]:
    return {"inferences": sum(sum(t.values()) for t in per_device.values()), "anomalies": {},
            "devices": {name: {"per_token": tokens, "anomalies": {}} for name, tokens in per_device.items()}}


def test_new_devices_get_a_first_token_and_used_up_ones_a_refill() -> None:
    issued = {"a": None, "b": (Issued("tb", 100, 1, "2027-01", 0), (MENU,)),
              "c": (Issued("tc", 100, 3, "2027-01", 0), (MENU,))}
    out = grants(SPEC, ["a", "b", "c"], issued, usage(b={"tb": 100}, c={"tc": 40}), (MENU,), NOW)
    assert [(g.device, g.quota, g.epoch, g.refill) for g in out] == [("a", 100, 1, False), ("b", 100, 2, True)]
    assert grants(SPEC, ["b"], issued, None, (MENU,), NOW) == []  # gateway unreachable: no refill decided


def test_a_new_stable_menu_rebinds_what_is_left() -> None:
    issued = {"b": (Issued("tb", 100, 2, "2027-01", 0), (MENU,))}
    (grant,) = grants(SPEC, ["b"], issued, usage(b={"tb": 30}), (NEW_MENU,), NOW)
    assert (grant.quota, grant.epoch, grant.refill, grant.period_used_before) == (70, 3, False, 30)


def test_a_canary_rebinds_to_stable_and_canary_and_promotion_needs_no_new_token() -> None:
    rollout = {"stable": {"menuSha256": MENU}, "canary": {"menuSha256": NEW_MENU}}
    assert fleet_menus(rollout) == tuple(sorted((MENU, NEW_MENU))) and fleet_menus({"stable": rollout["stable"]}) \
        == (MENU,)
    issued = {"b": (Issued("tb", 100, 2, "2027-01", 0), (MENU,))}
    (grant,) = grants(SPEC, ["b"], issued, usage(b={"tb": 30}), fleet_menus(rollout), NOW)
    assert (grant.quota, grant.epoch, grant.refill) == (70, 3, False)
    both = {"b": (Issued("tb", 70, 3, "2027-01", 30), fleet_menus(rollout))}
    assert grants(SPEC, ["b"], both, usage(b={"tb": 10}), (NEW_MENU,), NOW) == []  # promoted: still covered
    assert grants(SPEC, ["b"], both, usage(b={"tb": 10}), (MENU,), NOW) == []  # aborted: still covered


def test_the_spec_is_checked_and_the_status_counts_from_the_gateway() -> None:
    with pytest.raises(SpecError, match="spec.quota"):
        license_spec({"licensee": "acme", "quota": {"perPeriod": 5, "perToken": 10}})
    with pytest.raises(SpecError, match="spec.validity"):
        license_spec({"licensee": "acme", "quota": {"perPeriod": 5, "perToken": 1}, "validity": "soon"})
    seen = {"devices": {"b": {"per_token": {"tb": 10}, "anomalies": {"rolled-back-counter": 1}}},
            "inferences": 10, "anomalies": {"rolled-back-counter": 1}}
    status = license_status({}, generation=2, spec=SPEC, devices=3, refills=1, usage=seen, menus=(MENU,),
                            stable=MENU, now=NOW, ready=True, message="ok")
    assert status["usage"] == {"inferences": 10, "refills": 1, "anomalyCount": 1,
                               "anomalies": {"rolled-back-counter": 1}, "devicesWithAnomalies": ["b"]}
    assert status["period"] == "2027-01" and status["conditions"][0]["type"] == "Ready"


class Settings:
    gateway_url = ""  # no gateway: first tokens only, no refill decided


class Runtime:
    def __init__(self, store: DirectoryStore) -> None:
        self.store, self.settings, self.http = store, Settings(), None
        self.signing_key = PUBLISHER
        self.metrics = OperatorMetrics()


class Logger:
    def info(self, message: str) -> None:
        pass


async def test_the_handler_issues_verifiable_tokens_into_the_store_and_reports_them(tmp_path: Path) -> None:
    device_key = Ed25519PrivateKey.generate()
    identity = device_identity("edge", "cam-1", {IDENTITY_ANNOTATION: public_key_base64(device_key.public_key())})
    fleets = {("edge", "cams"): [{"spec": {"selector": {"matchLabels": {"app": "cam"}}},
                                  "status": {"rollout": {"stable": {"menuSha256": MENU}}}}]}
    runtime = Runtime(DirectoryStore(tmp_path))
    patch = kopf.Patch()
    spec = {"licensee": "acme", "fleetRef": {"name": "cams"}, "quota": {"perPeriod": 250, "perToken": 100}}
    await reconcile(runtime=runtime, spec=spec, status={}, namespace="edge", name="acme", generation=1,  # type: ignore[arg-type]
                    patch=patch, fleets=fleets, devices=[("cam-1", {"app": "cam"}), ("cam-2", {"app": "cam"}),
                                                         ("other", {"app": "tv"})],
                    identities={("edge", "cam-1"): [identity]}, logger=Logger())  # type: ignore[arg-type]
    token = runtime.store.get(license_key("edge", "cams", "cam-1")).decode()
    lic = verify_license(token, PUBLISHER.public_key(), device=device_key.public_key(), model=MENU, now=time.time())
    assert (lic.licensee, lic.quota, lic.epoch) == ("acme", 100, 1)
    assert patch.status["devices"] == 1 and "1 selected device(s) have no registered identity key" in \
        patch.status["conditions"][0]["message"]
    exposition = generate_latest(runtime.metrics.registry).decode()
    assert 'tinymlops_license_tokens_issued_total{license="acme",licensee="acme",namespace="edge"} 1.0' in exposition
    missing = kopf.Patch()
    await reconcile(runtime=runtime, spec={**spec, "fleetRef": {"name": "nope"}}, status={}, namespace="edge",  # type: ignore[arg-type]
                    name="acme", generation=2, patch=missing, fleets=fleets, devices=[], identities={},
                    logger=Logger())  # type: ignore[arg-type]
    assert missing.status["conditions"][0]["reason"] == "FleetNotFound"
    fleets[("edge", "cams")][0]["status"]["rollout"]["canary"] = {"menuSha256": NEW_MENU}  # a canary starts
    canary = kopf.Patch()
    await reconcile(runtime=runtime, spec=spec, status={}, namespace="edge", name="acme", generation=1,  # type: ignore[arg-type]
                    patch=canary, fleets=fleets, devices=[("cam-1", {"app": "cam"})],
                    identities={("edge", "cam-1"): [identity]}, logger=Logger())  # type: ignore[arg-type]
    rebound = runtime.store.get(license_key("edge", "cams", "cam-1")).decode()
    for menu in (MENU, NEW_MENU):  # the device serves on either revision under one token
        lic = verify_license(rebound, PUBLISHER.public_key(), device=device_key.public_key(), model=menu,
                             now=time.time())
    assert lic.epoch == 2 and canary.status["menus"] == sorted((MENU, NEW_MENU))
