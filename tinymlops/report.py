"""The device report: what an agent tells the gateway about itself, defined once (pure).

The agent builds a `Report` and POSTs `to_json()` (in `{"reports": [...]}`, see
`gateway/reports.py`); the gateway reads each one with `Report.from_json`.  Devices
are not trusted, so every field is checked and every rejection names the field
(`reports[3].phase: ...`) so whoever runs the agent knows what to fix.
`schemas/report.schema.json` describes the same format for other clients; a test
keeps it in step with the model and the limits here.

Compatibility.  Unknown fields are ignored so newer agents can talk to an older
gateway, and fields added later are optional so older agents can talk to a newer
one: a report without `revision` (the rollout revision of the running model) counts
as revision 0, and one without `target_revision` (the revision the device follows
under the current plan) as already on its running revision.  `schema` numbers the
format: agents send SCHEMA_VERSION, and a report without it (every agent before the
field existed) is version 1.  A new optional field keeps the number; a change an
older reader would misread (a field that becomes required or changes meaning)
raises it, and a reader rejects a version it does not know, naming it.

Signed reports.  A device with an identity key (`tinymlops keys device` makes it)
sends each report inside a `SignedReport` envelope,
`{"report": "<the report's canonical JSON, as text>", "signature": "<base64 Ed25519>"}`:
the signature covers the exact bytes of that text, which travel as a JSON string, so
the gateway verifies before it parses and never re-serialises, and a relay (an edge
node's store-and-forward) that decodes and re-encodes the batch changes nothing the
signature covers.  Inside, `seq` numbers the device's signed reports, increasing by
at least one each time and never reused (the agent persists it), so the gateway can
refuse a replay.  `gateway/authn.py` decides whose signature counts.

Staleness.  `stale_seconds` (absent or null: fresh) says how long ago the freshest
signed plan the device has seen expired (`tinymlops.freshness`): it cannot get a
fresh plan, so a withheld update shows instead of passing in silence.  It is a
field beside `phase`, not a phase of its own: a stale device still serves its
model, and whatever counts serving devices (convergence, canary analysis, which
count `Running`) must keep counting it, while a failed or downloading device may
be stale as well.

Drift.  `drift` (absent when the fleet's drift telemetry is off) carries one closed
window of the device's drift histograms (`DriftHistograms`): counts only, in the
bins of the running revision's menu (`tinymlops/drift/`), never an input or an
output, and names the variant that counted it (`variant_sha256`: the fleet compares
the output histograms with that variant's reference).  `drift_withheld` says why a
closed window was not sent (its daily privacy budget is spent).  Whether the bins
fit the menu, and whether the menu lists the variant, is checked against the menu
(`tinymlops.drift.merge.check`, against `tinymlops.drift.reference.Monitoring`);
what one report can check alone is here: counts that are finite and non-negative,
integers that add up to `rows` in every histogram in `histograms` mode, an ε in
`histograms+dp` mode, and a revision that is the one the device runs.

Instructions.  `instructions` (absent: 0, not measured) is what the device's own
timer counted for the inferences the report covers: a microcontroller behind an
edge node measures them exactly (`tinymlops/faredge/`); the gateway sums them.

Extraction.  `extraction` (absent when the agent watches no client) says how many
clients of the model (application ids, `agent infer --client`) the device's
PRADA-style monitor watches and which of them are under an extraction alarm
(`tinymlops.protection.prada`): the client's id, when the alarm was raised (device
clock) and the Shapiro-Wilk W that raised it; at most MAX_EXTRACTION_ALARMS, never
a query or an output.

Personalisation.  `personalised` (absent when the device's fleet does not enable it and it keeps no head of its
own) says whether the device's own last layer, fitted on its own data (`tinymlops.personalise`), serves on top
of the signed variant (true) or the base serves as published (false).  A flag: the head's weights and the data
never leave the device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.errors import InvalidReportError
from tinymlops.signing import sign, verify

SCHEMA_VERSION = 1
PHASES = ("Pending", "Downloading", "Verifying", "Running", "Failed")
OFFLINE = "Offline"  # never reported by a device: the gateway's verdict on silence

MAX_LATENCIES = 256  # per list and report; a device counts later samples instead of keeping them
MAX_NAME_CHARS = 253  # a Kubernetes object name
MAX_REASON_CHARS = 1024  # reasons are free text (exception messages): truncated, never rejected
# Revisions grow by one per rollout change; a bound keeps a lying device from
# sending a 10**100 that every consumer must then carry as an unbounded int.
MAX_REVISION = 10**9
MAX_SEQ = 2**63 - 1  # a signed 64-bit integer: what other clients' JSON libraries still read exactly
DRIFT_MODES = ("histograms", "histograms+dp")  # the fleet policy's modes that send histograms (not "off")
MAX_DRIFT_FEATURES = 64  # histograms per report: the factory makes at most 16 (drift/features.py)
MAX_DRIFT_BINS = 1024  # per histogram: a class histogram has one bin per class
MAX_SHA_CHARS = 64  # a hex sha256
MAX_EXTRACTION_ALARMS = 16  # the agent watches at most this many clients (prada.PradaConfig.max_clients)
MAX_CLIENT_CHARS = 128  # an application id


@dataclass(frozen=True)
class ExtractionAlarm:
    client: str
    since: float  # when the alarm was raised, device clock (seconds since the epoch)
    w: float  # the Shapiro-Wilk statistic that raised it (0..1)


@dataclass(frozen=True)
class Extraction:
    """The device's extraction monitor: clients watched, and those under alarm."""

    clients_watched: int
    alarms: tuple[ExtractionAlarm, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"clients_watched": self.clients_watched,
                "alarms": [{"client": a.client, "since": a.since, "w": a.w} for a in self.alarms]}

    @classmethod
    def from_json(cls, raw: Any, *, where: str = "report.extraction") -> Extraction:
        if not isinstance(raw, Mapping):
            raise InvalidReportError(f"{where}: is not a JSON object")
        watched = _count(raw, "clients_watched", where, default=None)
        alarms = raw.get("alarms", [])
        if not isinstance(alarms, list) or len(alarms) > MAX_EXTRACTION_ALARMS:
            raise InvalidReportError(f"{where}.alarms: must be a list of at most {MAX_EXTRACTION_ALARMS} alarms")
        read = []
        for i, alarm in enumerate(alarms):
            at = f"{where}.alarms[{i}]"
            if not isinstance(alarm, Mapping):
                raise InvalidReportError(f"{at}: is not a JSON object")
            client = alarm.get("client")
            if not isinstance(client, str) or not 1 <= len(client) <= MAX_CLIENT_CHARS:
                raise InvalidReportError(f"{at}.client: must be a string of 1..{MAX_CLIENT_CHARS} characters")
            w = _non_negative(alarm.get("w"), f"{at}.w")
            if w > 1:
                raise InvalidReportError(f"{at}.w: {w} is not a Shapiro-Wilk statistic (0..1)")
            read.append(ExtractionAlarm(client, _number(alarm.get("since"), f"{at}.since"), w))
        return cls(watched, tuple(read))


