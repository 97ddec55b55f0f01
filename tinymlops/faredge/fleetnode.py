"""The edge node of a few microcontrollers in a DeviceFleet: each MCU follows the fleet's signed plan.

A microcontroller cannot run the Python agent, so its edge node runs one for it
(the KubeEdge mapper's role): per MCU, a `DeviceAgent` with the MCU's own labels
and an `OnlineAgent` polling the node's cache (`agent.edgenode.EdgeNode`), so an
MCU verifies the plan, decides its canary cohort (`tinymlops.cohort`), verifies
the menu and the bundle's digest, and chooses the variant whose measured flash
and RAM fit its labels exactly as any device does.  Installing is flashing
(`flash.py`): firmware built from the verified bundle, written to the free slot,
booted under its own SHA-256 check, then checked on the menu's golden samples.

Reports.  Each MCU is a registered device: its KubeEdge Device carries its
identity public key, and the node holds the private half on its behalf (an MCU
has no key store the node could not read anyway: the node already decides what
the MCU runs).  The node signs each MCU's report with that MCU's key and relays
the envelopes unchanged, so the gateway checks them as any device's (registered
key, sequence, freshness) and a report for one MCU cannot count for another.
Besides the agent's fields, a report carries `instructions`: what the board's
timer counted for the inferences it reports (exact to 40 instructions each).
The latency an MCU reports is estimated from those counts at the menu's clock
(`clock_mhz`), as the menu's `latency_ms_estimate` is.

Every MCU boots in its own qemu process for each run (`variants/mcu/qemu.py`);
the node runs its MCUs one after another on its own event loop, so the node
should run in its own thread (as the demo does) or process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.edgenode import EdgeNode
from tinymlops.agent.identity import ReportSigner
from tinymlops.agent.online import OnlineAgent
from tinymlops.devices import DeviceCapabilities
from tinymlops.faredge.flash import McuFlash, McuImage
from tinymlops.variants.mcu.boards import board_for

log = logging.getLogger(__name__)

INFERENCES_PER_POLL = 2  # each one boots the MCU's qemu instance (~0.1 s of host time for the digits model)
MAX_PENDING_REPORTS = 1000  # what the node keeps while the gateway is away (the gateway takes 1000 a batch)
FIGURES = ("flash_bytes", "ram_bytes", "instructions", "latency_ms_estimate", "clock_mhz")

@dataclass
class McuDevice:
    """One MCU as its node follows it: the agent deciding for it, its flash, and what the node measured."""

    online: OnlineAgent
    flash: McuFlash
    instructions: int = 0  # counted since the last report
    # The instruction counts of the latest inferences served (bounded: a node runs for months).
    measured: deque[int] = field(default_factory=lambda: deque(maxlen=256))
    inferences: int = 0

    @property
    def agent(self) -> DeviceAgent:
        return self.online.agent


class McuEdgeNode:
    def __init__(
        self,
        name: str,
        mcus: Sequence[DeviceCapabilities],
        *,
        namespace: str,
        fleet: str,
        gateway_url: str,
        publisher_key: Ed25519PublicKey,
        signers: Mapping[str, ReportSigner],
        samples: NDArray[np.float32],
        workdir: Path,
        labels: Mapping[str, str] | None = None,
        device_key: X25519PrivateKey | None = None,
        poll_interval_s: float = 2.0,
        inferences_per_poll: int = INFERENCES_PER_POLL,
        ca_file: str | None = None,
        seed: int = 0,
        firmware_cache: Path | None = None,
    ) -> None:
        """`signers`: each MCU's identity (its key, registered on its Device); `labels`: what every MCU's Device
        carries besides its capabilities (what the fleet's selector reads); `device_key`: the MCUs' device-group
        key, which opens encrypted variants; `firmware_cache`: where built firmware is kept (None: the user's
        cache, `variants.mcu.measure.firmware_cache`), keyed by content, so a node beside the factory can share
        the factory's."""
        missing = [caps.name for caps in mcus if caps.name not in signers]
        if missing:
            raise ValueError(f"edge node {name}: no identity for {', '.join(missing)}")
        self.name, self.mcu_caps = name, list(mcus)
        self.namespace, self.fleet = namespace, fleet
        self.gateway_url = gateway_url.rstrip("/")
        self.publisher_key, self.signers = publisher_key, dict(signers)
        self.samples, self.workdir = samples, workdir
        self.labels, self.device_key = dict(labels or {}), device_key
        self.poll_interval_s, self.inferences_per_poll = poll_interval_s, inferences_per_poll
        self.ca_file, self.firmware_cache = ca_file, firmware_cache
        self.rng = random.Random(seed)
        self.mcus: dict[str, McuDevice] = {}
        self.reports_sent = 0
        self.rejected: list[str] = []  # the gateway's reasons for refused reports (the last few)
        self._pending: list[dict[str, Any]] = []
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        tls = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8, ssl=tls),
                                           timeout=aiohttp.ClientTimeout(total=10))
        cache = EdgeNode(self.gateway_url, self._http, max_age_s=min(2.0, self.poll_interval_s / 2))
        for caps in self.mcu_caps:
            flash = McuFlash(caps.name, self.workdir / caps.name, cache_dir=self.firmware_cache)
            agent = DeviceAgent(caps, self.publisher_key, flash, labels={**caps.labels(), **self.labels},
                                device_key=self.device_key, watch_extraction=False)
            agent.latency_model = _estimated_latency(agent)
            online = OnlineAgent(agent, namespace=self.namespace, fleet=self.fleet, node=cache,
                                 signer=self.signers[caps.name])
            self.mcus[caps.name] = McuDevice(online, flash)
        self._task = asyncio.create_task(self._loop(cache), name=f"edge-node {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._flush()
            await self._http.close()
            self._http = None

    async def _loop(self, cache: EdgeNode) -> None:
        while True:
            await self.poll_once()
            with contextlib.suppress(TimeoutError):  # a new plan wakes the node at once, as edgecore pushes it
                await asyncio.wait_for(cache.plan_changed().wait(), self.poll_interval_s)

    async def poll_once(self) -> None:
        """One round: every MCU follows the plan (flashing when its choice changed), serves, and reports."""
        for mcu in self.mcus.values():
            await mcu.online.sync()
            active = mcu.agent.active
            # The agent's active runner is the image that passed its boot check: the next write goes elsewhere.
            mcu.flash.serving = active.runner.slot if active is not None and isinstance(
                active.runner, McuImage) else None
            self._serve(mcu)
            wire = mcu.online.report()
            if mcu.instructions:
                wire["instructions"], mcu.instructions = mcu.instructions, 0
            mcu.online.outbox.add(wire)
            if mcu.online.may_upload():
                self._pending.extend(mcu.online.uplink())
        del self._pending[:-MAX_PENDING_REPORTS]  # the gateway away for long: the oldest go first
        await self._flush()

    def _serve(self, mcu: McuDevice) -> None:
        """The MCU's application: a few inferences on held-out samples, each one boot of its image."""
        active = mcu.agent.active
        if active is None or not isinstance(active.runner, McuImage) or not len(self.samples):
            return
        for _ in range(self.inferences_per_poll):
            sample = np.asarray(self.samples[self.rng.randrange(len(self.samples))], dtype=np.float32)
            if mcu.agent.infer(sample) is not None and active.runner.last_instructions:
                counted = active.runner.last_instructions[-1]
                mcu.instructions += counted
                mcu.inferences += 1
                mcu.measured.append(counted)

    async def _flush(self) -> None:
        """Relay the MCUs' signed reports in one batch; kept for the next round when the gateway is away."""
        if not self._pending or self._http is None:
            return
        batch = self._pending
        try:
            async with self._http.post(f"{self.gateway_url}/v1/reports", json={"reports": batch}) as response:
                if response.status != 200:
                    log.warning("gateway refused the edge node's batch: %s", response.status)
                    return
                result = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("relay failed, keeping %d reports: %s", len(batch), exc)
            return
        self.rejected = [str(r.get("error")) for r in result.get("rejected", [])][-5:] or self.rejected
        self._pending = []
        self.reports_sent += len(batch)

    def summary(self) -> list[dict[str, Any]]:
        """Per MCU: what it runs, its phase and reason, the menu's measured figures and what it measured here."""
        out = []
        for name, mcu in self.mcus.items():
            agent, active = mcu.agent, mcu.agent.active
            metrics = dict(active.variant.get("metrics", {})) if active is not None else {}
            measured = list(mcu.measured)
            out.append({
                "device": name, "edge_node": self.name, "arch": agent.caps.arch,
                "flash_kb": agent.caps.model_storage_kb, "ram_kb": agent.caps.ram_bytes // 1024,
                "phase": agent.phase, "variant": active.variant_id if active else None,
                "revision": active.revision if active else 0, "reason": agent.reason,
                "slot": active.runner.slot if active is not None and isinstance(active.runner, McuImage) else None,
                "menu_figures": {key: metrics.get(key) for key in FIGURES},
                "inferences": mcu.inferences,
                "instructions_per_inference": int(np.median(measured)) if measured else None,
                "refused": dict(agent.rejected),
            })
        return out


def _estimated_latency(agent: DeviceAgent) -> Callable[[Mapping[str, Any], int], float]:
    """The latency an MCU reports: the instructions its timer counted for the inference that just ran, at the
    menu's clock, one instruction a cycle (an estimate, and a lower bound: see docs/mcu.md)."""

    def estimate(variant: Mapping[str, Any], _since_switch: int) -> float:
        active = agent.active
        runner = active.runner if active is not None else None
        counts = runner.last_instructions if isinstance(runner, McuImage) else []
        clock = float(variant.get("metrics", {}).get("clock_mhz") or board_for(str(variant.get("target"))).clock_mhz)
        return counts[-1] / (clock * 1e3) if counts else 0.0

    return estimate
