"""One device online: poll its edge node for the fleet's plan, follow it, serve, report.

The network edge around `DeviceAgent`: conditional GETs keep a poll that finds
nothing new to one small 304, and every failure is turned into a reported
reason while the active model keeps serving.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.edgenode import EdgeNode, GatewayError
from tinymlops.agent.telemetry import ReportBuffer, TelemetryPolicy, may_upload
from tinymlops.cohort import follow
from tinymlops.errors import IntegrityError, SignatureError, SpecError, TinyMLOpsError
from tinymlops.layout import MENU_FILE, blob_key, menu_key, plan_key, plan_prefix, signature_key
from tinymlops.protect import device_grant_file, model_context
from tinymlops.store import check_digest

# A mismatch that persists over this many polls is not a publish in progress: report it as a failure.
SIGNATURE_RETRIES = 3


class OnlineAgent:
    def __init__(self, agent: DeviceAgent, *, namespace: str, fleet: str, node: EdgeNode) -> None:
        self.agent = agent
        self.namespace, self.fleet = namespace, fleet
        self.node = node
        self.online = True
        self.network = "wifi"
        self.consent = True  # the user's telemetry consent, when the fleet asks for it
        self.outbox = ReportBuffer()
        self._plan_etag: str | None = None
        self._plan: dict[str, Any] | None = None
        self._menu_sha: str | None = None
        self._menu: dict[str, Any] | None = None
        self._decided: tuple[str, int, object] | None = None  # (menu digest, revision, context) of the last choice
        self._mismatches = 0  # consecutive signature mismatches

    async def _get(self, key: str, etag: str | None = None) -> tuple[int, bytes, str | None]:
        return await self.node.get(key, etag)

    async def _required(self, key: str) -> bytes:
        status, body, _ = await self._get(key)
        if status != 200:
            raise IntegrityError(f"{key}: gateway answered {status}")
        return body

    async def sync(self) -> None:
        """One poll: follow a new plan or menu when there is one; failures become the reported reason."""
        try:
            await self._sync()
        except GatewayError as exc:
            # Offline from the cloud's side: keep serving, keep the reason for the next report.
            self.agent.reason = f"{exc}; serving {self.agent.active.variant_id}" if self.agent.active else str(exc)
        except SignatureError as exc:
            # Bytes and signature are published as two files: one poll may see a new one with an old other.
            # Nothing is installed on a mismatch; the next poll fetches both again and settles it.
            self._plan_etag, self._menu_sha = None, None
            self._mismatches += 1
            if self._mismatches > SIGNATURE_RETRIES:
                self.agent.fail(exc)
            else:
                self.agent.reason = f"{exc}; retrying"
        except TinyMLOpsError as exc:
            if self.agent.phase != "Failed":  # install() already recorded its own failure
                self.agent.fail(exc)

    async def _sync(self) -> None:
        await self._sync_once()
        self._mismatches = 0

    async def _sync_once(self) -> None:
        key = plan_key(plan_prefix(self.namespace, self.fleet))
        status, body, etag = await self._get(key, self._plan_etag)
        if status == 404:
            self._plan = self._plan_etag = None
            if self.agent.active is None:
                self.agent.phase, self.agent.reason = "Pending", f"no plan published for {self.namespace}/{self.fleet}"
            return
        if status == 200:
            signature = await self._required(signature_key(key))
            self._plan = self.agent.accept_plan(body, signature)
            self._plan_etag = etag
        elif status != 304:
            raise IntegrityError(f"{key}: gateway answered {status}")
        if self._plan is None:
            return
        await self._follow(self._plan)

    async def _follow(self, plan: dict[str, Any]) -> None:
        followed = follow(plan, self.agent.caps.name)
        menu_ref, revision = followed.menu, followed.revision
        self.agent.target_revision = revision
        folder = menu_ref.get("folder") or menu_ref["path"].removesuffix(MENU_FILE)
        if self._menu_sha != menu_ref["sha256"]:
            menu_json = await self._required(menu_ref["path"])
            check_digest(menu_json, menu_ref["sha256"], what=menu_ref["path"], named_by="the signed plan")
            signature = await self._required(menu_ref.get("signature") or signature_key(menu_key(folder)))
            # The signed plan pins this digest, so it may name an older menu: the stable one, after a rollback.
            self._menu = self.agent.accept_menu(menu_json, signature, pinned=True)
            self._menu_sha = menu_ref["sha256"]
        assert self._menu is not None
        version = int(self._menu["version"])
        decided = (menu_ref["sha256"], revision, self.agent.context)
        if self.agent.phase == "Running" and self._decided == decided and self.agent.active is not None:
            return  # nothing changed since the last decision: keep serving
        variant = self.agent.choose(self._menu, followed.policy)
        reason = self.agent.choice.reason if self.agent.choice else "chosen"
        if self.agent.rejected:
            reason += f"; {len(self.agent.rejected)} variant(s) failed here"
        self._decided = decided
        active = self.agent.active
        if active is not None and active.sha256 == variant["sha256"]:
            if not self.agent.is_active(variant, version) or active.revision != revision or (
                    self.agent.phase != "Running"):
                # The same bytes (maybe in a newer menu or revision): no reload.
                self.agent.keep(variant, version, reason, revision=revision)
            return
        self.agent.downloading(variant)
        blob = await self._required(blob_key(folder, variant["sha256"]))
        wrapped = None
        if variant.get("encryption") and self.agent.device_key is not None:
            status, body, _ = await self._get(folder + device_grant_file(self.agent.device_key))
            wrapped = json.loads(body) if status == 200 else None
        context = model_context(str(self._menu["model"]["namespace"]), str(self._menu["model"]["name"]))
        self.agent.install(variant, blob, version, reason, wrapped=wrapped, context=context, revision=revision)

    def serve(self, samples: NDArray[np.float32], count: int, rng: random.Random, *, fault_rate: float = 0.0) -> int:
        """Run `count` real inferences on held-out samples with the active model; return how many ran.

        `fault_rate` simulates a runtime fault on this device (the share of inferences that crash), which
        is how the simulator shows a variant that passed its health check misbehaving in the field."""
        if self.agent.active is None or not len(samples):
            return 0
        ran = 0
        for _ in range(count):
            if fault_rate and rng.random() < fault_rate:
                self.agent.telemetry.errors += 1
                continue
            if self.agent.infer(np.asarray(samples[rng.randrange(len(samples))], dtype=np.float32)) is not None:
                ran += 1
        return ran

    @property
    def plan_id(self) -> str | None:
        """What this device follows, as `r<revision>/v<menu version>` (its KubeEdge twin shows it)."""
        if self._plan is None:
            return None
        menu = follow(self._plan, self.agent.caps.name).menu
        return f"r{menu.get('revision', 0)}/v{menu.get('version')}"

    def may_upload(self) -> bool:
        try:
            policy = TelemetryPolicy.from_plan(self._plan["policy"] if self._plan else None)
        except SpecError:
            policy = TelemetryPolicy()  # a signed plan with a policy this agent does not know: default
        allowed, _ = may_upload(policy, network=self.network if self.online else "offline", consent=self.consent)
        return allowed

    def report(self) -> dict[str, Any]:
        report = self.agent.report(namespace=self.namespace, fleet=self.fleet)
        report["buffer_dropped"] = self.outbox.dropped
        return report
