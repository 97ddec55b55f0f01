"""N device agents in one process: each polls, verifies, loads, serves real inferences and reports.

The simulator drives agents the way Flower's simulation drives its ClientApps: it
owns scheduling (when each device polls, serves and uploads), the world around the
devices (context traces, the inference workload, injected faults) and what a real
fleet would not duplicate in one process: loaded sessions (by digest, so memory
grows with variants, not devices), each edge node's cache (50 devices per node, as
`kubeedge.py` binds them), one HTTP connection pool and one report uplink that
batches reports the way an edge node relays its devices' telemetry.  Each device
signs its own reports with its identity key (`identities.py`); the uplink relays
the signed envelopes unchanged.  Everything a
device decides, it decides alone, through its own `DeviceAgent` and `OnlineAgent`
(tinymlops.agent): each verifies every signature and digest itself.

Inferences are real; the latency a device reports is modelled from its class and
variant (`latency.py`), because the host's wall time under thousands of agents
measures the host, not the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.edgenode import EdgeNode
from tinymlops.agent.online import OnlineAgent
from tinymlops.agent.sessions import SessionCache
from tinymlops.devices import DeviceCapabilities
from tinymlops.fleet.identities import FleetIdentities
from tinymlops.fleet.kubeedge import DEVICES_PER_EDGE_NODE
from tinymlops.fleet.latency import ModelledLatency
from tinymlops.fleet.profiles import FLEET_LABEL, FLEET_LABEL_VALUE
from tinymlops.fleet.shift import shift_inputs
from tinymlops.fleet.traces import Trace, make_trace
from tinymlops.fleet.twins import twin_status

log = logging.getLogger(__name__)

REPORT_BATCH = 500  # per POST; the gateway takes at most 1000
INFERENCES_PER_POLL = 5  # the workload each device serves between two polls
MAX_PENDING_REPORTS = 20_000  # the uplink's buffer while the gateway is away; oldest dropped first

# Writes a device's KubeEdge twin status (device name, Device `status`); None: no KubeEdge to tell.
TwinSink = Callable[[str, dict[str, Any]], Awaitable[None]]


def serve(agent: DeviceAgent, samples: NDArray[np.float32], count: int, rng: random.Random, *,
          fault_rate: float = 0.0) -> int:
    """Run `count` real inferences on held-out samples with the active model; return how many ran.

    `fault_rate` simulates a runtime fault on this device (the share of inferences that crash), which
    is how the simulator shows a variant that passed its health check misbehaving in the field."""
    if agent.active is None or not len(samples):
        return 0
    ran = 0
    for _ in range(count):
        if fault_rate and rng.random() < fault_rate:
            agent.record_fault()
            continue
        if agent.infer(np.asarray(samples[rng.randrange(len(samples))], dtype=np.float32)) is not None:
            ran += 1
    return ran


class FleetSimulator:
    def __init__(
        self,
        devices: Sequence[DeviceCapabilities],
        *,
        namespace: str,
        fleet: str,
        gateway_url: str,
        publisher_key: Ed25519PublicKey,
        samples: NDArray[np.float32],
        poll_interval_s: float = 2.0,
        inferences_per_poll: int = INFERENCES_PER_POLL,
        upload_interval_s: float = 0.5,
        seed: int = 0,
        twin_sink: TwinSink | None = None,
        twin_writes_per_s: int = 200,
        group_keys: Mapping[str, X25519PrivateKey] | None = None,
        identities: FleetIdentities | None = None,
        ca_file: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        # Context traces (battery, network, outages): off until `play_traces` starts them.
        self.devices = list(devices)
        self.namespace, self.fleet = namespace, fleet
        self.gateway_url = gateway_url.rstrip("/")
        self.publisher_key = publisher_key
        self.samples = samples
        self.poll_interval_s = poll_interval_s
        self.inferences_per_poll = inferences_per_poll
        self.upload_interval_s = upload_interval_s
        self.seed = seed
        self.rng = random.Random(seed)
        self.twin_sink = twin_sink
        # Device-group keys by device class: encrypted variants are wrapped per group, not per device.
        self.group_keys = dict(group_keys or {})
        self.twin_writes_per_s = twin_writes_per_s
        # Every device signs its reports with its own identity key: the same object wrote its Device's
        # annotation when the caller registered the devices (None: keys nobody registered).
        self.identities = identities if identities is not None else FleetIdentities()
        # Sees every batch the uplink sends, as an observer on the network would (the demo replays one).
        self.tap: Callable[[list[dict[str, Any]]], None] | None = None
        # The CA the edge nodes trust for an HTTPS gateway (None: the system's CAs), as edgecore is configured.
        self.ca_file = ca_file
        self.traces: dict[str, Trace] = {}
        self._trace_start = 0.0
        self.offline_switches = 0
        # Rollout revision -> share of inferences that crash on devices running it (a simulated field fault).
        self.faults: dict[int, float] = {}
        # Device class -> the samples its devices serve instead of `samples` (an input shift, `shift.py`).
        self.shifted_samples: dict[str, NDArray[np.float32]] = {}
        # Whether simulated agents watch their clients for model extraction: off unless a scenario asks, since each
        # watching agent holds up to 162.5 KiB of earlier queries for the digits model (prada.PradaConfig), which
        # ten thousand simulated devices in one process cannot afford.
        self.watch_extraction = False
        # Labels every device carries besides its capabilities' (a scenario's own: the licensee its devices belong
        # to, which a fleet's selector picks); their Device objects must carry them too.
        self.labels = dict(labels or {})
        # Devices whose applications a scenario drives itself (`DeviceAgent.infer` with its own clients): the
        # simulator serves no inferences of its own on them, which would be one more client drawing samples with
        # replacement, whose repeated queries an extraction monitor rightly finds unnatural.
        self.scripted: set[str] = set()
        self._twins: dict[str, tuple[str | None, str | None, str]] = {}  # last state queued per device
        self._twin_queue: dict[str, tuple[str | None, str | None, str]] = {}  # not yet written
        self.sessions = SessionCache()
        self.agents: dict[str, OnlineAgent] = {}
        self.nodes: dict[int, EdgeNode] = {}  # devices share their edge node's cache, as under KubeEdge
        self.inferences = 0
        self.reports_sent = 0
        self.reports_dropped = 0
        self._pending: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        tls = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        connector = aiohttp.TCPConnector(limit=64, ssl=tls)
        self._http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))
        for index, caps in enumerate(self.devices):
            labels = {FLEET_LABEL: FLEET_LABEL_VALUE, **caps.labels(), **self.labels}
            # Real inferences, modelled reported latency: from the device's class and variant, not the host's load.
            agent = DeviceAgent(caps, self.publisher_key, self.sessions, labels=labels,
                                device_key=self.group_keys.get(caps.device_class),
                                latency_model=ModelledLatency(caps.device_class, seed=f"{self.seed}:{caps.name}"),
                                watch_extraction=self.watch_extraction)
            node = self.nodes.get(index // DEVICES_PER_EDGE_NODE)
            if node is None:
                # Nodes revalidate plans at least every 2 s and push a change to their devices at once.
                node = EdgeNode(self.gateway_url, self._http, max_age_s=min(2.0, self.poll_interval_s / 2))
                self.nodes[index // DEVICES_PER_EDGE_NODE] = node
            self.agents[caps.name] = OnlineAgent(agent, namespace=self.namespace, fleet=self.fleet, node=node,
                                                 signer=self.identities.signer(caps.name))
        for online in self.agents.values():
            self._tasks.append(asyncio.create_task(self._device_loop(online), name=online.agent.caps.name))
        self._tasks.append(asyncio.create_task(self._uplink(), name="uplink"))
        if self.twin_sink is not None:
            self._tasks.append(asyncio.create_task(self._twin_writer(), name="twins"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._http is not None:
            await self._flush()
            await self._http.close()
            self._http = None

    def play_traces(self, duration_s: float, seed: int = 0) -> None:
        """From now on each device follows its context trace (battery, charger, network, outages)."""
        self.traces = {caps.name: make_trace(index, caps.device_class, duration_s=duration_s, seed=seed)
                       for index, caps in enumerate(self.devices)}
        self._trace_start = time.monotonic()

    def _apply_trace(self, online: OnlineAgent) -> None:
        trace = self.traces.get(online.agent.caps.name)
        if trace is None:
            return
        context = trace.context_at(time.monotonic() - self._trace_start)
        online.online = context.network != "offline"
        online.network = context.network
        if context != online.agent.context and online.agent.reconsider(context) is not None:
            self.offline_switches += 1

    def shift_inputs(self, device_class: str, kind: str, *, seed: int = 0) -> None:
        """From now on the devices of `device_class` serve `samples` shifted by `kind` (`shift.py`): their
        world changes, not their behaviour."""
        self.shifted_samples[device_class] = shift_inputs(kind, self.samples, seed=seed)

    def phases(self) -> Counter[str]:
        """The devices' own view of their phase (the gateway's view lags by one report)."""
        return Counter(online.agent.phase for online in self.agents.values())

    def by_revision(self) -> Counter[int]:
        return Counter(o.agent.active.revision for o in self.agents.values() if o.agent.active is not None)

    def by_variant(self) -> Counter[str]:
        return Counter(o.agent.active.variant_id for o in self.agents.values() if o.agent.active is not None)

    async def _device_loop(self, online: OnlineAgent) -> None:
        rng = random.Random(self.rng.random())
        await asyncio.sleep(rng.uniform(0, self.poll_interval_s))  # spread the first polls
        while True:
            self._apply_trace(online)
            if online.online:
                await online.sync()
            # Serving goes on whether or not the device can reach the cloud; the report after it tells what the
            # model just installed (if any) did.
            active = online.agent.active
            fault = self.faults.get(active.revision, 0.0) if active is not None else 0.0
            samples = self.shifted_samples.get(online.agent.caps.device_class, self.samples)
            count = 0 if online.agent.caps.name in self.scripted else self.inferences_per_poll
            self.inferences += serve(online.agent, samples, count, rng, fault_rate=fault)
            online.outbox.add(online.report())
            if online.online and online.may_upload():
                for report in online.uplink():
                    self._enqueue(report)
                await self._report_twin(online)
            await self._until_next_poll(online, self.poll_interval_s * rng.uniform(0.75, 1.25))

    async def _until_next_poll(self, online: OnlineAgent, seconds: float) -> None:
        """Sleep until the next poll, or until the device's edge node pushes a new plan."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(online.node.plan_changed().wait(), seconds)

    async def _report_twin(self, online: OnlineAgent) -> None:
        """Queue the device's twin for KubeEdge when what it runs changed (coalesced: the latest state wins)."""
        if self.twin_sink is None:
            return
        agent = online.agent
        active = agent.active.variant_id if agent.active else None
        state = (active, agent.plan_id, "online" if agent.phase != "Failed" else "failed")
        if self._twins.get(agent.caps.name) != state:
            self._twins[agent.caps.name] = state
            self._twin_queue[agent.caps.name] = state

    async def _twin_writer(self) -> None:
        """Write queued twins at a bounded rate, as an edge node syncs its devices' twins to the cloud:
        the Kubernetes API sees a steady trickle, never a storm, however large the fleet."""
        assert self.twin_sink is not None
        while True:
            await asyncio.sleep(1.0)
            batch = list(self._twin_queue.items())[: self.twin_writes_per_s]
            for name, _ in batch:
                del self._twin_queue[name]

            async def write(name: str, state: tuple[str | None, str | None, str]) -> None:
                assert self.twin_sink is not None
                active, plan, status = state
                try:
                    await self.twin_sink(name, twin_status(variant=active, plan=plan, state=status,
                                                           now_ms=int(time.time() * 1000)))
                except Exception as exc:  # KubeEdge being away must not stop the device
                    log.debug("twin update for %s failed: %s", name, exc)
                    self._twin_queue.setdefault(name, state)

            await asyncio.gather(*(write(name, state) for name, state in batch))

    def _enqueue(self, report: dict[str, Any]) -> None:
        self._pending.append(report)
        if len(self._pending) > MAX_PENDING_REPORTS:
            excess = len(self._pending) - MAX_PENDING_REPORTS
            del self._pending[:excess]
            self.reports_dropped += excess

    async def _uplink(self) -> None:
        while True:
            await asyncio.sleep(self.upload_interval_s)
            await self._flush()

    async def _flush(self) -> None:
        assert self._http is not None
        while self._pending:
            batch = self._pending[:REPORT_BATCH]
            if self.tap is not None:
                self.tap(batch)
            try:
                async with self._http.post(f"{self.gateway_url}/v1/reports", json={"reports": batch}) as response:
                    if response.status != 200:
                        log.warning("gateway refused a report batch: %s %s", response.status, await response.text())
                    else:
                        result = await response.json()
                        for rejected in result.get("rejected", [])[:3]:
                            log.warning("gateway rejected a report: %s", rejected.get("error"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("report upload failed, keeping %d reports: %s", len(self._pending), exc)
                return
            del self._pending[: len(batch)]
            self.reports_sent += len(batch)
