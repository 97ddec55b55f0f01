"""A standalone device between commands: serve, record, and show the next report, from its state directory.

`tinymlops agent infer` and `tinymlops agent report` are separate processes, so
what a resident agent keeps in memory lives in the state directory (`slots.py`
lists the files): the active slot, the telemetry policy (`policy.json`), what was
recorded since the last report (`telemetry.json`: counts, latencies, the drift
window's counts and the extraction monitor's clients and alarms, never an input or
an output: a client's query history lives as long as one `agent infer` process) and the privacy budget ledger.  The
same `DeviceAgent` serves and builds the report, so a sideloaded device reports as a
fleet's does; its report is signed with the device's identity key (`identity.pem`)
and numbered by `identity.SequenceFile`, exactly as it would be uploaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.identity import SEQUENCE_FILE, ReportSigner, SequenceFile
from tinymlops.agent.install import host_capabilities, restore
from tinymlops.agent.metering import Meter, read_meter
from tinymlops.agent.personalise import attach
from tinymlops.agent.sessions import SessionCache
from tinymlops.agent.slots import DEVICE_KEY, PINNED_KEY, read_active
from tinymlops.agent.telemetry import Telemetry, TelemetryPolicy
from tinymlops.drift.policy import DriftPolicy
from tinymlops.drift.privacy import BudgetLedger
from tinymlops.drift.reference import PROBABILITIES, confidence_and_class, scores_kind
from tinymlops.drift.window import DriftRecorder
from tinymlops.envelope import load_device_key
from tinymlops.errors import IntegrityError, LicenseRefusedError, SignatureError, SpecError, TinyMLOpsError
from tinymlops.federated.participation import ParticipationPolicy
from tinymlops.personalise import PersonalisationPolicy
from tinymlops.protection.policy import OutputPolicy, watch_clients
from tinymlops.protection.prada import DEFAULT_CLIENT, Monitor
from tinymlops.report import Report, SignedReport
from tinymlops.signing import IDENTITY_KEY_FILE, load_private_key, load_public_key
from tinymlops.store import atomic_write, read_json_file

POLICY, TELEMETRY, BUDGET = "policy.json", "telemetry.json", "privacy-budget.json"
STANDALONE_NAMESPACE, STANDALONE_FLEET = "default", "standalone"  # what a sideloaded device reports under


def save_policy(state_dir: Path, policy: Mapping[str, Any]) -> None:
    """Keep the device's telemetry policy (a fleet's `policy` object), checked as a plan's is."""
    TelemetryPolicy.from_plan(policy)
    DriftPolicy.from_policy(policy)
    OutputPolicy.from_policy(policy)
    watch_clients(policy)
    ParticipationPolicy.from_policy(policy)
    PersonalisationPolicy.from_policy(policy)
    atomic_write(state_dir / POLICY, json.dumps(dict(policy), indent=2, sort_keys=True).encode())


def read_policy(state_dir: Path) -> dict[str, Any]:
    return _json_object(state_dir / POLICY, SpecError)


def _json_object(path: Path, error: type[TinyMLOpsError]) -> dict[str, Any]:
    """The JSON object in `path`, {} when there is none yet; `error` names the file when it is not one."""
    value = read_json_file(path, error)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{path}: not a JSON object")
    return value


def open_agent(state_dir: Path) -> DeviceAgent:
    """The device's agent as the last command left it: active model, policy and what was recorded since."""
    if not (state_dir / PINNED_KEY).is_file():
        raise SignatureError(f"{state_dir}: nothing installed (no {PINNED_KEY}); run `tinymlops agent install` first")
    publisher = load_public_key((state_dir / PINNED_KEY).read_bytes(), source=str(state_dir / PINNED_KEY))
    device_pem = state_dir / DEVICE_KEY
    device_key = load_device_key(device_pem.read_bytes(), source=str(device_pem)) if device_pem.is_file() else None
    sessions = SessionCache()
    active = restore(read_active(state_dir), sessions, device_key)
    policy = read_policy(state_dir)
    daily = DriftPolicy.from_policy(policy).daily_epsilon
    saved = _read_saved(state_dir)
    ledger = BudgetLedger(daily, state_dir / BUDGET)
    recorder = DriftRecorder.from_json(saved["drift"], ledger) if "drift" in saved else DriftRecorder(ledger)
    agent = DeviceAgent(host_capabilities(state_dir), publisher, sessions, active=active, device_key=device_key,
                        drift=recorder)
    agent.policy = policy
    agent.drift_policy = DriftPolicy.from_policy(policy)
    agent.output_policy = OutputPolicy.from_policy(policy)
    agent.watch(watch_clients(policy))
    agent.personalisation = PersonalisationPolicy.from_policy(policy)
    attach(state_dir, agent)  # the device's own last layer, when it was fitted on this variant and revision
    if agent.extraction is not None and "extraction" in saved:
        agent.extraction = Monitor.from_json(_extraction(state_dir, saved))
    if active is not None and saved.get("switched_at") == active.switched_at:
        agent.telemetry = Telemetry(**saved["telemetry"])
        agent.since_switch = int(saved["since_switch"])
    return agent


def save_agent(state_dir: Path, agent: DeviceAgent) -> None:
    """Persist what the agent recorded (counts, latencies, drift counts; no input, no output)."""
    saved = {"telemetry": asdict(agent.telemetry), "since_switch": agent.since_switch,
             "switched_at": agent.active.switched_at if agent.active else None, "drift": agent.drift.to_json()}
    if agent.extraction is not None:
        saved["extraction"] = agent.extraction.to_json()
    atomic_write(state_dir / TELEMETRY, json.dumps(saved).encode())


