"""Device reports: parse and validate what agents POST to the gateway (pure).

Devices are not trusted, so every field is checked and every rejection names
the field (`reports[3].phase: ...`) so whoever runs the agent knows what to
fix.  A bad report is rejected alone: the rest of its batch is still taken,
because one broken device must not blind the gateway to its neighbours.
Unknown fields are ignored so newer agents can talk to an older gateway, and
fields added later are optional so older agents can talk to a newer one: a
report without `revision` (the rollout revision of the running model) counts
as revision 0, and one without `target_revision` (the revision the device
follows under the current plan) as already on its running revision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import TinyMLOpsError

PHASES = ("Pending", "Downloading", "Verifying", "Running", "Failed")
OFFLINE = "Offline"  # never reported by a device: the gateway's verdict on silence

MAX_REPORTS_PER_REQUEST = 1000
MAX_LATENCIES = 256
MAX_NAME_CHARS = 253  # a Kubernetes object name
MAX_REASON_CHARS = 1024  # reasons are free text (exception messages): truncated, never rejected
# Revisions grow by one per rollout change; a bound keeps a lying device from
# sending a 10**100 that every consumer must then carry as an unbounded int.
MAX_REVISION = 10**9


class InvalidReportError(TinyMLOpsError):
    """A device report (or the batch around it) breaks the report format; the message names the field."""


class BatchTooLargeError(InvalidReportError):
    """A batch holds more reports than one request may carry (HTTP 413)."""


@dataclass(frozen=True)
class Report:
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
    latencies_ms: tuple[float, ...] = field(default=())  # steady state
    warmup_latencies_ms: tuple[float, ...] = field(default=())  # the first inferences after a switch
    load_ms: float | None = None
    energy_mj: float = 0.0  # estimated energy of these inferences (the agent's per-target cost model)
    revision: int = 0  # rollout revision of the running model; 0: unknown (an agent older than rollouts)
    target_revision: int = 0  # the revision the device follows; equals `revision` once it runs it


@dataclass(frozen=True)
class Rejection:
    index: int
    error: str


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


def parse_report(raw: Any, *, where: str = "report") -> Report:
    """One validated Report; raise InvalidReportError naming the first bad field."""
    if not isinstance(raw, Mapping):
        raise InvalidReportError(f"{where}: is not a JSON object")
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
    return Report(
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
    )


def parse_batch(body: Any, *, max_reports: int = MAX_REPORTS_PER_REQUEST) -> tuple[list[Report], list[Rejection]]:
    """Split `{"reports": [...]}` into valid reports and per-index rejections.

    Only a malformed envelope raises (InvalidReportError, or BatchTooLargeError
    past `max_reports`); a bad report inside it becomes a Rejection.
    """
    if not isinstance(body, Mapping):
        raise InvalidReportError("body: is not a JSON object with a 'reports' list")
    items = body.get("reports")
    if not isinstance(items, list):
        raise InvalidReportError("reports: is required and must be a list")
    if len(items) > max_reports:
        raise BatchTooLargeError(f"reports: {len(items)} reports, at most {max_reports} per request")
    accepted: list[Report] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            accepted.append(parse_report(item, where=f"reports[{index}]"))
        except InvalidReportError as exc:
            rejected.append(Rejection(index=index, error=str(exc)))
    return accepted, rejected
