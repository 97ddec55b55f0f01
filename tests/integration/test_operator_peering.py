"""Two operator replicas on the emulator: one acts, the other waits until the first stops (kopf peering).

Each replica is kopf with the operator's own identity settings (`tinymlops_operator.identity.configure`)
and a timer on EdgeModels that records which replica ran it: two acting replicas would both tick.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest

from tests.integration.test_emulator import EM, EM_URL, ROOT, call, edgemodel
from tinymlops.stack.emulator import ApiEmulator
from tinymlops_operator import identity

pytestmark = pytest.mark.integration
PEERING = ("kopf.dev", "v1", "clusterkopfpeerings")


def replica(name: str, ticks: list[str]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        identity.configure(settings, peering="tinymlops", priority=None, instance=name)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create(*EM, registry=registry)
    def created(body: kopf.Body, **_: Any) -> None:
        kopf.info(body, reason="Seen", message=f"seen by {name}")

    @kopf.timer(*EM, interval=0.1, registry=registry)
    def tick(**_: Any) -> None:
        ticks.append(name)

    return registry


async def until(what: str, check: Callable[[], Any]) -> Any:
    for _ in range(300):
        if result := check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Replica:
    """One operator replica on its own thread and event loop, as in its own pod.

    kopf takes every task created in its loop after it started for its own and cancels them when it stops,
    so two operators cannot share a loop.
    """

    def __init__(self, name: str, ticks: list[str]) -> None:
        self.stop_flag = threading.Event()
        registry = replica(name, ticks)
        operator = kopf.operator(registry=registry, stop_flag=self.stop_flag, clusterwide=True,
                                 identity=f"replica-{name}")
        self.thread = threading.Thread(target=asyncio.run, args=(operator,), name=f"replica-{name}", daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 15)
        assert not self.thread.is_alive()


async def test_a_second_operator_stays_passive_until_the_first_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)  # "OS signals are ignored" in threads
    ticks: list[str] = []
    async with ApiEmulator([ROOT / "crds"]) as emulator, aiohttp.ClientSession(base_url=emulator.url) as api:
        monkeypatch.setenv("KUBECONFIG", str(emulator.write_kubeconfig(tmp_path / "kubeconfig")))
        status, _ = await call(api, "POST", "/apis/kopf.dev/v1/clusterkopfpeerings",
                               {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                "metadata": {"name": "tinymlops"}})
        assert status == 201
        await call(api, "POST", EM_URL, edgemodel())

        def peers() -> set[str]:
            return set(emulator.objects(*PEERING)[0].get("status") or {})

        replicas = [Replica("a", ticks)]
        try:
            await until("replica a acting", lambda: "a" in ticks)
            replicas.append(Replica("b", ticks))
            await until("replica b in the peering", lambda: peers() == {"replica-a", "replica-b"})
            seen = ticks.count("a")
            await until("replica a ticking on", lambda: ticks.count("a") >= seen + 10)
            assert "b" not in ticks  # b is alive (its keep-alive is in the peering) but passive

            await replicas[0].stop()
            assert peers() == {"replica-b"}  # a stopping removes its entry ...
            await until("replica b taking over", lambda: "b" in ticks)  # ... and b resumes
        finally:
            for one in replicas:
                await one.stop()

        (obj,) = emulator.objects(*EM, "default")
        assert obj["metadata"]["finalizers"] == ["tinymlops.io/operator"]
        assert all(key.startswith("tinymlops.io/") for key in obj["metadata"].get("annotations", {}))
        events = emulator.objects("", "v1", "events", "default")
        assert [(e["message"], e["source"]["component"], e["reportingInstance"]) for e in events] == [
            ("seen by a", "tinymlops-operator", "a")]