@dataclass(frozen=True)
class Predictions:
    variant: str
    scores: NDArray[np.float32]  # one row per input; printed on this device, never reported
    kind: str  # what the scores are: the menu's monitoring `scores`, or (without one) judged over this batch
    client: str = DEFAULT_CLIENT
    extraction_alarm: bool = False  # the client is under an extraction alarm (after this batch)
    post_module: str | None = None  # the digest of the post module whose outputs `scores` are (its own layout)
    personalised: bool = False  # the device's own last layer gave these scores (`agent personalise`)

    def confidence_and_class(self) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """Each input's top-class probability and predicted class."""
        if not len(self.scores):
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        return confidence_and_class(self.scores, kind=self.kind)


def infer(state_dir: Path, x: NDArray[np.float32], client: str = DEFAULT_CLIENT) -> Predictions:
    """Run the active variant on each sample of `x` as the device's application `client` would, and record it
    (the scores are what the output policy lets that client see)."""
    agent = open_agent(state_dir)
    if agent.active is None:
        raise IntegrityError(f"{state_dir}: no variant installed; run `tinymlops agent install` first")
    meter = _licence_meter(state_dir, len(x))
    outputs = []
    try:
        for i, sample in enumerate(x):
            sample = np.ascontiguousarray(sample)
            agent.module_error = None
            out = agent.infer(sample, client)
            if out is None:
                save_agent(state_dir, agent)
                why = f": {agent.module_error}" if agent.module_error else ""
                raise IntegrityError(f"input {i}: the active variant {agent.active.variant_id} failed on it "
                                     f"(shape {sample.shape}, dtype {sample.dtype}){why}")
            if meter is not None:
                meter.record(sample.data, np.ascontiguousarray(out).data, time.time())
            outputs.append(np.asarray(out).reshape(-1))
    finally:
        if meter is not None:
            meter.close(time.time())
    save_agent(state_dir, agent)
    scores = np.stack(outputs) if outputs else np.zeros((0, 0), np.float32)
    monitoring = agent.active.monitoring or {}
    kind = str(monitoring.get("scores") or (scores_kind(scores) if len(scores) else PROBABILITIES))
    alarmed = agent.extraction is not None and agent.extraction.alarmed(client)
    post = agent.active.modules.digests.get("post") if agent.active.modules else None
    return Predictions(agent.active.variant_id, scores, kind, client, alarmed, post,
                       agent.serving_personal() is not None)


def _licence_meter(state_dir: Path, wanted: int) -> Meter | None:
    """The licence's meter when this device has one, once it admits `wanted` inferences (LicenseRefusedError
    says why not); None for an unlicensed device, which serves unmetered."""
    if read_meter(state_dir) is None:
        return None
    from tinymlops.agent.licensed import open_meter  # verifies the token: needs the licensing extra

    meter = open_meter(state_dir, time.time())
    assert meter is not None  # meter.json exists
    try:
        meter.admit(wanted, time.time())
    except LicenseRefusedError:
        meter.close(time.time())
        raise
    return meter


def next_report(state_dir: Path, *, namespace: str = STANDALONE_NAMESPACE,
                fleet: str = STANDALONE_FLEET) -> SignedReport:
    """The report this device would upload next, signed and numbered; what it counts stays recorded
    (nothing is uploaded), so asking twice shows the same counts under a new sequence number."""
    identity = state_dir / IDENTITY_KEY_FILE
    if not identity.is_file():
        raise SignatureError(
            f"{state_dir}: no identity key ({IDENTITY_KEY_FILE}), so this device cannot sign its reports and a "
            "gateway would refuse them; provision one with `tinymlops keys device --out DIR` and "
            f"`tinymlops agent install DIR --state-dir {state_dir} --identity DIR/{IDENTITY_KEY_FILE}`")
    key = load_private_key(identity.read_bytes(), source=str(identity))
    report: Report = open_agent(state_dir).report(namespace=namespace, fleet=fleet)
    return ReportSigner(key, SequenceFile(state_dir / SEQUENCE_FILE)).sign(report)


def extraction_status(state_dir: Path) -> list[dict[str, Any]]:
    """Per client the monitor watches, whether an extraction alarm is raised (and since when, with its W)."""
    saved = _extraction(state_dir, _read_saved(state_dir))
    alarms = {str(a["client"]): a for a in saved["alarms"]}
    return [{"client": str(client), "alarm": client in alarms, "since": alarms.get(client, {}).get("since"),
             "w": alarms.get(client, {}).get("w")} for client in saved.get("clients", [])]


def _extraction(state_dir: Path, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The saved extraction monitor, checked: {"clients": [str], "alarms": [{"client", "since", "w"}]}."""
    raw = saved.get("extraction") or {"clients": [], "alarms": []}
    where = f"{state_dir / TELEMETRY}: extraction"
    if not isinstance(raw, Mapping) or not isinstance(raw.get("clients"), list) or not isinstance(
            raw.get("alarms"), list):
        raise IntegrityError(f"{where}: is not {{\"clients\": [...], \"alarms\": [...]}}")
    for alarm in raw["alarms"]:
        if not (isinstance(alarm, Mapping) and isinstance(alarm.get("client"), str)
                and all(isinstance(alarm.get(k), int | float) for k in ("since", "w"))):
            raise IntegrityError(f"{where}.alarms: {alarm!r} is not an alarm {{client, since, w}}")
    return dict(raw)


def _read_saved(state_dir: Path) -> dict[str, Any]:
    return _json_object(state_dir / TELEMETRY, IntegrityError)
