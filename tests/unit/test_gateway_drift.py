"""The gateway's drift aggregation: checked histograms summed per fleet × revision × class, scored on a cadence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit import drift_samples as samples
from tinymlops.drift.merge import Baseline
from tinymlops.errors import DriftRefusedError, InvalidReportError
from tinymlops.gateway.driftstate import DriftBook, PlanReferences
from tinymlops.gateway.fleetstate import FleetState
from tinymlops.gateway.metrics import GatewayMetrics
from tinymlops.layout import kept_menu
from tinymlops.report import Report
from tinymlops.store import DirectoryStore, sha256_bytes


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


MONITORING, EDGES = samples.monitoring(0)
BASELINE = samples.baseline(MONITORING)


def references(namespace: str, fleet: str, revision: int) -> Baseline:
    if revision != 1:
        raise DriftRefusedError("unknown-menu", f"drift.revision: no revision {revision}")
    return BASELINE


def with_drift(device: str, payload: dict[str, Any] | None, *, device_class: str = "rpi4",
               revision: int = 1) -> Report:
    """A report carrying `payload` as its drift field, parsed as the gateway parses it."""
    report = Report(device=device, namespace="edge", fleet="cams", device_class=device_class, arch="aarch64",
                    phase="Running", menu_version=1, sent_at=1.0, revision=revision, target_revision=revision)
    return Report.from_json({**report.to_json(), "drift": payload})


def fleet(book: DriftBook, rng: np.random.Generator, *, devices: int, device_class: str = "rpi4",
          shift: float = 0.0, window: int = 0, epsilon: float | None = None) -> list[str | None]:
    return [book.apply(with_drift(f"{device_class}-{d}", samples.drift_payload(
        rng, EDGES, shift=shift, feature=1, window=window, epsilon=epsilon), device_class=device_class))
        for d in range(devices)]


def test_a_drifting_class_is_flagged_and_the_other_is_not() -> None:
    book = DriftBook(references, clock=Clock(), min_rows=5000)
    rng = np.random.default_rng(4)
    assert fleet(book, rng, devices=40, device_class="rpi4", shift=0.4, epsilon=1.0) == [None] * 40
    assert fleet(book, rng, devices=40, device_class="jetson", epsilon=1.0) == [None] * 40
    scores = book.scores()
    assert scores[("edge", "cams", 1, "rpi4")].drifted
    assert scores[("edge", "cams", 1, "rpi4")].top()[0].name == "x[1]"
    assert not scores[("edge", "cams", 1, "jetson")].drifted
    summary = book.summary("edge", "cams")
    assert [(g["device_class"], g["drifted"], g["rows"]) for g in summary] == [
        ("jetson", False, 20000), ("rpi4", True, 20000)]
    assert summary[1]["top"][0]["feature"] == "x[1]"
    assert book.summary("edge", "other") == []


def test_refused_histograms_never_move_a_score() -> None:
    book = DriftBook(references, clock=Clock(), min_rows=1000)
    rng = np.random.default_rng(0)
    fleet(book, rng, devices=4)
    before = book.scores()[("edge", "cams", 1, "rpi4")]
    bad = samples.drift_payload(rng, EDGES, shift=3.0, feature=1, window=1)
    wrong_bins = {**bad, "features": bad["features"][:-1]}
    assert book.apply(with_drift("rpi4-0", wrong_bins)) == "wrong-bins"
    with pytest.raises(InvalidReportError, match=r"drift\.revision: 2 is not the revision the device runs"):
        with_drift("rpi4-0", {**bad, "revision": 2}, revision=1)  # the report contract refuses it whole
    assert book.apply(with_drift("rpi4-0", {**bad, "revision": 2}, revision=2)) == "unknown-menu"
    assert book.apply(with_drift("rpi4-0", {**bad, "window": 0})) == "old-window"  # sent again
    assert book.apply(with_drift("rpi4-0", None)) is None  # drift off: nothing to merge, nothing refused
    after = book.scores()[("edge", "cams", 1, "rpi4")]
    assert after.rows == before.rows == 2000 and after == before


def test_scores_follow_a_cadence_and_old_windows_age_out() -> None:
    clock = Clock()
    book = DriftBook(references, clock=clock, min_rows=1000, score_every_s=15.0, window_s=300.0, windows_kept=2)
    rng = np.random.default_rng(1)
    fleet(book, rng, devices=4)
    assert book.scores()[("edge", "cams", 1, "rpi4")].rows == 2000
    fleet(book, rng, devices=4, window=1)
    assert book.scores()[("edge", "cams", 1, "rpi4")].rows == 2000  # not re-scored per report
    clock.now += 15.0
    assert book.scores()[("edge", "cams", 1, "rpi4")].rows == 4000
    clock.now += 300.0  # a new slice; the first one is still kept
    fleet(book, rng, devices=1, window=2)
    clock.now += 15.0
    assert book.scores()[("edge", "cams", 1, "rpi4")].rows == 4500
    clock.now += 300.0  # the first slice ages out
    assert book.scores()[("edge", "cams", 1, "rpi4")].rows == 500
    clock.now += 600.0  # and then the group
    assert book.scores() == {}


def test_groups_are_bounded() -> None:
    book = DriftBook(references, clock=Clock(), max_groups=2)
    rng = np.random.default_rng(2)
    assert fleet(book, rng, devices=1, device_class="a") == [None]
    assert fleet(book, rng, devices=1, device_class="b") == [None]
    assert fleet(book, rng, devices=1, device_class="c") == ["over-capacity"]


def test_metrics_export_drift_gauges_without_device_ids() -> None:
    book = DriftBook(references, clock=Clock(), min_rows=5000)
    metrics = GatewayMetrics(FleetState(clock=Clock()), drift=book)
    rng = np.random.default_rng(3)
    fleet(book, rng, devices=20, device_class="rpi4", shift=0.5)
    fleet(book, rng, devices=2, device_class="jetson")  # 1000 rows: counted, not scored
    metrics.count_drift_rejections(["wrong-bins", "nonsense"])
    text = metrics.exposition(None)[0].decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rows = {s.labels["device_class"]: s.value for s in families["tinymlops_fleet_drift_rows"].samples}
    assert rows == {"rpi4": 10000, "jetson": 1000}
    drifted = {s.labels["device_class"]: s.value for s in families["tinymlops_fleet_drifted"].samples}
    assert drifted == {"rpi4": 1.0}  # no series at all for the unscored class
    scores = families["tinymlops_fleet_drift_score"].samples
    assert {s.labels["statistic"] for s in scores} == {"psi", "js", "ks"}
    assert {s.labels["feature"] for s in scores} == {*(f"x[{f}]" for f in range(samples.FEATURES)),
                                                     "@confidence", "@class"}
    rejected = {s.labels["reason"]: s.value for s in families["tinymlops_gateway_drift_rejected"].samples
                if s.name.endswith("_total")}
    assert rejected["wrong-bins"] == 1 and rejected["malformed"] == 1 and rejected["bad-counts"] == 0
    assert "device=" not in text and "rpi4-0" not in text


def _store_with_plan(tmp_path: Path, monitoring: dict[str, Any] | None) -> tuple[DirectoryStore, str]:
    store = DirectoryStore(tmp_path)
    menu = json.dumps({"version": 1, "variants": [{"id": "fp32", "sha256": samples.VARIANT_SHA}],
                       **({"monitoring": monitoring} if monitoring else {})}).encode()
    sha = sha256_bytes(menu)
    store.put(kept_menu("edge", "digits", sha)[0], menu)
    plan = {"model": {"name": "digits"}, "menu": {"sha256": sha, "revision": 3},
            "canary": {"menu": {"sha256": "f" * 64, "revision": 4}}}
    store.put("plans/edge/cams/plan.json", json.dumps(plan).encode())
    return store, sha


def test_the_reference_is_the_plans_menu_for_the_revision(tmp_path: Path) -> None:
    store, sha = _store_with_plan(tmp_path, MONITORING)
    found = PlanReferences(store).baseline("edge", "cams", 3)
    assert found.menu_sha256 == sha and found.names[-2:] == ("@confidence", "@class")
    assert found.rows == MONITORING["rows"]
    with pytest.raises(DriftRefusedError, match="no revision 5") as refused:
        PlanReferences(store).baseline("edge", "cams", 5)
    assert refused.value.reason == "unknown-menu"
    with pytest.raises(DriftRefusedError, match="revision 4"):  # the canary's menu is not in the store
        PlanReferences(store).baseline("edge", "cams", 4)
    with pytest.raises(DriftRefusedError, match="no revision 3"):
        PlanReferences(store).baseline("edge", "elsewhere", 3)


def test_a_licensee_fleet_finds_its_reference_in_the_licensee_menu(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    menu = json.dumps({"version": 1, "variants": [], "monitoring": MONITORING}).encode()
    sha = sha256_bytes(menu)
    store.put(kept_menu("edge", "digits", sha, "acme")[0], menu)  # only in acme's folder, not the model's
    plan = {"model": {"name": "digits"}, "menu": {"sha256": sha, "revision": 1, "licensee": "acme"}}
    store.put("plans/edge/acme-cams/plan.json", json.dumps(plan).encode())
    assert PlanReferences(store).baseline("edge", "acme-cams", 1).menu_sha256 == sha


def test_a_menu_without_monitoring_has_no_reference(tmp_path: Path) -> None:
    store, _ = _store_with_plan(tmp_path, None)
    with pytest.raises(DriftRefusedError, match="no monitoring reference"):
        PlanReferences(store).baseline("edge", "cams", 3)


async def test_posted_histograms_reach_the_summary_and_bad_ones_are_counted(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from tinymlops.gateway.app import create_app

    store, sha = _store_with_plan(tmp_path, MONITORING)
    rng = np.random.default_rng(6)

    def posted(device: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {**with_drift(device, None, revision=3).to_json(), "drift": payload}

    good = [posted(f"d{d}", samples.drift_payload(rng, EDGES, revision=3, menu_sha256=sha)) for d in range(12)]
    bad = samples.drift_payload(rng, EDGES, revision=3, menu_sha256=sha)
    bad["features"] = bad["features"][:-1]  # a valid report, but not in the bins of the menu it names
    stranger = samples.drift_payload(rng, EDGES, revision=3, menu_sha256=sha, variant_sha256="0" * 64)
    async with TestClient(TestServer(create_app(store, clock=Clock()))) as client:
        response = await client.post("/v1/reports", json={"reports": [*good, posted("liar", bad),
                                                                       posted("stranger", stranger)]})
        assert (await response.json())["accepted"] == 14  # the reports count; their histograms do not
        summary = await (await client.get("/v1/fleets/edge/cams/summary")).json()
        assert summary["drift"] == [{"revision": 3, "device_class": "rpi4", "rows": 6000, "min_rows": 5000,
                                     "scored": True, "drifted": False, "top": []}]
        text = await (await client.get("/metrics")).text()
        assert 'tinymlops_gateway_drift_rejected_total{reason="wrong-bins"} 1.0' in text
        assert 'tinymlops_gateway_drift_rejected_total{reason="unknown-variant"} 1.0' in text
