"""The online loop moves bytes, the agent decides: what a poll fetches, and how each failure is reported."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.agent import DeviceAgent, SessionCache
from tinymlops.agent.device import SIGNATURE_RETRIES
from tinymlops.agent.online import OnlineAgent
from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import GatewayError, IntegrityError
from tinymlops.fleet.simulator import serve
from tinymlops.layout import model_prefix
from tinymlops.model import DigitsArtifacts
from tinymlops.plan import build_plan, menu_ref, plan_bytes
from tinymlops.signing import sign
from tinymlops.store import DirectoryStore, sha256_bytes
from tinymlops.variants import build_variants

KEY = Ed25519PrivateKey.generate()
SMALL = DeviceCapabilities(name="zero", arch="armv7l", device_class="zero", ram_mb=512, model_storage_kb=128)
PLAN = "plans/ns/f/plan.json"


class Node:
    """An edge node over a dict of store keys: answers as the gateway would, and records what it was asked."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.asked: list[str] = []
        self.down = False

    async def get(self, key: str, etag: str | None = None) -> tuple[int, bytes, str | None]:
        self.asked.append(key)
        if self.down:
            raise GatewayError("gateway unreachable (ClientConnectorError)")
        body = self.files.get(key)
        if body is None:
            return 404, b"", None
        tag = sha256_bytes(body)
        return (304, b"", tag) if etag == tag else (200, body, tag)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> dict[str, bytes]:
    """A store as the gateway serves it: one signed menu of the digits variants, and a plan naming it."""
    root = tmp_path_factory.mktemp("store")
    build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                   signing_key=KEY, model_ref=("ns", "digits"), menu_version=2)
    built = Path(root, model_prefix("ns", "digits"))
    menu_json = (built / "menu.json").read_bytes()
    ref = menu_ref(namespace="ns", model="digits", menu_sha256=sha256_bytes(menu_json), menu_version=2, revision=1)
    files = {ref["path"]: menu_json, ref["signature"]: (built / "menu.sig").read_bytes()}
    files.update({f"{ref['folder']}blobs/{blob.name}": blob.read_bytes() for blob in (built / "blobs").iterdir()})
    plan = plan_bytes(build_plan(namespace="ns", fleet="f", model="digits", menu=ref,
                                 policy={"objective": "accuracy"}))
    files[PLAN], files["plans/ns/f/plan.sig"] = plan, sign(KEY, plan).encode()
    return files


def online(files: dict[str, bytes]) -> tuple[OnlineAgent, Node]:
    node = Node(dict(files))
    agent = DeviceAgent(SMALL, KEY.public_key(), SessionCache())
    return OnlineAgent(agent, namespace="ns", fleet="f", node=node), node  # type: ignore[arg-type]


async def test_a_poll_installs_what_the_plan_names_and_the_next_costs_one_conditional_get(
        published: dict[str, bytes]) -> None:
    device, node = online(published)
    await device.sync()
    agent = device.agent
    assert agent.phase == "Running" and agent.active is not None and agent.target_revision == 1
    menu = next(k for k in published if "/menus/" in k and k.endswith(".json"))
    assert node.asked == [PLAN, "plans/ns/f/plan.sig", menu, menu.removesuffix(".json") + ".sig",
                          f"models/ns/digits/blobs/{agent.active.sha256}"]
    assert agent.plan is not None and plan_bytes(agent.plan) == published[PLAN] and agent.plan_id == "r1/v2"
    node.asked.clear()
    await device.sync()
    assert node.asked == [PLAN] and agent.phase == "Running"  # a 304, and nothing changed to decide again
    report = device.report()
    assert report["phase"] == "Running" and report["schema"] == 1 and report["buffer_dropped"] == 0


async def test_no_plan_leaves_a_new_device_pending() -> None:
    device, node = online({})
    await device.sync()
    assert (device.agent.phase, device.agent.reason) == ("Pending", "no plan published for ns/f")
    assert node.asked == [PLAN] and device.agent.plan is None


async def test_an_unreachable_gateway_is_the_reason_and_the_model_keeps_serving(published: dict[str, bytes]) -> None:
    device, node = online(published)
    await device.sync()
    node.down = True
    await device.sync()
    active = device.agent.active
    assert device.agent.phase == "Running" and active is not None
    assert device.agent.reason == f"gateway unreachable (ClientConnectorError); serving {active.variant_id}"


async def test_a_signature_mismatch_is_retried_then_reported_as_a_failure(published: dict[str, bytes]) -> None:
    files = dict(published)
    files["plans/ns/f/plan.sig"] = sign(Ed25519PrivateKey.generate(), files[PLAN]).encode()
    device, node = online(files)
    for _ in range(SIGNATURE_RETRIES):
        await device.sync()
        assert device.agent.phase == "Pending" and device.agent.reason.endswith("; retrying")
    await device.sync()
    assert device.agent.phase == "Failed" and "retrying" not in device.agent.reason
    assert node.asked.count(PLAN) == SIGNATURE_RETRIES + 1  # never a 304: the plan is fetched again each time
    node.files["plans/ns/f/plan.sig"] = published["plans/ns/f/plan.sig"]  # the publish settles
    await device.sync()
    assert device.agent.phase == "Running"


def test_follow_plan_asks_for_each_key_and_checks_the_menu_digest(published: dict[str, bytes]) -> None:
    agent = DeviceAgent(SMALL, KEY.public_key(), SessionCache())
    agent.accept_plan(published[PLAN], published["plans/ns/f/plan.sig"])
    steps = agent.follow_plan()
    fetch = next(steps)
    assert "/menus/" in fetch.key and not fetch.optional
    with pytest.raises(IntegrityError, match="sha256 is .*, the signed plan says"):
        steps.send(published[fetch.key] + b" ")
    assert list(DeviceAgent(SMALL, KEY.public_key(), SessionCache()).follow_plan()) == []  # no plan: nothing


async def test_the_simulator_injects_faults_the_device_counts_as_errors(published: dict[str, bytes]) -> None:
    device, _ = online(published)
    await device.sync()
    assert device.agent.active is not None
    samples = np.asarray(device.agent.active.variant["health_check"]["inputs"], dtype=np.float32)
    assert serve(device.agent, samples, 5, random.Random(0), fault_rate=1.0) == 0
    assert serve(device.agent, samples, 2, random.Random(0)) == 2
    report: dict[str, Any] = device.report()
    assert (report["errors"], report["inferences"]) == (5, 2)