@dataclass(frozen=True)
class DriftHistograms:
    """One closed window of a device's drift histograms, in its menu's bins (counts only)."""

    menu_sha256: str  # the menu whose `monitoring` bins these are
    revision: int
    variant_sha256: str  # the variant that counted the window (`drift.reference.variant_sha256` of its menu entry)
    window: int  # the device's own window index, counting from 0
    rows: int  # the inferences the window counted: windowInferences, or fewer when it closed on windowSeconds
    mode: str  # "histograms": exact counts; "histograms+dp": noised, then clamped at 0 (drift/privacy.py)
    epsilon: float | None  # the window's privacy loss in histograms+dp mode; None otherwise
    features: tuple[tuple[float, ...], ...]
    confidence: tuple[float, ...]
    classes: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"menu_sha256": self.menu_sha256, "revision": self.revision,
                "variant_sha256": self.variant_sha256, "window": self.window,
                "rows": self.rows, "mode": self.mode, "epsilon": self.epsilon,
                "features": [list(h) for h in self.features], "confidence": list(self.confidence),
                "classes": list(self.classes)}

    @classmethod
    def from_json(cls, raw: Any, *, where: str = "report.drift") -> DriftHistograms:
        """Validated drift histograms; InvalidReportError naming the first bad field."""
        if not isinstance(raw, Mapping):
            raise InvalidReportError(f"{where}: is not a JSON object")
        mode = raw.get("mode")
        if mode not in DRIFT_MODES:
            raise InvalidReportError(f"{where}.mode: {mode!r} is not one of {', '.join(DRIFT_MODES)}")
        epsilon = raw.get("epsilon")
        if mode == "histograms+dp":
            if epsilon is None or _number(epsilon, f"{where}.epsilon") <= 0:
                raise InvalidReportError(f"{where}.epsilon: {epsilon!r}: mode histograms+dp needs an epsilon > 0")
            epsilon = float(epsilon)
        elif epsilon is not None:
            raise InvalidReportError(f"{where}.epsilon: {epsilon!r}: mode histograms adds no noise, epsilon is null")
        menu_sha = _name(raw, "menu_sha256", where)
        if menu_sha is None or len(menu_sha) > MAX_SHA_CHARS:
            raise InvalidReportError(f"{where}.menu_sha256: is not a sha256")
        variant_sha = _name(raw, "variant_sha256", where)
        if variant_sha is None or len(variant_sha) > MAX_SHA_CHARS:
            raise InvalidReportError(f"{where}.variant_sha256: is not a sha256")
        rows = _count(raw, "rows", where, default=None)
        features = raw.get("features")
        if not isinstance(features, list) or not 1 <= len(features) <= MAX_DRIFT_FEATURES:
            raise InvalidReportError(f"{where}.features: must be a list of 1..{MAX_DRIFT_FEATURES} histograms")
        exact = mode == "histograms"
        return cls(
            menu_sha256=menu_sha, revision=_revision(raw, "revision", where, default=0), variant_sha256=variant_sha,
            window=_count(raw, "window", where, default=None), rows=rows, mode=str(mode), epsilon=epsilon,
            features=tuple(_histogram(h, f"{where}.features[{i}]", rows, exact) for i, h in enumerate(features)),
            confidence=_histogram(raw.get("confidence"), f"{where}.confidence", rows, exact),
            classes=_histogram(raw.get("classes"), f"{where}.classes", rows, exact),
        )


