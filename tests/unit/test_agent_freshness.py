"""Freshness on the device: an expired plan is never taken as new, a device without a fresh plan keeps serving and
reports how long it has been stale, and a menu's expiry guards only what no fresh plan pins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.test_agent_online import PLAN, SMALL, Node
from tinymlops.agent import DeviceAgent, SessionCache
from tinymlops.agent.install import install_from_dir
from tinymlops.agent.online import OnlineAgent
from tinymlops.errors import ExpiredError, IntegrityError
from tinymlops.freshness import CLOCK_SKEW_S, expires_after
from tinymlops.layout import model_prefix
from tinymlops.model import DigitsArtifacts
from tinymlops.plan import build_plan, menu_ref, plan_bytes
from tinymlops.signing import public_key_pem, sign
from tinymlops.store import DirectoryStore, sha256_bytes
from tinymlops.variants import build_variants

KEY = Ed25519PrivateKey.generate()
T0 = 1_800_000_000.0  # the tests' "now": a fixed wall time, so nothing depends on this machine's clock
HOUR = 3600.0
MENU_EXPIRED = "2001-01-01T00:00:00.000Z"  # long past: only a fresh plan pinning the menu can make it count
SIGNATURE = "plans/ns/f/plan.sig"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> tuple[Path, dict[str, bytes]]:
    """The digits variants under an expired menu, and the store keys a plan pinning that menu points at."""
    root = tmp_path_factory.mktemp("store")
    build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                   signing_key=KEY, model_ref=("ns", "digits"), menu_version=2, expires=MENU_EXPIRED)
    built = Path(root, model_prefix("ns", "digits"))
    menu_json = (built / "menu.json").read_bytes()
    (built / "signing-key.pub.pem").write_bytes(public_key_pem(KEY.public_key()))
    ref = menu_ref(namespace="ns", model="digits", menu_sha256=sha256_bytes(menu_json), menu_version=2, revision=1)
    files = {ref["path"]: menu_json, ref["signature"]: (built / "menu.sig").read_bytes()}
    files.update({f"{ref['folder']}blobs/{blob.name}": blob.read_bytes() for blob in (built / "blobs").iterdir()})
    return built, files


def plan(store: tuple[Path, dict[str, bytes]], *, serial: int, expires: float | None) -> dict[str, bytes]:
    """The store's files plus a plan pinning its menu, signed with `serial` and expiring at `expires`."""
    files = dict(store[1])
    menu_json = next(body for key, body in files.items() if key.endswith(".json"))
    ref = menu_ref(namespace="ns", model="digits", menu_sha256=sha256_bytes(menu_json), menu_version=2, revision=1)
    document: dict[str, Any] = build_plan(namespace="ns", fleet="f", model="digits", menu=ref,
                                          policy={"objective": "accuracy"}, serial=serial)
    if expires is not None:
        document["expires"] = expires_after(expires, 0)
    data = plan_bytes(document)
    files[PLAN], files[SIGNATURE] = data, sign(KEY, data).encode()
    return files


def device(files: dict[str, bytes], clock: Clock) -> tuple[OnlineAgent, Node]:
    node = Node(files)
    agent = DeviceAgent(SMALL, KEY.public_key(), SessionCache(), clock=clock)
    return OnlineAgent(agent, namespace="ns", fleet="f", node=node), node  # type: ignore[arg-type]


async def test_without_a_fresh_plan_the_device_keeps_serving_and_reports_how_long_it_has_been_stale(
        store: tuple[Path, dict[str, bytes]]) -> None:
    clock = Clock()
    online, node = device(plan(store, serial=1, expires=T0 + HOUR), clock)
    await online.sync()
    agent = online.agent
    assert agent.phase == "Running" and online.report()["stale_seconds"] is None
    node.down = True  # the gateway is unreachable from here on
    clock.now = T0 + HOUR + CLOCK_SKEW_S  # past `expires`, within the tolerance for clock skew
    await online.sync()
    assert agent.report(namespace="ns", fleet="f").stale_seconds is None
    clock.now = T0 + 2 * HOUR
    await online.sync()
    report = agent.report(namespace="ns", fleet="f")
    assert (report.phase, report.stale_seconds) == ("Running", HOUR)  # counted from `expires` itself
    assert agent.active is not None  # still serving:
    assert agent.infer(np.asarray(agent.active.variant["health_check"]["inputs"][0], dtype=np.float32)) is not None
    node.down = False
    node.files = plan(store, serial=2, expires=T0 + 26 * HOUR)  # the operator's refresh reaches it
    await online.sync()
    assert agent.phase == "Running" and agent.report(namespace="ns", fleet="f").stale_seconds is None


