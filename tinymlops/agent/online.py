"""One device online: poll its edge node for the fleet's plan, hand the bytes to the agent, report.

The network edge around `DeviceAgent`, and only that: the agent decides what to
fetch and what it means (`DeviceAgent.follow_plan` yields the keys), this loop
moves the bytes.  A conditional GET keeps a poll that finds nothing new to one
small 304, and every failure goes back to the agent, which turns it into a
reported reason while the active model keeps serving.
"""

from __future__ import annotations

from typing import Any

from tinymlops.agent.device import DeviceAgent, Fetch
from tinymlops.agent.edgenode import EdgeNode
from tinymlops.agent.hybrid import TailClient
from tinymlops.agent.hybridsetup import hybrid_executor, hybrid_policy, wanted_heads
from tinymlops.agent.identity import ReportSigner
from tinymlops.agent.telemetry import ReportBuffer, TelemetryPolicy, may_upload
from tinymlops.cohort import follow
from tinymlops.errors import (
    ExpiredError,
    GatewayError,
    IntegrityError,
    SignatureError,
    SpecError,
    TinyMLOpsError,
)
from tinymlops.layout import MENU_FILE, blob_key, plan_key, plan_prefix, signature_key
from tinymlops.report import Report


class OnlineAgent:
    """`signer`: the device's identity (key and sequence numbers); each report leaving the outbox is signed
    with it (`uplink`).  None: reports leave unsigned, for a gateway without a device registry."""

    def __init__(self, agent: DeviceAgent, *, namespace: str, fleet: str, node: EdgeNode,
                 signer: ReportSigner | None = None, tails: TailClient | None = None,
                 consent_inputs: bool = False) -> None:
        self.agent = agent
        # The gateway's tail service, signed with the device's identity: with it, a fleet policy's `hybrid`
        # section lets the device split or cascade (`agent/hybridsetup.py`); None: always local.
        self.tails, self.consent_inputs = tails, consent_inputs
        self.namespace, self.fleet = namespace, fleet
        self.node = node
        self.signer = signer
        self.online = True
        self.network = "wifi"
        self.consent = True  # the user's telemetry consent, when the fleet asks for it
        self.outbox = ReportBuffer()
        self._plan_etag: str | None = None

    async def sync(self) -> None:
        """One poll: follow a new plan or menu when there is one; failures become the reported reason."""
        try:
            await self._sync_once()
        except GatewayError as exc:
            self.agent.unreachable(exc)
        except ExpiredError as exc:  # the plan is fetched again at the next poll: the mirror may catch up
            self.agent.plan_refused(exc)
        except SignatureError as exc:
            self._plan_etag = None  # fetch the plan and its signature again at the next poll
            self.agent.signature_mismatch(exc)
        except TinyMLOpsError as exc:
            self.agent.sync_failed(exc)
        else:
            self.agent.synced()

    async def _sync_once(self) -> None:
        key = plan_key(plan_prefix(self.namespace, self.fleet))
        status, body, etag = await self.node.get(key, self._plan_etag)
        if status == 404:
            self._plan_etag = None
            self.agent.no_plan(f"{self.namespace}/{self.fleet}")
            return
        if status == 200:
            self.agent.accept_plan(body, await self._required(signature_key(key)))
            self._plan_etag = etag
        elif status != 304:
            raise IntegrityError(f"{key}: gateway answered {status}")
        await self._follow()
        await self._hybrid()

    async def _hybrid(self) -> None:
        """Put the hybrid executor on the active variant when the fleet policy asks (its heads fetched and
        verified against the signed menu), or take it off; a policy this agent cannot read means local."""
        agent, plan = self.agent, self.agent.plan
        active = agent.active
        if active is None or plan is None or self.tails is None:
            agent.hybrid = None
            return
        try:
            policy = hybrid_policy(agent.policy)
        except SpecError as exc:
            agent.hybrid = None
            agent.reason = f"{agent.reason}; serving locally: {exc}"
            return
        if policy is None or agent.menu is None:
            agent.hybrid = None
        elif agent.hybrid is None or agent.hybrid.runner is not active.runner or agent.hybrid.policy != policy:
            menu_ref = follow(plan, agent.caps.name).menu
            folder = menu_ref.get("folder") or menu_ref["path"].removesuffix(MENU_FILE)
            heads = {k: await self._required(blob_key(folder, digest))
                     for k, digest in wanted_heads(active.variant).items()}
            agent.hybrid = hybrid_executor(agent, agent.menu, heads, self.tails,
                                           consent_inputs=self.consent_inputs)

    async def _follow(self) -> None:
        """Fetch what the agent asks for, one key at a time, until it has decided."""
        steps = self.agent.follow_plan()
        try:
            fetch = next(steps)
            while True:
                fetch = steps.send(await self._fetch(fetch))
        except StopIteration:
            return

    async def _fetch(self, fetch: Fetch) -> bytes | None:
        if not fetch.optional:
            return await self._required(fetch.key)
        status, body, _ = await self.node.get(fetch.key)
        return body if status == 200 else None

    async def _required(self, key: str) -> bytes:
        status, body, _ = await self.node.get(key)
        if status != 200:
            raise IntegrityError(f"{key}: gateway answered {status}")
        return body

    def may_upload(self) -> bool:
        plan = self.agent.plan
        try:
            policy = TelemetryPolicy.from_plan(plan["policy"] if plan else None)
        except SpecError:
            policy = TelemetryPolicy()  # a signed plan with a policy this agent does not know: default
        allowed, _ = may_upload(policy, network=self.network if self.online else "offline", consent=self.consent)
        return allowed

    def uplink(self) -> list[dict[str, Any]]:
        """Drain the outbox into what goes on the wire, oldest first: each report signed and numbered as it
        leaves (not when it was queued: the outbox merges unchanged states, and what is signed must be what
        is sent), or as it is without a signer."""
        reports = self.outbox.drain()
        if self.signer is None:
            return reports
        return [self.signer.sign(Report.from_json(wire, where=f"outbox of {self.agent.caps.name}")).to_json()
                for wire in reports]

    def report(self) -> dict[str, Any]:
        """The next report, as the outbox keeps it and the uplink sends it."""
        return self.agent.report(namespace=self.namespace, fleet=self.fleet,
                                 buffer_dropped=self.outbox.dropped).to_json()