@dataclass(frozen=True)
class Report:
    """What happened on one device since its previous report, and what it runs now."""

    device: str
    namespace: str
    fleet: str
    device_class: str
    arch: str
    phase: str
    menu_version: int
    sent_at: float
    variant: str | None = None
    variant_sha256: str | None = None
    reason: str = ""
    inferences: int = 0
    errors: int = 0
    latencies_ms: tuple[float, ...] = ()  # steady state
    warmup_latencies_ms: tuple[float, ...] = ()  # the first inferences after a switch
    load_ms: float | None = None  # None: nothing loaded (no switch, or a session already in memory)
    energy_mj: float = 0.0  # estimated energy of these inferences (selection/energy.py's per-target model)
    revision: int = 0  # rollout revision of the running model; 0: unknown (an agent older than rollouts)
    target_revision: int = 0  # the revision the device follows; equals `revision` once it runs it
    model_memory_bytes: int = 0  # the running variant's memory for one inference, as its menu estimates
    buffer_dropped: int = 0  # reports the device's outbox dropped while it could not upload
    seq: int = 0  # this device's sequence number of a signed report (>= 1); 0: an unsigned report
    stale_seconds: float | None = None  # since the freshest plan seen expired; None: fresh (module docstring)
    schema: int = SCHEMA_VERSION
    drift: DriftHistograms | None = None  # a closed window's histograms; None: none to send (or drift is off)
    drift_withheld: str | None = None  # why a closed window's histograms were not sent (a spent privacy budget)
    extraction: Extraction | None = None  # the extraction monitor's clients and alarms; None: no client watched
    # Instructions the device's timer counted for these inferences (a microcontroller measures them exactly;
    # 0: not measured, and then absent from the wire form).
    instructions: int = 0
    personalised: bool | None = None  # the device's own last layer serves (a flag, never weights); None: not on

    def to_json(self) -> dict[str, Any]:
        """The wire form: a JSON object with every field (lists, not tuples); `drift`, `drift_withheld`,
        `extraction` and `personalised` only when they have something to say, so a report without them is what it
        was before them."""
        wire = {f.name: getattr(self, f.name) for f in fields(self)}
        wire["latencies_ms"] = list(self.latencies_ms)
        wire["warmup_latencies_ms"] = list(self.warmup_latencies_ms)
        for key in ("drift", "drift_withheld", "extraction", "personalised"):
            if wire[key] is None:
                del wire[key]
        if self.drift is not None:
            wire["drift"] = self.drift.to_json()
        if self.extraction is not None:
            wire["extraction"] = self.extraction.to_json()
        if not self.instructions:
            del wire["instructions"]
        return wire

    @classmethod
    def from_json(cls, raw: Any, *, where: str = "report") -> Report:
        """One validated Report; raise InvalidReportError naming the first bad field (`where` prefixes it)."""
        if not isinstance(raw, Mapping):
            raise InvalidReportError(f"{where}: is not a JSON object")
        schema = _schema(raw, where)  # first: the other fields mean what this version says
        phase = raw.get("phase")
        if phase is None:
            raise InvalidReportError(f"{where}.phase: is required")
        if phase not in PHASES:
            raise InvalidReportError(f"{where}.phase: {phase!r} is not one of {', '.join(PHASES)}")
        reason = raw.get("reason", "")
        if reason is None:
            reason = ""
        if not isinstance(reason, str):
            raise InvalidReportError(f"{where}.reason: {reason!r} is not a string")
        sent_at = raw.get("sent_at")
        if sent_at is None:
            raise InvalidReportError(f"{where}.sent_at: is required")
        load_ms = raw.get("load_ms")
        revision = _revision(raw, "revision", where, default=0)
        drift = None if raw.get("drift") is None else DriftHistograms.from_json(raw["drift"], where=f"{where}.drift")
        if drift is not None and drift.revision != revision:
            raise InvalidReportError(f"{where}.drift.revision: {drift.revision} is not the revision the device "
                                     f"runs ({revision})")
        withheld = raw.get("drift_withheld")
        if withheld is not None and not isinstance(withheld, str):
            raise InvalidReportError(f"{where}.drift_withheld: {withheld!r} is not a string")
        personalised = raw.get("personalised")
        if personalised is not None and not isinstance(personalised, bool):
            raise InvalidReportError(f"{where}.personalised: {personalised!r} is not true or false")
        return cls(
            device=str(_name(raw, "device", where)),
            namespace=str(_name(raw, "namespace", where)),
            fleet=str(_name(raw, "fleet", where)),
            device_class=str(_name(raw, "device_class", where)),
            arch=str(_name(raw, "arch", where)),
            phase=str(phase),
            menu_version=_count(raw, "menu_version", where, default=None),
            sent_at=_number(sent_at, f"{where}.sent_at"),
            variant=_name(raw, "variant", where, required=False),
            variant_sha256=_name(raw, "variant_sha256", where, required=False),
            reason=reason[:MAX_REASON_CHARS],
            inferences=_count(raw, "inferences", where, default=0),
            errors=_count(raw, "errors", where, default=0),
            energy_mj=_non_negative(raw.get("energy_mj", 0.0), f"{where}.energy_mj"),
            latencies_ms=_latencies(raw, "latencies_ms", where),
            warmup_latencies_ms=_latencies(raw, "warmup_latencies_ms", where),
            load_ms=None if load_ms is None else _non_negative(load_ms, f"{where}.load_ms"),
            revision=revision,
            target_revision=_revision(raw, "target_revision", where, default=revision),
            model_memory_bytes=_count(raw, "model_memory_bytes", where, default=0),
            buffer_dropped=_count(raw, "buffer_dropped", where, default=0),
            seq=_seq(raw, where),
            stale_seconds=_stale_seconds(raw, where),
            schema=schema,
            drift=drift,
            drift_withheld=None if withheld is None else withheld[:MAX_REASON_CHARS],
            extraction=None if raw.get("extraction") is None else Extraction.from_json(
                raw["extraction"], where=f"{where}.extraction"),
            instructions=_count(raw, "instructions", where, default=0),
            personalised=personalised,
        )


