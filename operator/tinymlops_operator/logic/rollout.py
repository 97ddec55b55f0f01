"""The canary rollout of a DeviceFleet as a state machine over its status (pure).

Everything the rollout knows lives in `status.rollout` (revisions, step,
weight, when the step began, the last analysis, the history), so an operator
that restarts reads it back and continues at the same step: `decide` is a
function of that state, the spec, the clock and one analysis run, and every
transition it makes is written in the same status patch that records it.  The
revisions, step and weight `kubectl get` shows at the top of `status` are
derived from that state, in `RolloutState.as_status`.

A *revision* is one menu digest plus one selection policy: what the devices
run.  Revision 1 goes to every device at once; each later one starts as the
canary and moves through `spec.strategy.canary.steps`, and is either promoted
to stable or aborted (devices return to the stable revision), as in Argo
Rollouts.  An aborted revision is not retried until the target changes, the
user asks (`tinymlops.io/retry`), or rolls back to an earlier revision.

Times are Unix seconds in here and RFC 3339 strings in status (people read
it): `from_status` and `as_status` convert, and read the numbers that older
statuses hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tinymlops.timestamps import rfc3339, seconds
from tinymlops_operator.logic.analysis import AnalysisRun
from tinymlops_operator.logic.strategy import Strategy

MAX_HISTORY = 10
ANNOTATION = "tinymlops.io/"  # prefix of the one-shot commands: promote, abort, retry, rollback-to
COMMAND_ANNOTATIONS = tuple(ANNOTATION + command for command in ("promote", "abort", "retry", "rollback-to"))
Hold = Literal["Progressing", "Paused"]


@dataclass(frozen=True)
class Target:
    """What the spec and the model's latest menu ask the fleet to run now."""

    model: str
    menu_sha256: str
    menu_version: int
    policy: Mapping[str, Any]
    licensee: str = ""  # the fleet's spec.licensee: its menu is that licensee's watermarked copy of the model

    @property
    def key(self) -> str:
        content = json.dumps({"menu": self.menu_sha256, "policy": self.policy}, sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Revision:
    number: int
    key: str
    model: str
    menu_sha256: str
    menu_version: int
    policy: Mapping[str, Any]
    created_at: float
    licensee: str = ""  # whose watermarked menu (empty: the model's own); written to status only when set

    def as_status(self) -> dict[str, Any]:
        return {"revision": self.number, "key": self.key, "model": self.model, "menuSha256": self.menu_sha256,
                "menuVersion": self.menu_version, "policy": dict(self.policy), "createdAt": rfc3339(self.created_at),
                **({"licensee": self.licensee} if self.licensee else {})}

    @property
    def target(self) -> Target:
        """This revision, asked for again: what a fleet runs on while its model has no menu to offer."""
        return Target(self.model, self.menu_sha256, self.menu_version, self.policy, self.licensee)

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> Revision | None:
        if not raw:
            return None
        return cls(int(raw["revision"]), str(raw["key"]), str(raw["model"]), str(raw["menuSha256"]),
                   int(raw["menuVersion"]), dict(raw.get("policy") or {}), seconds(raw.get("createdAt")),
                   str(raw.get("licensee") or ""))


@dataclass(frozen=True)
class Commands:
    """What the user asked for through spec.paused and the tinymlops.io/* annotations.

    docs/rollouts.md, "Manual control", lists them for users."""

    paused: bool = False
    promote: Literal["step", "full"] | None = None
    abort: bool = False
    retry: bool = False
    rollback_to: int | None = None

    @property
    def any_annotation(self) -> bool:
        return bool(self.promote or self.abort or self.retry or self.rollback_to is not None)


def read_commands(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> tuple[Commands, list[str]]:
    """The user's manual controls, and a problem per annotation that could not be understood."""
    problems: list[str] = []
    promote: Literal["step", "full"] | None = None
    raw_promote = (annotations.get(ANNOTATION + "promote") or "").strip().lower()
    if raw_promote in ("true", "step"):
        promote = "step"
    elif raw_promote == "full":
        promote = "full"
    elif raw_promote:
        problems.append(f"annotation {ANNOTATION}promote: {raw_promote!r} is not step or full")
    rollback_to = None
    raw = annotations.get(ANNOTATION + "rollback-to")
    if raw is not None:
        try:
            rollback_to = int(raw)
        except ValueError:
            problems.append(f"annotation {ANNOTATION}rollback-to: {raw!r} is not a revision number")
    commands = Commands(
        paused=bool(spec.get("paused", False)),
        promote=promote,
        abort=ANNOTATION + "abort" in annotations,
        retry=ANNOTATION + "retry" in annotations,
        rollback_to=rollback_to,
    )
    return commands, problems


def consumed_annotations(annotations: Mapping[str, str], commands: Commands, problems: list[str]) -> list[str]:
    """The command annotations to remove once read (understood or not): a command acts once."""
    if not (commands.any_annotation or problems):
        return []
    return [key for key in COMMAND_ANNOTATIONS if key in annotations]


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutState:
    stable: Revision | None = None
    canary: Revision | None = None
    step_index: int | None = None
    weight: int = 0
    started_at: float = 0.0
    step_started_at: float = 0.0
    next_revision: int = 1
    blocked_key: str | None = None  # an aborted (or rolled-back-from) target, not retried by itself
    abort_reason: str | None = None
    failures: int = 0  # consecutive failed analysis runs of this canary
    analysis: Mapping[str, Any] | None = None  # the last AnalysisRun.as_status()
    steps_log: tuple[Mapping[str, Any], ...] = ()  # this rollout's step transitions
    history: tuple[Mapping[str, Any], ...] = ()  # revisions, newest last

    @property
    def last_analysis_at(self) -> float:
        return seconds((self.analysis or {}).get("at"))

    @property
    def last_verdict(self) -> str | None:
        return (self.analysis or {}).get("verdict")

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> RolloutState:
        """The state `as_status` wrote: all of it under status.rollout (the printer columns are only views).
        A status an earlier operator wrote is moved to this layout first, by `logic/upgrade.py`."""
        rollout = status.get("rollout") or {}
        step = rollout.get("stepIndex")
        return cls(
            stable=Revision.from_status(rollout.get("stable")),
            canary=Revision.from_status(rollout.get("canary")),
            step_index=None if step is None else int(step),
            weight=int(rollout.get("weight") or 0),
            started_at=seconds(rollout.get("startedAt")),
            step_started_at=seconds(rollout.get("stepStartedAt")),
            next_revision=int(rollout.get("nextRevision") or 1),
            blocked_key=rollout.get("blockedKey"),
            abort_reason=rollout.get("abortReason"),
            failures=int(rollout.get("analysisFailures") or 0),
            analysis=rollout.get("analysis"),
            steps_log=tuple(rollout.get("steps") or ()),
            history=tuple(rollout.get("history") or ()),
        )

    def as_status(self) -> dict[str, Any]:
        """The status keys this state owns: the whole state under `rollout`, and beside it the fields
        `kubectl get` shows (the CRD's additionalPrinterColumns), derived from it here and nowhere else.
        None values delete a key under a merge patch."""
        return {
            "stableRevision": self.stable.number if self.stable else None,
            "canaryRevision": self.canary.number if self.canary else None,
            "currentStepIndex": self.step_index,
            "canaryWeight": self.weight,
            "rollout": {
                "stable": self.stable.as_status() if self.stable else None,
                "canary": self.canary.as_status() if self.canary else None,
                "stepIndex": self.step_index,
                "weight": self.weight,
                "startedAt": rfc3339(self.started_at) if self.started_at else None,
                "stepStartedAt": rfc3339(self.step_started_at) if self.step_started_at else None,
                "nextRevision": self.next_revision,
                "blockedKey": self.blocked_key,
                "abortReason": self.abort_reason,
                "analysisFailures": self.failures,
                "analysis": _times_as_text(self.analysis) if self.analysis else None,
                "steps": [_times_as_text(entry) for entry in self.steps_log],
                "history": [_times_as_text(entry) for entry in self.history],
            },
        }

    @property
    def rollout_id(self) -> str | None:
        """Names the canary cohort: devices hash their id with it, so a cohort is fixed for one revision."""
        return f"r{self.canary.number}-{self.canary.key}" if self.canary else None


TIME_KEYS = ("at", "createdAt", "finishedAt")  # in history, step log and analysis entries


def _times_as_text(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry with its times as RFC 3339 (entries from an older status hold Unix seconds)."""
    return {key: rfc3339(value) if key in TIME_KEYS and isinstance(value, int | float) else value
            for key, value in entry.items()}


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    events: tuple[Event, ...]
    hold: Hold | None  # why the canary is not moving (None: it moved, or there is no canary)
    reason: str
    message: str
    rolled_back: bool = False
    promoted: bool = False


def analysis_due(state: RolloutState, strategy: Strategy, now: float) -> bool:
    """Query Prometheus now? Only while canary devices exist, once per interval."""
    if state.canary is None or strategy.analysis is None or state.weight <= 0:
        return False
    return now - state.last_analysis_at >= strategy.analysis.interval_s


class _Machine:
    """One `decide` call's working copy; methods are the transitions, each recording its event."""

    def __init__(self, state: RolloutState, strategy: Strategy, now: float) -> None:
        self.s, self.strategy, self.now = state, strategy, now
        self.events: list[Event] = []
        self.rolled_back = self.promoted = False

    def update(self, **changes: Any) -> None:
        self.s = dataclasses.replace(self.s, **changes)

    def _history_entry(self, revision: Revision, **fields: Any) -> None:
        entries = [dict(e) for e in self.s.history]
        for entry in entries:
            if entry.get("revision") == revision.number:
                entry.update(fields)
                break
        else:
            entries.append({**revision.as_status(), **fields})
        self.update(history=tuple(entries[-MAX_HISTORY:]))

    def new_revision(self, target: Target) -> Revision:
        revision = Revision(self.s.next_revision, target.key, target.model, target.menu_sha256,
                            target.menu_version, dict(target.policy), self.now, target.licensee)
        self.update(next_revision=self.s.next_revision + 1)
        self._history_entry(revision, outcome="Created")
        return revision

    def start(self, target: Target) -> None:
        if self.s.canary is not None:
            self._history_entry(self.s.canary, outcome="Superseded", finishedAt=rfc3339(self.now))
        canary = self.new_revision(target)
        self.update(canary=canary, step_index=0, weight=0, started_at=self.now, step_started_at=self.now,
                    blocked_key=None, abort_reason=None, failures=0, analysis=None, steps_log=())
        assert self.s.stable is not None
        steps = ", ".join(step.describe() for step in self.strategy.steps) or "all devices at once"
        self.events.append(Event("Normal", "RolloutStarted",
                                 f"revision {canary.number} (menu v{canary.menu_version}) replaces stable revision "
                                 f"{self.s.stable.number}: {steps}"))

    def promote(self, how: str) -> None:
        canary = self.s.canary
        assert canary is not None
        self._history_entry(canary, outcome="Promoted", finishedAt=rfc3339(self.now))
        self.update(stable=canary, canary=None, step_index=None, weight=0, failures=0,
                    steps_log=(*self.s.steps_log, {"step": "promoted", "at": rfc3339(self.now)}))
        self.promoted = True
        self.events.append(Event("Normal", "RolloutCompleted",
                                 f"revision {canary.number} promoted to stable ({how}); every device follows it"))

    def abort(self, reason: str, *, event_reason: str = "RolloutAborted") -> None:
        canary, stable = self.s.canary, self.s.stable
        assert canary is not None and stable is not None
        self._history_entry(canary, outcome="Aborted", reason=reason, finishedAt=rfc3339(self.now))
        self.update(canary=None, step_index=None, weight=0, blocked_key=canary.key, abort_reason=reason,
                    steps_log=(*self.s.steps_log, {"step": "aborted", "at": rfc3339(self.now)}))
        self.rolled_back = True
        self.events.append(Event("Warning", event_reason,
                                 f"revision {canary.number} rolled back, every device returns to stable revision "
                                 f"{stable.number}: {reason}"))

    def advance(self) -> None:
        assert self.s.step_index is not None
        step = self.strategy.steps[self.s.step_index]
        log = {"index": self.s.step_index, "step": step.describe(), "at": rfc3339(self.now)}
        self.update(step_index=self.s.step_index + 1, step_started_at=self.now, steps_log=(*self.s.steps_log, log))
        self.events.append(Event("Normal", "StepCompleted",
                                 f"step {log['index']} ({step.describe()}) done; canary weight {self.s.weight}%"))


def decide(
    state: RolloutState,
    *,
    strategy: Strategy,
    target: Target,
    now: float,
    commands: Commands = Commands(),
    run: AnalysisRun | None = None,
) -> Decision:
    m = _Machine(state, strategy, now)
    if run is not None:
        failures = m.s.failures + 1 if run.verdict == "Failed" else 0 if run.verdict == "Passed" else m.s.failures
        m.update(analysis=run.as_status(), failures=failures)

    # Manual commands first: they say what the user wants regardless of where the rollout is.
    if commands.rollback_to is not None:
        _rollback_to(m, commands.rollback_to, target)
    elif commands.abort and m.s.canary is not None:
        m.abort("aborted by the user (annotation tinymlops.io/abort)", event_reason="RolloutAbortedByUser")
    if commands.retry and m.s.blocked_key is not None:
        m.update(blocked_key=None, abort_reason=None)
        m.events.append(Event("Normal", "RolloutRetry", "aborted revision may roll out again"))

    # What the spec asks for now.
    if m.s.stable is None:
        first = m.new_revision(target)
        m._history_entry(first, outcome="Promoted", finishedAt=rfc3339(now))
        m.update(stable=first, started_at=now, step_started_at=now)
        m.events.append(Event("Normal", "RolloutCompleted",
                              f"revision 1 (menu v{first.menu_version}) goes to every device: the first revision "
                              "has nothing to be compared with"))
    elif target.key == m.s.stable.key:
        if m.s.canary is not None:
            m._history_entry(m.s.canary, outcome="Superseded", finishedAt=rfc3339(now))
            m.update(canary=None, step_index=None, weight=0)
            m.events.append(Event("Normal", "CanaryDropped", "the target is the stable revision again"))
        m.update(blocked_key=None, abort_reason=None)
    elif target.key != m.s.blocked_key and (m.s.canary is None or m.s.canary.key != target.key):
        m.start(target)

    hold, reason, message = None, "", ""
    if m.s.canary is not None:
        hold, reason, message = _progress(m, commands, run)
    return _decision(m, hold, reason, message)


def _rollback_to(m: _Machine, number: int, target: Target) -> None:
    entry = next((e for e in m.s.history if e.get("revision") == number), None)
    record = Revision.from_status(entry)
    if record is None:
        known = ", ".join(str(e.get("revision")) for e in m.s.history)
        m.events.append(Event("Warning", "RollbackRejected", f"tinymlops.io/rollback-to: revision {number} "
                                                             f"is not in status.rollout.history ({known})"))
        return
    if m.s.canary is not None:
        m._history_entry(m.s.canary, outcome="Aborted", reason=f"rolled back to revision {number}",
                         finishedAt=rfc3339(m.now))
    # A deliberate rollback is not a failure (no abort reason, the fleet can be Healthy), but the target it
    # left is held back, or it would roll out again at once.
    m.update(stable=record, canary=None, step_index=None, weight=0,
             blocked_key=target.key if target.key != record.key else None, abort_reason=None)
    m._history_entry(record, outcome="Promoted", reason="rollback", finishedAt=rfc3339(m.now))
    m.rolled_back = True
    m.events.append(Event("Warning", "RolledBack", f"every device returns to revision {number} "
                                                   f"(menu v{record.menu_version}) at the user's request"))


def _progress(m: _Machine, commands: Commands, run: AnalysisRun | None) -> tuple[Hold | None, str, str]:
    """Move the canary as far as its steps allow now; return why it stops (hold, reason, message)."""
    strategy, analysis = m.strategy, m.strategy.analysis
    if run is not None and run.verdict == "Failed" and analysis is not None and m.s.failures > analysis.failure_limit:
        m.abort(f"analysis failed: {run.message}")
        return None, "", ""
    if commands.promote == "full":
        m.promote("promoted by the user, remaining steps skipped")
        return None, "", ""
    if commands.paused:
        return "Paused", "PausedBySpec", "spec.paused is true; set it to false to resume"
    skip = commands.promote == "step"
    while (index := m.s.step_index) is not None and index < len(strategy.steps):
        step = strategy.steps[index]
        if step.kind == "setWeight":
            assert step.weight is not None
            m.update(weight=step.weight)
            m.advance()
            continue
        if skip:
            skip = False
            m.advance()
            continue
        if step.kind == "pause" and step.duration_s is None:
            return "Paused", "PausedUntilPromoted", (
                f"step {index}: paused until promoted (annotate tinymlops.io/promote=step)")
        waited = m.now - m.s.step_started_at
        if step.kind == "pause" and step.duration_s is not None and waited < step.duration_s:
            left = step.duration_s - waited
            return "Progressing", "Pausing", f"step {index}: pause {step.duration_s:g}s, {left:.0f}s left"
        gate = _analysis_gate(m, index)
        if gate is not None:
            return gate
        if m.s.canary is None:  # the progress deadline aborted it
            return None, "", ""
        m.advance()
    if m.s.step_index is not None and m.s.step_index >= len(strategy.steps):
        m.promote("every step passed")
    return None, "", ""


def _analysis_gate(m: _Machine, index: int) -> tuple[Hold, str, str] | None:
    """A pause ends, or an analysis step passes, only on an analysis run made since the step began."""
    if m.strategy.analysis is None:
        return None
    if m.s.last_analysis_at < m.s.step_started_at or m.s.last_verdict is None:
        if m.now - m.s.step_started_at > m.strategy.progress_deadline_s:
            return _deadline(m, index)
        return "Progressing", "Analysing", f"step {index}: waiting for an analysis run of the canary"
    if m.s.last_verdict == "Inconclusive":
        detail = (m.s.analysis or {}).get("message", "")
        return "Paused", "AnalysisInconclusive", f"step {index}: analysis inconclusive ({detail}); waiting"
    return None


def _deadline(m: _Machine, index: int) -> tuple[Hold, str, str] | None:
    message = f"step {index} made no progress for {m.strategy.progress_deadline_s:g}s (progressDeadlineSeconds)"
    if m.strategy.progress_deadline_abort:
        m.abort(message, event_reason="ProgressDeadlineExceeded")
        return None
    return "Progressing", "ProgressDeadlineExceeded", message


def _decision(m: _Machine, hold: Hold | None, reason: str, message: str) -> Decision:
    s = m.s
    if s.canary is not None and hold is None:
        reason, message = "Progressing", f"canary revision {s.canary.number} at {s.weight}%"
    if s.canary is None and not reason:
        if s.abort_reason:
            reason, message = "RolloutAborted", s.abort_reason
        else:
            assert s.stable is not None
            reason, message = "StableRevision", f"revision {s.stable.number} is stable"
            if s.blocked_key:
                message += " (rolled back: the current target is held until it changes or tinymlops.io/retry)"
    return Decision(s, tuple(m.events), hold, reason, message, rolled_back=m.rolled_back, promoted=m.promoted)
