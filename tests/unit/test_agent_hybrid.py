"""A device splits with the gateway: head here, tail there over HTTP, the same outputs as the whole variant; and
local again, counted, when the gateway is gone or refuses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.test_agent_online import Node
from tinymlops.agent import DeviceAgent, SessionCache
from tinymlops.agent.hybrid import LINK_WINDOW, HybridExecutor, LinkEstimate, TailClient, confidence
from tinymlops.agent.hybridsetup import hybrid_executor, hybrid_policy, wanted_heads
from tinymlops.agent.online import OnlineAgent
from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import SpecError
from tinymlops.gateway.app import Gateway
from tinymlops.gateway.authn import ReportGuard
from tinymlops.layout import blob_key, menu_key, model_prefix, signature_key
from tinymlops.menu import menu_bytes
from tinymlops.model import DigitsArtifacts
from tinymlops.plan import build_plan, menu_ref, plan_bytes
from tinymlops.runners import Runner
from tinymlops.selection.energy import ARCH_MODELS
from tinymlops.selection.hybrid import HybridPolicy, costs
from tinymlops.signing import sign
from tinymlops.stack.hybridtrace import SimulatedLink
from tinymlops.store import DirectoryStore, sha256_bytes
from tinymlops.variants import build_variants

PUBLISHER, DEVICE = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
SLOW = ARCH_MODELS["cortex-m4"].slowdown  # a device slow enough that a split pays off on a local link
# The build host's latencies, set rather than measured: this small model's head and whole take 3-7 µs each, mostly
# onnxruntime's per-call cost, so which one measures faster (and so whether a split pays on a LAN) moved with the
# machine's load (CI once saw the head about as slow as the whole). Set: the head a third of the whole.
WHOLE_MS, HEAD_MS, TAIL_MS = 0.006, 0.002, 0.004


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("store")
    prefix = model_prefix("ns", "digits")
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(root), prefix,
                          signing_key=PUBLISHER, model_ref=("ns", "digits"), precisions=("fp32",), split_parts=True)
    (variant,) = menu["variants"]
    variant["metrics"]["latency_ms_p50"] = WHOLE_MS
    for point in variant["split"]["points"]:
        point.update(head_ms_p50=HEAD_MS, tail_ms_p50=TAIL_MS)
    payload = menu_bytes(menu)  # published again, signed, as the factory would have with these figures
    DirectoryStore(root).put(signature_key(menu_key(prefix)), sign(PUBLISHER, payload).encode())
    DirectoryStore(root).put(menu_key(prefix), payload)
    return root, menu


@pytest.fixture
def gateway(published: tuple[Path, dict[str, Any]]) -> Iterator[Gateway]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = Gateway(DirectoryStore(published[0]), guard=ReportGuard({("ns", "cam-1"): DEVICE.public_key()}))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def executor(published: tuple[Path, dict[str, Any]], url: str, key: Ed25519PrivateKey = DEVICE) -> HybridExecutor:
    root, menu = published
    variant = menu["variants"][0]
    blobs = root / model_prefix("ns", "digits") / "blobs"
    points = [p for p in variant["split"]["points"] if "head" in p]
    return HybridExecutor(
        runner=Runner.load((blobs / variant["sha256"]).read_bytes()),
        heads={p["k"]: Runner.load((blobs / p["head"]["sha256"]).read_bytes()) for p in points},
        tails={p["k"]: p["tail"]["sha256"] for p in points},
        costs=costs(variant, slowdown=SLOW, ram_mb=1024, policy=HybridPolicy()),
        policy=HybridPolicy(), client=TailClient(url, key, ("ns", "cam-1")), model=("ns", "digits"),
        link=LinkEstimate(bandwidth_bps=1e9, rtt_ms=0.2),  # as a probe of a local link would measure it
        # The requests are real; their time on the wire is a LAN's, not this host's (whose first request also
        # waits for the gateway to load the tail).
        link_model=SimulatedLink("lan"),
    )


def test_split_inferences_equal_the_whole_variant(published: tuple[Path, dict[str, Any]], gateway: Gateway,
                                                  digits: DigitsArtifacts) -> None:
    device = executor(published, gateway.url)
    with np.load(digits.data_path) as npz:
        x = npz["x"][:5]
    outputs = np.stack([device.one(sample) for sample in x])
    np.testing.assert_allclose(outputs, device.runner.many(x), atol=1e-6)
    assert device.choice is not None and device.choice.mode == "split" and "fastest" in device.choice.reason
    assert sum(device.modes.values()) == 5 and "local" not in device.modes and device.bytes_sent > 0
    assert device.link.rtt_ms is not None and device.fallbacks == 0


def test_a_gateway_that_is_gone_or_refuses_means_local_counted(published: tuple[Path, dict[str, Any]],
                                                               gateway: Gateway) -> None:
    sample = np.full(64, 0.5, np.float32)
    stranger = executor(published, gateway.url, key=Ed25519PrivateKey.generate())  # not its registered key
    np.testing.assert_allclose(stranger.one(sample), stranger.runner.one(sample))
    assert stranger.fallbacks == 1 and stranger.choice is not None
    assert stranger.choice.mode == "local" and "refused it (401" in stranger.choice.reason
    gone = executor(published, "http://127.0.0.1:9")  # nothing listens there
    gone.one(sample)
    gone.one(sample)
    assert gone.fallbacks == 1 and gone.modes == {"local": 2}  # the second did not try: the link is down
    assert gone.choice is not None and "server unreachable" in gone.choice.reason


def test_a_cascade_sends_only_unsure_inputs_and_only_with_consent(published: tuple[Path, dict[str, Any]],
                                                                  gateway: Gateway, digits: DigitsArtifacts) -> None:
    _, menu = published
    variant = menu["variants"][0]
    policy = HybridPolicy(cloud_variant=variant["id"], threshold=0.999)
    with np.load(digits.data_path) as npz:
        x = np.concatenate([npz["x"][:8], ((npz["x"][0] + npz["x"][1]) / 2)[None]])  # a blend: an unsure input
    for consent in (False, True):
        device = executor(published, gateway.url)
        device.policy, device.cloud, device.consent_inputs = policy, variant["sha256"], consent
        device.costs = costs(variant, slowdown=1.0, ram_mb=1024, policy=policy, cloud=variant)
        outputs = np.stack([device.one(sample) for sample in x])
        np.testing.assert_allclose(outputs, device.runner.many(x), atol=1e-6)  # the cloud variant is the same here
        assert device.choice is not None
        if not consent:
            assert "cascade" not in "".join(device.modes) and "consent" in device.choice.reason
            continue
        unsure = sum(confidence(out) < 0.999 for out in device.runner.many(x))
        assert unsure >= 1 and device.modes["cascade-cloud"] == unsure
        assert device.modes["cascade-cloud"] + device.modes["cascade-local"] == len(x)
        assert device.bytes_sent == unsure * 64 * 4 and device.choice.mode == "cascade"


def test_the_link_estimate_follows_a_link_that_changes_both_ways() -> None:
    link = LinkEstimate()
    for size, ms in [(40, 0.3), (256, 0.32)] * 2:  # a LAN: small and larger tensors
        link.observe(size, ms / 1000, 0.0)
    assert link.rtt_ms == pytest.approx(0.3) and link.bandwidth_bps is not None and link.bandwidth_bps > 50e6
    for _ in range(LINK_WINDOW):  # EDGE: 400 ms round trips
        link.observe(40, 0.4016, 0.0)
    assert link.rtt_ms == pytest.approx(401.6)  # not the LAN's minimum any more
    link.observe(40, 0.0003, 0.0)  # back on the LAN: the first request says so
    assert link.rtt_ms == pytest.approx(0.3)


def test_the_agent_serves_through_the_executor_and_sees_its_link_improve(
        published: tuple[Path, dict[str, Any]], gateway: Gateway, digits: DigitsArtifacts) -> None:
    root, menu = published
    prefix = model_prefix("ns", "digits")
    store = DirectoryStore(root)
    agent = DeviceAgent(DeviceCapabilities("cam-1", "cortex-m4", "slow-node", 64, 4096), PUBLISHER.public_key(),
                        SessionCache(), watch_extraction=False)
    agent.accept_menu(store.get(menu_key(prefix)), store.get(signature_key(menu_key(prefix))))
    variant = agent.choose(menu, {"hybrid": {"batterySaverPct": 20}})
    agent.install(variant, store.get(blob_key(prefix, variant["sha256"])), int(menu["version"]), "chosen")
    heads = {k: store.get(blob_key(prefix, digest)) for k, digest in wanted_heads(variant).items()}
    link, now = SimulatedLink("edge"), [0.0]
    agent.hybrid = hybrid_executor(agent, menu, heads, TailClient(gateway.url, DEVICE, ("ns", "cam-1")),
                                   consent_inputs=False, link_model=link, clock=lambda: now[0])
    assert agent.hybrid is not None and agent.hybrid.costs.device_ms > 100 * variant["metrics"]["latency_ms_p50"]
    with np.load(digits.data_path) as npz:
        x = npz["x"][:4]
    for sample in x:  # EDGE: the one probe says a split costs a round trip of 400 ms; local
        np.testing.assert_allclose(agent.infer(sample), agent.active.runner.one(sample), atol=1e-6)
    executor = agent.hybrid
    assert executor.probes == 1 and executor.modes == {"local": 4} and "fastest" in executor.choice.reason
    assert agent.telemetry.latencies_ms[-1] == pytest.approx(executor.costs.device_ms)  # the class's, simulated
    link.name, now[0] = "lan", executor.probe_every_s  # the next probe finds a LAN: the head here, the tail there
    for sample in x:
        np.testing.assert_allclose(agent.infer(sample), agent.active.runner.one(sample), atol=1e-6)
    assert executor.probes == 2 and executor.choice.mode == "split" and executor.modes["local"] == 5
    assert executor.last_ms < executor.costs.device_ms  # what the choice was for
    assert "; hybrid split@" in agent.report(namespace="ns", fleet="f").reason  # the report says where and why


def test_without_a_hybrid_policy_there_is_no_executor(published: tuple[Path, dict[str, Any]]) -> None:
    root, menu = published
    agent = DeviceAgent(DeviceCapabilities("cam-1", "x86_64", "pc", 64, 4096), PUBLISHER.public_key(), SessionCache())
    agent.choose(menu, {"objective": "accuracy"})
    client = TailClient("http://127.0.0.1:9", DEVICE, ("ns", "cam-1"))
    assert hybrid_executor(agent, menu, {}, client, consent_inputs=True) is None
    with pytest.raises(SpecError, match="threshold"):
        hybrid_policy({"hybrid": {"cloud": {"variant": "fp32", "threshold": 2}}})


async def test_an_online_device_takes_the_hybrid_policy_from_its_plan(published: tuple[Path, dict[str, Any]],
                                                                      gateway: Gateway) -> None:
    root, menu = published
    built = root / model_prefix("ns", "digits")
    menu_json = (built / "menu.json").read_bytes()
    ref = menu_ref(namespace="ns", model="digits", menu_sha256=sha256_bytes(menu_json), menu_version=1, revision=1)
    files = {ref["path"]: menu_json, ref["signature"]: (built / "menu.sig").read_bytes()}
    files.update({f"{ref['folder']}blobs/{blob.name}": blob.read_bytes() for blob in (built / "blobs").iterdir()})

    def publish(policy: dict[str, Any], serial: int) -> None:  # a new policy is a new revision (the operator's)
        plan = plan_bytes(build_plan(namespace="ns", fleet="f", model="digits", menu={**ref, "revision": serial},
                                     serial=serial, policy=policy))
        files["plans/ns/f/plan.json"], files["plans/ns/f/plan.sig"] = plan, sign(PUBLISHER, plan).encode()

    publish({"objective": "accuracy", "hybrid": {"batterySaverPct": 20}}, 1)
    node = Node(files)
    caps = DeviceCapabilities("cam-1", "cortex-m4", "slow-node", 64, 4096)
    device = OnlineAgent(DeviceAgent(caps, PUBLISHER.public_key(), SessionCache()), namespace="ns", fleet="f",
                         node=node, tails=TailClient(gateway.url, DEVICE, ("ns", "cam-1")))  # type: ignore[arg-type]
    await device.sync()
    executor = device.agent.hybrid
    assert executor is not None and executor.runner is device.agent.active.runner  # type: ignore[union-attr]
    heads = wanted_heads(device.agent.active.variant)  # type: ignore[union-attr]
    assert heads and set(executor.heads) == set(heads) and any(heads[1] in key for key in node.asked)
    publish({"objective": "accuracy"}, 2)  # the fleet turns it off: local again
    await device.sync()
    assert device.agent.hybrid is None and device.agent.infer(np.zeros(64, np.float32)) is not None
