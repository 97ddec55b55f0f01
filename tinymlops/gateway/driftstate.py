"""What the gateway knows about drift: devices' histograms summed per fleet × revision × device class.

Each accepted report's `drift` field is checked against the reference of the menu the fleet's plan
names for the device's running revision (`tinymlops.drift.merge.check`, which names a refusal's
reason) and added to its group's current window.  Windows are the gateway's own clock cut into
`window_s` slices (five minutes by default); a group keeps its `windows_kept` newest slices (an
hour), so memory is bounded by groups × slices × bins, whatever the fleet size, and a drift that
stops ages out of the score within the hour.  At most `max_groups` groups exist; a new one past
that is refused (`over-capacity`), and a group none of whose slices is recent any more is dropped.

Scores are computed on a cadence, never per report: `scores()` (the metrics scrape and the
operator's summary poll call it) re-scores a group only if it changed and its last score is at
least `score_every_s` old.  Each device's window index must grow (`old-window` otherwise), so a
device cannot count the same window twice by sending it again.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.drift.merge import UNKNOWN_MENU, Baseline, Merged, check
from tinymlops.drift.score import FDR, MIN_ROWS, DriftScore
from tinymlops.errors import DriftRefusedError, IntegrityError
from tinymlops.layout import kept_menu, plan_key, plan_prefix
from tinymlops.report import Report
from tinymlops.store import ArtifactStore

GroupKey = tuple[str, str, int, str]  # namespace, fleet, revision, device class
OVER_CAPACITY = "over-capacity"
WINDOW_S = 300.0
WINDOWS_KEPT = 12
SCORE_EVERY_S = 15.0
MAX_GROUPS = 512
MAX_BASELINES = 64
TOP_FEATURES = 3


def drift_of(report: Report) -> Mapping[str, Any] | None:
    """The report's `drift` object in its wire form, or None (mode `off`, or an agent without drift telemetry)."""
    return None if report.drift is None else report.drift.to_json()