def canonical_json(report: Report) -> bytes:
    """The bytes a device signs: the wire form with sorted keys, no spaces, ASCII only.

    Verifiers never rebuild these bytes (they check the ones received); a canonical form
    only makes a report's signed text the same wherever it is produced."""
    return json.dumps(report.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


@dataclass(frozen=True)
class SignedReport:
    """A report's exact bytes and the device's Ed25519 signature over them (base64)."""

    payload: bytes
    signature: str

    def to_json(self) -> dict[str, str]:
        return {"report": self.payload.decode("ascii"), "signature": self.signature}

    @staticmethod
    def is_envelope(raw: Any) -> bool:
        """Whether a batch item is an envelope rather than a plain report (no plain report has these keys)."""
        return isinstance(raw, Mapping) and ("signature" in raw or "report" in raw)

    @classmethod
    def from_json(cls, raw: Any, *, where: str = "report") -> SignedReport:
        """The envelope's parts, unverified; raise InvalidReportError naming what is missing."""
        if not isinstance(raw, Mapping):
            raise InvalidReportError(f"{where}: is not a JSON object")
        payload, signature = raw.get("report"), raw.get("signature")
        if not isinstance(payload, str):
            raise InvalidReportError(f"{where}.report: must be the signed report's JSON text (a string)")
        if not isinstance(signature, str):
            raise InvalidReportError(f"{where}.signature: must be a base64 Ed25519 signature (a string)")
        try:
            return cls(payload.encode("ascii"), signature)
        except UnicodeEncodeError as exc:  # canonical_json is ASCII: anything else was not signed by an agent
            raise InvalidReportError(f"{where}.report: is not ASCII JSON text") from exc

    def verify(self, key: Ed25519PublicKey, *, where: str = "report") -> None:
        """Raise SignatureError unless `key` signed exactly these bytes."""
        verify(key, self.payload, self.signature, what=where)

    def open(self, *, where: str = "report") -> Report:
        """The report these bytes hold, validated field by field (whether the signature holds is not checked here)."""
        try:
            raw = json.loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise InvalidReportError(f"{where}.report: not valid JSON ({str(exc)[:200]})") from exc
        return Report.from_json(raw, where=where)


def sign_report(report: Report, key: Ed25519PrivateKey, seq: int) -> SignedReport:
    """`report` numbered `seq` and signed with the device's identity key."""
    if not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"seq must be in 1..{MAX_SEQ}, got {seq}")
    payload = canonical_json(replace(report, seq=seq))
    return SignedReport(payload, sign(key, payload))