async def test_a_frozen_mirror_serving_the_followed_plan_past_its_expiry_makes_the_device_stale_not_failed(
        store: tuple[Path, dict[str, bytes]]) -> None:
    clock = Clock()
    online, node = device(plan(store, serial=1, expires=T0 + HOUR), clock)
    await online.sync()
    clock.now = T0 + 3 * HOUR
    await online.sync()  # a 304 for the same, now expired, plan
    online._plan_etag = None  # and the same bytes in full: the plan already followed is taken again
    await online.sync()
    assert online.agent.phase == "Running" and online.agent.plan_serial == 1
    assert online.report()["stale_seconds"] == 2 * HOUR


async def test_an_expired_plan_is_never_accepted_as_new(store: tuple[Path, dict[str, bytes]]) -> None:
    clock = Clock()
    online, node = device(plan(store, serial=1, expires=T0 + HOUR), clock)
    await online.sync()
    agent = online.agent
    # A newer serial, validly signed, but expired: a mirror replaying what it held back, or a clock far behind.
    node.files = plan(store, serial=2, expires=T0 - HOUR)
    with pytest.raises(ExpiredError, match=r"^plan\.json: serial 2 expired at .* \(3600 s ago, beyond the 300 s"):
        agent.accept_plan(node.files[PLAN], node.files[SIGNATURE])
    await online.sync()
    assert agent.phase == "Running" and agent.plan_serial == 1  # the plan it follows keeps being followed
    assert "refused as new" in agent.reason and agent.reason.endswith(f"serving {agent.active.variant_id}")  # type: ignore[union-attr]
    # Within the tolerance for clock skew, a plan that just expired is still taken.
    node.files = plan(store, serial=3, expires=T0 - CLOCK_SKEW_S)
    await online.sync()
    assert agent.plan_serial == 3


async def test_a_new_device_offered_only_an_expired_plan_stays_pending_and_says_it_is_stale(
        store: tuple[Path, dict[str, bytes]]) -> None:
    online, _ = device(plan(store, serial=7, expires=T0 - 2 * HOUR), Clock())
    await online.sync()
    agent = online.agent
    assert agent.phase == "Pending" and agent.active is None and agent.plan is None
    assert online.report()["stale_seconds"] == 2 * HOUR


def test_a_plan_with_a_malformed_expiry_is_refused_by_name(store: tuple[Path, dict[str, bytes]]) -> None:
    files = plan(store, serial=1, expires=None)
    document = {**json.loads(files[PLAN]), "expires": "soon"}
    data = plan_bytes(document)
    agent = DeviceAgent(SMALL, KEY.public_key(), SessionCache(), clock=Clock())
    with pytest.raises(IntegrityError, match=r"^plan\.json: expires 'soon' is not an RFC 3339 time"):
        agent.accept_plan(data, sign(KEY, data))


async def test_a_plan_without_expiry_never_makes_a_device_stale(store: tuple[Path, dict[str, bytes]]) -> None:
    """Plans an operator signed before plans expired: followed as before, with no claim of freshness either way."""
    clock = Clock()
    online, _ = device(plan(store, serial=1, expires=None), clock)
    await online.sync()
    clock.now = T0 + 10**6
    assert online.agent.phase == "Running" and online.report()["stale_seconds"] is None


async def test_an_expired_menu_a_fresh_plan_pins_installs_but_a_sideloaded_copy_is_refused(
        store: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    online, _ = device(plan(store, serial=1, expires=T0 + HOUR), Clock())
    await online.sync()  # the plan vouches for the menu's digest now, however old the menu is
    assert online.agent.phase == "Running"
    directory, _ = store
    with pytest.raises(ExpiredError, match=rf"^menu\.json: version 2 expired at {MENU_EXPIRED} .*newer signed menu"):
        install_from_dir(directory, tmp_path / "state", pubkey_pem=public_key_pem(KEY.public_key()))
    assert not (tmp_path / "state" / "active.json").exists()
