"""One device's state machine: plan → menu → choice → verified blob → health check → switch.

No IO here: the agent decides what it needs and the caller (the online loop in
`online.py`, or `agent install`) fetches the bytes and hands them in, so the same
code runs on a device, in the fleet simulator and in unit tests.  A failure at any
step leaves the active model serving and is reported with its reason; a variant
that failed is not tried again for the same menu version.  A device that gets no
fresh plan (the gateway is unreachable, or a frozen mirror keeps serving one whose
`expires` passed) keeps serving too, and its reports say how long it has been
stale (`stale_seconds`, see `tinymlops.freshness`).  Only this class writes
the device's phase, reason, target revision and counters: what it reports is what
it decided.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from tinymlops.agent.health import health_check
from tinymlops.agent.hybrid import HybridExecutor
from tinymlops.agent.modules import DeviceModules, ModuleBlobs, load_modules, same_modules
from tinymlops.agent.sessions import SessionCache
from tinymlops.agent.telemetry import WARMUP_INFERENCES, Telemetry
from tinymlops.agent.trust import verify_menu, verify_plan
from tinymlops.cohort import follow
from tinymlops.devices import DeviceCapabilities
from tinymlops.drift.policy import DriftPolicy
from tinymlops.drift.privacy import BudgetLedger
from tinymlops.drift.reference import variant_sha256
from tinymlops.drift.window import DriftRecorder, Source
from tinymlops.errors import (
    DowngradeError,
    ExpiredError,
    SignatureError,
    SpecError,
    TinyMLOpsError,
    WasmCallError,
)
from tinymlops.freshness import CLOCK_SKEW_S, expired, expiry, stale_seconds
from tinymlops.labelselector import matches
from tinymlops.layout import MENU_FILE, PLAN_FILE, blob_key, menu_key, signature_key
from tinymlops.menu import blob_size, verify_blob
from tinymlops.personalise import PersonalisationPolicy, Personalised
from tinymlops.protect import device_grant_file, model_context, open_artifact
from tinymlops.protection.outputs import apply as apply_output_policy
from tinymlops.protection.policy import OutputPolicy, watch_clients
from tinymlops.protection.prada import DEFAULT_CLIENT, Monitor
from tinymlops.report import MAX_CLIENT_CHARS, MAX_EXTRACTION_ALARMS, PHASES, Extraction, ExtractionAlarm, Report
from tinymlops.runners import VariantRunner
from tinymlops.selection import Choice, DeviceContext, SelectionPolicy
from tinymlops.selection import choose as choose_in_context
from tinymlops.selection.energy import energy_mj, target_model
from tinymlops.store import check_digest
from tinymlops.wasm.modules import modules_of

# A signature mismatch that persists over this many polls is not a publish in progress: report it as a failure.
SIGNATURE_RETRIES = 3
# What a simulated device reports as an inference's latency, given the variant it ran and how many inferences
# that model ran since the switch; None: the wall time measured here (a real device).
LatencyModel = Callable[[Mapping[str, Any], int], float]


@dataclass(frozen=True)
class ActiveModel:
    variant: Mapping[str, Any]  # the menu entry it was verified against
    menu_version: int
    runner: VariantRunner
    reason: str
    switched_at: float
    revision: int = 0  # the fleet rollout revision whose menu it came from (0: none)
    menu_sha256: str = ""  # the digest of that menu's bytes (drift histograms name it)
    monitoring: Mapping[str, Any] | None = None  # that menu's drift bins (`tinymlops.drift.reference`); None: none
    modules: DeviceModules | None = None  # its WebAssembly pre/post modules, loaded (`agent/modules.py`)

    @property
    def variant_id(self) -> str:
        return str(self.variant["id"])

    @property
    def sha256(self) -> str:
        return str(self.variant["sha256"])


@dataclass(frozen=True)
class SwitchResult:
    switched: bool
    variant_id: str
    load_ms: float | None  # None: no load happened (a runner already in memory, shared or cached)


@dataclass(frozen=True)
class Fetch:
    """A store key the agent needs next: the caller GETs it and sends back its bytes.

    A required key that is missing is the caller's error to raise (the store lacks what a
    signed plan names); an `optional` one comes back as None."""

    key: str
    optional: bool = False


# What `DeviceAgent.follow_plan` yields (keys to fetch) and is sent back (their bytes).
Steps = Generator[Fetch, bytes | None, None]


class DeviceAgent:
    def __init__(
        self,
        caps: DeviceCapabilities,
        publisher_key: Ed25519PublicKey,
        sessions: SessionCache,
        *,
        labels: Mapping[str, str] | None = None,
        active: ActiveModel | None = None,
        device_key: X25519PrivateKey | None = None,
        latency_model: LatencyModel | None = None,
        clock: Callable[[], float] = time.time,
        drift: DriftRecorder | None = None,
        watch_extraction: bool = True,
    ) -> None:
        self.caps = caps
        self.clock = clock  # wall time: plan and menu expiry are compared with it, drift windows timed by it
        self.latency_model = latency_model
        self.since_switch = WARMUP_INFERENCES if active else 0  # inferences on the active model since it loaded
        self.device_key = device_key  # opens encrypted variants; None on devices that get none
        self.labels = dict(labels if labels is not None else caps.labels())
        self.publisher_key = publisher_key
        self.sessions = sessions
        self.active = active
        self.installed_version = active.menu_version if active else 0
        self.phase = "Running" if active else "Pending"
        self.reason = active.reason if active else "no plan yet"
        self.plan: dict[str, Any] | None = None  # the plan this device follows; None: none, or not selected
        self.plan_serial = 0  # the newest plan followed: an older one is a replay, refused
        # Until when the newest signed plan seen vouches for what this device runs (None: no plan with an expiry)
        self.fresh_until: float | None = None
        self.target_revision = active.revision if active else 0  # the revision the current plan asks for
        self.telemetry = Telemetry()
        # Drift counts of the running model's inputs and outputs (counts only); a standalone device hands in one
        # restored from its state directory, with its budget ledger on disk.
        self.drift = drift if drift is not None else DriftRecorder(BudgetLedger(DriftPolicy.daily_epsilon))
        self.drift_policy = DriftPolicy()
        # Extraction detection per client (PRADA, `tinymlops.protection.prada`); None: not asked for, or scipy (the
        # `protection` extra) is not installed, so no client is watched and the output policy's `alarmed` clients
        # are none.
        # Whether this agent can watch at all (a simulator turns it off to bound its memory); the fleet's
        # policy.protection.watchClients then turns watching on or off.
        self.can_watch = watch_extraction and extraction_available()
        self.extraction: Monitor | None = Monitor() if self.can_watch else None
        self.output_policy = OutputPolicy()
        # digest -> why it failed here; cleared when a newer menu arrives
        self.rejected: dict[str, str] = {}
        self.module_error: str | None = None  # why a pre/post module failed the last inference it failed
        # The device's own last layer on its verified base (`agent/personalise.py`): it serves only while it was
        # fitted on the active variant in the active revision and the fleet's policy does not turn it off.
        self.personal: Personalised | None = None
        self.personalisation = PersonalisationPolicy()
        # Where each inference runs (local, split with the gateway, cascade; `agent/hybrid.py`), when the fleet's
        # policy has a hybrid section and the device has a gateway; used while it wraps the active runner.
        self.hybrid: HybridExecutor | None = None
        self.context = DeviceContext()
        self.menu: dict[str, Any] | None = None  # the last verified menu, for offline switching
        self.policy: dict[str, Any] = {}
        self.choice: Choice | None = None
        # digests whose verified artifact this device holds (in a real agent: on disk; here: loaded)
        self.cached: set[str] = {active.sha256} if active else set()
        self._menu_sha: str | None = None  # the digest of the plan's menu verified last, and that menu
        self._plan_menu: dict[str, Any] | None = None
        self._decided: tuple[str, int, object] | None = None  # (menu digest, revision, context) of the last choice
        self._mismatches = 0  # consecutive polls that saw a signature mismatch

    # --- steps, each called with bytes the caller fetched ------------------------------

    def accept_plan(self, plan_json: bytes, signature: bytes | str) -> dict[str, Any] | None:
        """The verified plan when this device belongs to its fleet; None (and phase Pending) otherwise.

        An expired plan is never taken as new (ExpiredError: a replay, or a mirror that stopped updating);
        the plan already followed is taken again however old, and its expiry makes the device stale."""
        plan = verify_plan(plan_json, signature, self.publisher_key)
        serial = int(plan.get("serial") or 0)
        if serial < self.plan_serial:
            raise DowngradeError(
                f"plan.json: serial {serial} is older than the plan {self.plan_serial} already followed")
        expires = expiry(plan, what=PLAN_FILE)
        now = self.clock()
        if expired(expires, now) and serial != self.plan_serial:
            assert expires is not None
            if self.fresh_until is None:  # nothing fresher seen: this is as fresh as this device can be
                self.fresh_until = expires
            raise ExpiredError(
                f"{PLAN_FILE}: serial {serial} expired at {plan['expires']} ({now - expires:.0f} s ago, beyond the "
                f"{CLOCK_SKEW_S:.0f} s allowed for clock skew): refused as new")
        self.plan_serial = serial
        self.fresh_until = expires
        if not matches(plan.get("selector"), self.labels):
            self.plan = None
            fleet = plan["fleet"]
            self._set("Pending", f"not selected by fleet {fleet.get('namespace')}/{fleet.get('name')}")
            return None
        self.plan = plan
        return plan

    def accept_menu(self, menu_json: bytes, signature: bytes | str, *, pinned: bool = False) -> dict[str, Any]:
        """The verified menu.  `pinned`: the newest signed plan names this menu's digest, which authorises an
        older version (a rollback to the stable revision); otherwise older than installed is a downgrade."""
        menu = verify_menu(menu_json, signature, self.publisher_key,
                           installed_version=0 if pinned else self.installed_version,
                           now=None if pinned else self.clock())
        if int(menu["version"]) > self.installed_version:
            self.rejected.clear()
        return menu

    def no_plan(self, fleet: str) -> None:
        """Nothing is published for `fleet` (namespace/name): follow nothing; a running model keeps serving."""
        self.plan = None
        if self.active is None:
            self._set("Pending", f"no plan published for {fleet}")

    def follow_plan(self) -> Steps:
        """Follow the accepted plan: its menu → choose → keep, or download and install.

        A generator so the sequence reads as one function and still does no IO: each `yield`
        names a key to fetch and takes its bytes back.  The menu is fetched once per digest and
        the choice made once per (menu, revision, context); a blob only for a switch.  Failures
        raise a TinyMLOpsError, which the caller hands back (`sync_failed`, `signature_mismatch`).
        """
        if self.plan is None:
            return
        followed = follow(self.plan, self.caps.name)
        menu_ref, revision = followed.menu, followed.revision
        self.target_revision = revision
        folder = menu_ref.get("folder") or menu_ref["path"].removesuffix(MENU_FILE)
        if self._menu_sha != menu_ref["sha256"]:
            menu_json = yield from _required(menu_ref["path"])
            check_digest(menu_json, menu_ref["sha256"], what=menu_ref["path"], named_by="the signed plan")
            signature = yield from _required(menu_ref.get("signature") or signature_key(menu_key(folder)))
            # The signed plan pins this digest, so it may name an older menu: the stable one, after a rollback.
            self._plan_menu = self.accept_menu(menu_json, signature, pinned=True)
            self._menu_sha = menu_ref["sha256"]
        menu = self._plan_menu
        assert menu is not None
        version = int(menu["version"])
        decided = (menu_ref["sha256"], revision, self.context)
        if self.phase == "Running" and self._decided == decided and self.active is not None:
            return  # nothing changed since the last decision: keep serving
        variant = self.choose(menu, followed.policy)
        reason = self.choice.reason if self.choice else "chosen"
        if self.rejected:
            reason += f"; {len(self.rejected)} variant(s) failed here"
        self._decided = decided
        if self.active is not None and self.active.sha256 == variant["sha256"] and same_modules(
                self.active.variant, variant):
            if not self.is_active(variant, version) or self.active.revision != revision or self.phase != "Running":
                # The same bytes (maybe in a newer menu or revision): no reload.
                self.keep(variant, version, reason, revision=revision, menu_sha256=menu_ref["sha256"],
                          monitoring=menu.get("monitoring"))
            return
        self.downloading(variant)
        blob = yield from _required(blob_key(folder, variant["sha256"]))
        wrapped = None
        if variant.get("encryption") and self.device_key is not None:
            grant = yield Fetch(folder + device_grant_file(self.device_key), optional=True)
            wrapped = None if grant is None else json.loads(grant)
        entries = modules_of(menu, variant)
        blobs = {}
        for role, entry in entries.items():
            blobs[role] = yield from _required(blob_key(folder, str(entry["sha256"])))
        context = model_context(str(menu["model"]["namespace"]), str(menu["model"]["name"]))
        self.install(variant, blob, version, reason, wrapped=wrapped, context=context, revision=revision,
                     menu_sha256=menu_ref["sha256"], monitoring=menu.get("monitoring"),
                     modules=ModuleBlobs(entries, blobs) if entries else None)

    # --- how a poll ended, as the online loop saw it -------------------------------------

    def synced(self) -> None:
        """A poll went through: any signature mismatch before it was a publish in progress."""
        self._mismatches = 0

    def unreachable(self, error: BaseException) -> None:
        """The gateway did not answer: offline from the cloud's side, so keep serving and say why."""
        self.reason = f"{error}; serving {self.active.variant_id}" if self.active else str(error)

    def plan_refused(self, error: ExpiredError) -> None:
        """A plan too old to take as new: not this device's failure, so it keeps its phase and model and says why
        (its reports turn stale once the plan it follows expires too)."""
        self.reason = f"{error}; serving {self.active.variant_id}" if self.active else str(error)

    def stale_seconds(self, now: float | None = None) -> float | None:
        """How long ago the freshest plan this device has seen expired; None while it is current."""
        return stale_seconds(self.fresh_until, self.clock() if now is None else now)

    def signature_mismatch(self, error: SignatureError) -> None:
        """Bytes and signature are published as two files: one poll may see a new one with an old other.

        Nothing was installed; the menu is fetched again at the next poll (the caller fetches the plan
        again too), and only a mismatch that outlasts SIGNATURE_RETRIES polls is a failure."""
        self._menu_sha = None
        self._mismatches += 1
        if self._mismatches > SIGNATURE_RETRIES:
            self.fail(error)
        else:
            self.reason = f"{error}; retrying"

    def sync_failed(self, error: TinyMLOpsError) -> None:
        """Any other failed poll: recorded as a failure unless a failed install already recorded its own."""
        if self.phase != "Failed":
            self.fail(error)

    def choose(self, menu: Mapping[str, Any], policy: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        """The best variant for this device in its current context, from `menu` (records why in `choice`).

        Variants that failed here are excluded; offline, only variants already on the device qualify.
        """
        self.menu = dict(menu)
        self.policy = dict(policy or {})
        try:
            self.drift_policy = DriftPolicy.from_policy(self.policy)
        except SpecError:
            self.drift_policy = DriftPolicy()  # a signed policy this agent cannot use: send no drift
        try:
            self.output_policy = OutputPolicy.from_policy(self.policy)
        except SpecError:
            # A signed output policy this agent cannot read: label only, the strictest, rather than full outputs.
            self.output_policy = OutputPolicy(mode="top1")
        try:
            self.personalisation = PersonalisationPolicy.from_policy(self.policy)
        except SpecError:
            self.personalisation = PersonalisationPolicy(enabled=False)  # unreadable: the signed base alone
        try:
            self.watch(watch_clients(self.policy))
        except SpecError:
            self.watch(True)  # a signed switch this agent cannot read: keep watching, the safer side
        self.choice = choose_in_context(
            menu["variants"], self.caps, SelectionPolicy.from_plan(self.policy), self.context,
            exclude=self.rejected.keys(), active_sha256=self.active.sha256 if self.active else None,
            cached=self.cached,
        )
        return self.choice.variant

    def watch(self, on: bool) -> None:
        """Follow the fleet's watchClients switch: start a monitor (when this agent can watch) or drop it and
        what it held (earlier queries, alarms)."""
        if not on:
            self.extraction = None
        elif self.extraction is None and self.can_watch:
            self.extraction = Monitor()

    def reconsider(self, context: DeviceContext) -> SwitchResult | None:
        """Apply a new context (battery, charger, network): switch offline among cached variants if it changes the
        choice.  Returns the switch made, or None; the reason is recorded either way."""
        self.context = context
        if self.menu is None or self.active is None:
            return None
        variant = self.choose(self.menu, self.policy)
        if variant["sha256"] == self.active.sha256:
            self.reason = f"kept {self.active.variant_id}: {self.choice.reason if self.choice else ''}"
            return None
        runner = self.sessions.get(str(variant["sha256"]))
        if runner is None or not same_modules(self.active.variant, variant):
            return None  # chosen but not on the device (or its modules are not): the next online sync downloads it
        self._set("Verifying", f"checking {variant['id']}")
        try:
            health_check(runner, variant)
        except TinyMLOpsError as exc:
            self.fail(exc, digest=str(variant["sha256"]))
            return None
        reason = f"switched offline: {self.choice.reason}" if self.choice else "switched offline"
        self.active = ActiveModel(variant, self.active.menu_version, runner, reason, time.time(),
                                  self.active.revision, self.active.menu_sha256, self.active.monitoring,
                                  self.active.modules)
        self.since_switch = 0
        self._set("Running", reason)
        return SwitchResult(switched=True, variant_id=str(variant["id"]), load_ms=None)

    def is_active(self, variant: Mapping[str, Any], menu_version: int) -> bool:
        return self.active is not None and self.active.sha256 == variant["sha256"] and (
            self.active.menu_version == menu_version
        )

    def keep(self, variant: Mapping[str, Any], menu_version: int, reason: str, *, revision: int = 0,
             menu_sha256: str = "", monitoring: Mapping[str, Any] | None = None) -> None:
        """The new menu still picks the bytes we run: adopt its version without reloading."""
        assert self.active is not None and self.active.sha256 == variant["sha256"]
        self.active = ActiveModel(variant, menu_version, self.active.runner, reason, self.active.switched_at, revision,
                                  menu_sha256, monitoring, self.active.modules)
        self.installed_version = max(self.installed_version, menu_version)
        self._set("Running", reason)

    def install(
        self,
        variant: Mapping[str, Any],
        blob: bytes,
        menu_version: int,
        reason: str,
        *,
        wrapped: Mapping[str, Any] | None = None,
        context: bytes = b"",
        revision: int = 0,
        menu_sha256: str = "",
        monitoring: Mapping[str, Any] | None = None,
        modules: ModuleBlobs | None = None,
    ) -> SwitchResult:
        """Verify, decrypt in memory, load into a spare slot, health-check, then switch.

        The variant's pre/post `modules` (the signed menu's entries and their bytes) are verified, instantiated
        and replayed on their golden samples in the same step (`agent/modules.py`).

        On any failure the old model keeps serving.  `wrapped` is this device's wrapped data key
        and `context` the model it is bound to (`protect.model_context`), for encrypted variants;
        `menu_sha256` and `monitoring` name the menu it came from and its drift bins.
        """
        self._set("Verifying", f"checking {variant['id']}")
        try:
            verify_blob(blob, variant)
            model = open_artifact(blob, variant, device_key=self.device_key, wrapped=wrapped, context=context)
            runner, load_ms = self.sessions.load(str(variant["sha256"]), model, variant)
            health_check(runner, variant)
            loaded = load_modules(variant, modules)
        except TinyMLOpsError as exc:
            self.fail(exc, digest=str(variant["sha256"]))
            raise
        self.active = ActiveModel(variant, menu_version, runner, reason, time.time(), revision, menu_sha256,
                                  monitoring, loaded)
        self.since_switch = 0
        self.installed_version = max(self.installed_version, menu_version)
        self.cached.add(str(variant["sha256"]))
        self.telemetry.load_ms = load_ms
        self._set("Running", reason)
        return SwitchResult(switched=True, variant_id=str(variant["id"]), load_ms=load_ms)

    def downloading(self, variant: Mapping[str, Any]) -> None:
        self._set("Downloading", f"fetching {variant['id']} ({blob_size(variant)} bytes)")

    def fail(self, error: BaseException, *, digest: str | None = None) -> None:
        """Record why an update failed; the active model (if any) keeps serving."""
        if digest:
            self.rejected[digest] = str(error)
        keeping = f"; still serving {self.active.variant_id}" if self.active else ""
        self._set("Failed", f"{error}{keeping}")

    @property
    def plan_id(self) -> str | None:
        """What this device follows, as `r<revision>/v<menu version>` (its KubeEdge twin shows it)."""
        if self.plan is None:
            return None
        menu = follow(self.plan, self.caps.name).menu
        return f"r{menu.get('revision', 0)}/v{menu.get('version')}"

    # --- serving ------------------------------------------------------------------------

    def infer(self, sample: NDArray[np.float32], client: str = DEFAULT_CLIENT) -> NDArray[np.float32] | None:
        """One inference on the active model for `client` (an application id), as the output policy lets that
        client see it; None when nothing is loaded yet.

        Telemetry, drift counts and the extraction monitor see the model's true output: they measure the model
        (a rounded or one-hot output would bend the confidence histograms and the predicted class the monitor
        groups queries by), and none of them gives the output back to the client."""
        if not 1 <= len(client) <= MAX_CLIENT_CHARS:
            raise SpecError(f"client: {client[:40]!r} must be an application id of 1..{MAX_CLIENT_CHARS} characters")
        if self.active is None:
            return None
        start = time.perf_counter()
        modules = self.active.modules
        try:
            if modules is not None:
                sample = modules.pre(sample)  # the model's input, from here on what telemetry and drift see
            hybrid = self.hybrid if self.hybrid is not None and self.hybrid.runner is self.active.runner else None
            personal = self.serving_personal() if hybrid is None else None
            if personal is not None:  # the base's own output is what telemetry, drift and the monitor measure
                out, answer = personal.one(sample)
            else:
                out = answer = (hybrid or self.active.runner).one(sample)
        except WasmCallError as exc:
            self._module_failed(exc)
            return None
        except Exception:
            self.telemetry.errors += 1
            return None
        measured = (time.perf_counter() - start) * 1000
        # A simulated device runs the real model on the host, but reports what its class would take: the
        # host's wall time under thousands of agents says nothing about a Raspberry Pi (fleet/latency.py).
        reported = measured if self.latency_model is None else self.latency_model(self.active.variant,
                                                                                  self.since_switch)
        if hybrid is not None:  # end to end, the link's share included (simulated on a simulated link)
            reported = hybrid.last_ms
        self.telemetry.record(reported, warmup=self.since_switch < WARMUP_INFERENCES)
        self.since_switch += 1
        self._count_drift(sample, out)
        alarmed = self._watch(client, sample, out)
        shown = apply_output_policy(self.output_policy.mode_for(alarmed), answer,
                                    decimals=self.output_policy.decimals)
        if modules is None:
            return shown
        try:
            return modules.post(shown)
        except WasmCallError as exc:
            self._module_failed(exc)
            return None

    def serving_personal(self) -> Personalised | None:
        """The device's own head when it serves: fitted on the active variant in this revision, and allowed."""
        personal, active = self.personal, self.active
        if personal is None or active is None or self.personalisation.enabled is False:
            return None
        return personal if personal.applies_to(active.sha256, active.revision) else None

    def personalised(self) -> bool | None:
        """The report's flag: whether the device's own head serves; None when the fleet does not enable
        personalisation and the device keeps no head."""
        if self.personal is None and not self.personalisation.enabled:
            return None
        return self.serving_personal() is not None

    def _module_failed(self, error: WasmCallError) -> None:
        """A pre/post module failed this inference: counted (all errors, and by reason), and the agent serves on."""
        self.telemetry.errors += 1
        self.module_error = str(error)
        self.telemetry.module_failures[error.reason] = self.telemetry.module_failures.get(error.reason, 0) + 1

    def _watch(self, client: str, sample: NDArray[np.float32], out: NDArray[np.float32]) -> bool:
        """Feed the client's extraction monitor; whether the client is under alarm."""
        if self.extraction is None:
            return False
        predicted = int(np.argmax(np.asarray(out).reshape(-1)))
        return self.extraction.observe(client, sample, predicted, now=self.clock()) is not None

    def extraction_report(self) -> Extraction | None:
        """The monitor's clients and alarms as the report carries them; None when no client was watched."""
        monitor = self.extraction
        if monitor is None or not (monitor.clients() or monitor.alarms):
            return None
        alarms = sorted(monitor.alarms.values(), key=lambda a: (a.since, a.client))[:MAX_EXTRACTION_ALARMS]
        return Extraction(len(set(monitor.clients()) | set(monitor.alarms)),
                          tuple(ExtractionAlarm(a.client, a.since, a.w) for a in alarms))

    def _count_drift(self, sample: NDArray[np.float32], out: NDArray[np.float32]) -> None:
        """Count this inference into the drift window, when the policy asks and the menu has bins.

        Only counts are kept (`tinymlops.drift.window`); the input and the output are not."""
        active = self.active
        if not self.drift_policy.enabled or active is None or not active.monitoring:
            return
        try:
            source = Source(active.menu_sha256, active.revision, variant_sha256(active.variant))
            self.drift.observe(self.drift_policy, source, active.monitoring, sample, out, now=self.clock())
        except (ValueError, TinyMLOpsError) as exc:  # bins that do not fit this model: a factory bug, said once
            message = f"drift not counted for {active.variant_id}: {exc}"
            if message not in self.drift.withheld:
                self.drift.withheld.append(message)

    def record_fault(self) -> None:
        """An inference crashed where `infer` did not see it (the application's runtime; a simulated fault)."""
        self.telemetry.errors += 1

    def report(self, *, namespace: str, fleet: str, now: float | None = None, buffer_dropped: int = 0) -> Report:
        """The gateway report for what happened since the previous one; resets the counters.

        `buffer_dropped`: the reports the outbox dropped so far (the online loop keeps the outbox)."""
        telemetry, self.telemetry = self.telemetry, Telemetry()
        active = self.active
        now = self.clock() if now is None else now
        self.drift.close_due(self.drift_policy, now)  # a window whose time is up rides with this report
        drift, drift_withheld = self.drift.take()
        return Report(
            device=self.caps.name,
            namespace=namespace,
            fleet=fleet,
            device_class=self.caps.device_class,
            arch=self.caps.arch,
            phase=self.phase,
            menu_version=active.menu_version if active else 0,
            variant=active.variant_id if active else None,
            variant_sha256=active.sha256 if active else None,
            revision=active.revision if active else 0,
            target_revision=self.target_revision,
            # Where inferences run now, and why, beside why this variant (free text, truncated, never refused).
            reason=self.reason if self.hybrid is None or self.hybrid.choice is None else (
                f"{self.reason}; hybrid {self.hybrid.choice.reason}"),
            inferences=telemetry.inferences,
            errors=telemetry.errors,
            latencies_ms=tuple(round(x, 4) for x in telemetry.latencies_ms),
            warmup_latencies_ms=tuple(round(x, 4) for x in telemetry.warmup_latencies_ms),
            load_ms=None if telemetry.load_ms is None else round(telemetry.load_ms, 3),
            # The model's memory (the menu's estimate for one inference) and the energy these inferences cost
            # under the per-device-class model in selection/energy.py; both stay estimates until a device meters them.
            model_memory_bytes=int(active.variant["metrics"].get("memory_bytes", 0)) if active else 0,
            energy_mj=round(telemetry.inferences * self._energy_per_inference_mj(), 6) if active else 0.0,
            sent_at=now,
            buffer_dropped=buffer_dropped,
            stale_seconds=self.stale_seconds(now),
            # A closed window of another revision (the device switched since) would be refused: not sent.
            drift=drift if drift is not None and active is not None and drift.revision == active.revision else None,
            drift_withheld=drift_withheld,
            extraction=self.extraction_report(),
            personalised=self.personalised(),
        )

    def _energy_per_inference_mj(self) -> float:
        assert self.active is not None
        return energy_mj(self.active.variant, target_model(self.caps.device_class, self.caps.arch))

    def _set(self, phase: str, reason: str) -> None:
        assert phase in PHASES, phase
        self.phase, self.reason = phase, reason


def extraction_available() -> bool:
    """Whether scipy (the `protection` extra, Shapiro-Wilk) is installed; looked up, not imported."""
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


def _required(key: str) -> Generator[Fetch, bytes | None, bytes]:
    """Fetch `key`, which must exist (the caller raises when the store lacks it)."""
    body = yield Fetch(key)
    assert body is not None, key
    return body