def _name(raw: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise InvalidReportError(f"{where}.{key}: is required")
        return None
    if not isinstance(value, str):
        raise InvalidReportError(f"{where}.{key}: {value!r} is not a string")
    if not 1 <= len(value) <= MAX_NAME_CHARS:
        raise InvalidReportError(f"{where}.{key}: must be 1..{MAX_NAME_CHARS} characters, got {len(value)}")
    # Namespace and fleet become URL path segments of the summary endpoint.
    if key in ("namespace", "fleet") and "/" in value:
        raise InvalidReportError(f"{where}.{key}: {value!r} must not contain '/'")
    return value


def _count(raw: Mapping[str, Any], key: str, where: str, *, default: int | None) -> int:
    value = raw.get(key, default)
    if value is None:
        raise InvalidReportError(f"{where}.{key}: is required")
    # bool is an int subclass in Python; `true` is not a count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidReportError(f"{where}.{key}: {value!r} is not an integer >= 0")
    return value


def _revision(raw: Mapping[str, Any], key: str, where: str, *, default: int) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REVISION:
        raise InvalidReportError(f"{where}.{key}: {value!r} is not an integer in 0..{MAX_REVISION}")
    return value


def _seq(raw: Mapping[str, Any], where: str) -> int:
    value = raw.get("seq", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise InvalidReportError(f"{where}.seq: {value!r} is not an integer in 0..{MAX_SEQ}")
    return value


def _stale_seconds(raw: Mapping[str, Any], where: str) -> float | None:
    value = raw.get("stale_seconds")
    return None if value is None else _non_negative(value, f"{where}.stale_seconds")


def _schema(raw: Mapping[str, Any], where: str) -> int:
    value = raw.get("schema")
    if value is None:
        return 1  # sent before reports carried their version
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= SCHEMA_VERSION:
        raise InvalidReportError(f"{where}.schema: {value!r} is not a report version this reader knows "
                                 f"(1..{SCHEMA_VERSION})")
    return value


def _number(value: Any, what: str) -> float:
    # json.loads accepts NaN and Infinity; neither is a latency or a timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidReportError(f"{what}: {value!r} is not a finite number")
    return float(value)


def _non_negative(value: Any, what: str) -> float:
    number = _number(value, what)
    if number < 0:
        raise InvalidReportError(f"{what}: {value!r} is negative")
    return number


def _latencies(raw: Mapping[str, Any], key: str, where: str) -> tuple[float, ...]:
    latencies = raw.get(key, [])
    if not isinstance(latencies, list):
        raise InvalidReportError(f"{where}.{key}: is not a list")
    if len(latencies) > MAX_LATENCIES:
        raise InvalidReportError(f"{where}.{key}: {len(latencies)} values, at most {MAX_LATENCIES}")
    return tuple(_non_negative(value, f"{where}.{key}[{i}]") for i, value in enumerate(latencies))


def _histogram(raw: Any, what: str, rows: int, exact: bool) -> tuple[float, ...]:
    """Counts that are finite and >= 0; in exact mode integers that count every one of the `rows` once."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_DRIFT_BINS:
        raise InvalidReportError(f"{what}: must be a list of 1..{MAX_DRIFT_BINS} counts")
    if exact:
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in raw):
            raise InvalidReportError(f"{what}: exact histograms hold integer counts >= 0")
        if sum(raw) != rows:
            raise InvalidReportError(f"{what}: counts add up to {sum(raw)}, the window has {rows} rows")
        return tuple(raw)
    return tuple(_non_negative(c, f"{what}[{i}]") for i, c in enumerate(raw))