class PlanReferences:
    """Finds the reference of a fleet's revision: the plan's menu (stable or canary) for that revision, kept by
    digest in the store, and its `monitoring` object.  Plans are re-read when their store stamp changes;
    baselines (immutable: named by digest) are kept for the `MAX_BASELINES` most recently used menus."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        # (namespace, fleet) -> (plan stamp, revision -> (model, menu sha256, licensee or ""))
        self._plans: dict[tuple[str, str], tuple[Any, dict[int, tuple[str, str, str]]]] = {}
        self._baselines: OrderedDict[str, Baseline | None] = OrderedDict()

    def baseline(self, namespace: str, fleet: str, revision: int) -> Baseline:
        """The revision's reference; DriftRefusedError(unknown-menu) when the plan names no such revision or its
        menu carries no monitoring object."""
        menus = self._menus(namespace, fleet)
        if revision not in menus:
            raise DriftRefusedError(UNKNOWN_MENU, f"drift.revision: fleet {namespace}/{fleet}'s plan names no "
                                    f"revision {revision}")
        model, sha, licensee = menus[revision]
        if sha not in self._baselines:
            self._baselines[sha] = self._load(namespace, model, sha, licensee)
            while len(self._baselines) > MAX_BASELINES:
                self._baselines.popitem(last=False)
        self._baselines.move_to_end(sha)
        found = self._baselines[sha]
        if found is None:
            raise DriftRefusedError(UNKNOWN_MENU, f"drift: the menu of revision {revision} ({sha[:12]}…) has no "
                                    "monitoring reference")
        return found

    def _menus(self, namespace: str, fleet: str) -> dict[int, tuple[str, str, str]]:
        key = plan_key(plan_prefix(namespace, fleet))
        try:
            stamp = self.store.stamp(key)
        except (FileNotFoundError, ValueError):
            return {}
        cached = self._plans.get((namespace, fleet))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            plan = json.loads(self.store.get(key))
        except (OSError, ValueError):
            return {}
        model = str((plan.get("model") or {}).get("name", ""))
        refs = [plan.get("menu"), (plan.get("canary") or {}).get("menu")]
        # A licensee's fleet follows the licensee's watermarked menu, kept in its own folder.
        menus = {int(ref["revision"]): (model, str(ref["sha256"]), str(ref.get("licensee") or "")) for ref in refs
                 if isinstance(ref, Mapping) and "revision" in ref and "sha256" in ref}
        self._plans[(namespace, fleet)] = (stamp, menus)
        return menus

    def _load(self, namespace: str, model: str, sha: str, licensee: str) -> Baseline | None:
        try:
            menu = json.loads(self.store.get(kept_menu(namespace, model, sha, licensee)[0]))
            return None if menu.get("monitoring") is None else Baseline.from_menu(menu, menu_sha256=sha)
        except (OSError, ValueError, AttributeError, IntegrityError):
            return None


References = Callable[[str, str, int], Baseline]  # (namespace, fleet, revision) -> its reference


@dataclass
class Group:
    baseline: Baseline
    windows: deque[tuple[int, Merged]] = field(default_factory=deque)  # (slice index, its sum), oldest first
    changed: bool = True
    score: DriftScore | None = None
    scored_at: float = float("-inf")

    def total(self) -> Merged:
        merged = Merged(self.baseline)
        for _, window in self.windows:
            merged.add_merged(window)
        return merged


class DriftBook:
    def __init__(
        self, references: References, *, clock: Callable[[], float] = time.time, window_s: float = WINDOW_S,
        windows_kept: int = WINDOWS_KEPT, score_every_s: float = SCORE_EVERY_S, max_groups: int = MAX_GROUPS,
        min_rows: int = MIN_ROWS, fdr: float = FDR,
    ) -> None:
        self.references, self.clock = references, clock
        self.window_s, self.windows_kept, self.score_every_s = window_s, windows_kept, score_every_s
        self.max_groups, self.min_rows, self.fdr = max_groups, min_rows, fdr
        self._groups: dict[GroupKey, Group] = {}
        self._last_window: dict[tuple[str, str], tuple[str, int]] = {}  # (namespace, device) -> (menu, window)

    def apply(self, report: Report) -> str | None:
        """Merge the report's drift histograms; the reason they were refused, or None (merged, or none sent)."""
        payload = drift_of(report)
        if payload is None:
            return None
        try:
            self._merge(report, payload)
        except DriftRefusedError as exc:
            return exc.reason
        return None

    def _merge(self, report: Report, payload: Mapping[str, Any]) -> None:
        baseline = self.references(report.namespace, report.fleet, report.revision)
        release = check(payload, baseline, revision=report.revision)
        device = (report.namespace, report.device)
        last = self._last_window.get(device)
        if last is not None and last[0] == baseline.menu_sha256 and release.window <= last[1]:
            raise DriftRefusedError("old-window", f"drift.window: {release.window} was not after this device's "
                                    f"last window ({last[1]})")
        key = (report.namespace, report.fleet, report.revision, report.device_class)
        group = self._groups.get(key)
        if group is None or group.baseline.menu_sha256 != baseline.menu_sha256:
            if group is None and len(self._groups) >= self.max_groups:
                raise DriftRefusedError(OVER_CAPACITY, f"drift: the gateway holds {self.max_groups} fleet × "
                                        "revision × class groups already")
            group = self._groups[key] = Group(baseline)
        now_slice = int(self.clock() // self.window_s)
        if not group.windows or group.windows[-1][0] != now_slice:
            group.windows.append((now_slice, Merged(baseline)))
        self._expire(group, now_slice)
        group.windows[-1][1].add(release)
        group.changed = True
        self._last_window[device] = (baseline.menu_sha256, release.window)

    def _expire(self, group: Group, now_slice: int) -> None:
        while group.windows and group.windows[0][0] <= now_slice - self.windows_kept:
            group.windows.popleft()
            group.changed = True

    def scores(self) -> dict[GroupKey, DriftScore]:
        """Every group's latest score, re-scoring those that changed at most once per `score_every_s`."""
        now = self.clock()
        now_slice = int(now // self.window_s)
        for key, group in list(self._groups.items()):
            self._expire(group, now_slice)
            if not group.windows:
                del self._groups[key]
                continue
            if group.score is None or (group.changed and now - group.scored_at >= self.score_every_s):
                seed = zlib.crc32(repr(key).encode())  # the same histograms always get the same verdict
                group.score = group.total().score(fdr=self.fdr, min_rows=self.min_rows, seed=seed)
                group.scored_at, group.changed = now, False
        return {key: group.score for key, group in self._groups.items() if group.score is not None}

    def summary(self, namespace: str, fleet: str) -> list[dict[str, Any]]:
        """The fleet's groups for the operator: rows, whether scored and drifted, and the top drifting features."""
        groups = []
        for (ns, name, revision, device_class), result in sorted(self.scores().items()):
            if (ns, name) != (namespace, fleet):
                continue
            groups.append({
                "revision": revision, "device_class": device_class, "rows": result.rows,
                "min_rows": result.min_rows, "scored": result.scored, "drifted": result.drifted,
                "top": [{"feature": f.name, "psi": round(f.psi, 6), "p_value": float(f"{f.p_value:.3g}")}
                        for f in result.top(TOP_FEATURES)],
            })
        return groups
