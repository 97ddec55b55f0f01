"""The gateway's HTTP API end to end, on an in-process server over a store in tmp_path."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from yarl import URL

from tinymlops.commands.gateway import gateway
from tinymlops.gateway.app import MAX_BODY_BYTES, Gateway, create_app
from tinymlops.store import DirectoryStore, sha256_bytes

PLAN = b'{"kind":"RolloutPlan","menu":{"version":2}}'
MENU = b'{"kind":"VariantMenu","version":2}'
BLOB = b"\x00onnx bytes\xff"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    store = DirectoryStore(tmp_path / "store")
    store.put("plans/edge/cams/plan.json", PLAN)
    store.put("plans/edge/cams/plan.sig", b"c2lnbmF0dXJl\n")
    store.put("models/edge/digits/menu.json", MENU)
    store.put_blob("models/edge/digits", BLOB)
    store.put("sources/edge/digits/model.onnx", b"unpublished")
    (tmp_path / "secret.txt").write_text("outside the store")
    return store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(store: DirectoryStore, clock: Clock) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(store, offline_after_s=30.0, clock=clock))) as client:
        yield client


def report(device: str, **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "device": device, "namespace": "edge", "fleet": "cams", "device_class": "gateway", "arch": "x86_64",
        "phase": "Running", "menu_version": 2, "variant": "int8", "variant_sha256": "a" * 64,
        "inferences": 4, "latencies_ms": [0.3, 0.7], "load_ms": 25.0, "sent_at": 999.0,
    }
    raw.update(overrides)
    return raw


async def test_healthz(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200 and await response.json() == {"ok": True}


async def test_plan_is_served_with_an_etag_and_revalidates_with_304(
    client: TestClient[Any, Any], store: DirectoryStore
) -> None:
    response = await client.get("/v1/store/plans/edge/cams/plan.json")
    assert response.status == 200 and await response.read() == PLAN
    assert response.headers["Content-Type"].startswith("application/json")
    etag = response.headers["ETag"]
    assert etag == f'"{sha256_bytes(PLAN)}"'
    assert response.headers["Cache-Control"] == "no-cache"

    again = await client.get("/v1/store/plans/edge/cams/plan.json", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b"" and again.headers["ETag"] == etag
    weak = await client.get("/v1/store/plans/edge/cams/plan.json", headers={"If-None-Match": f'"x", W/{etag}'})
    assert weak.status == 304

    # A new plan of the same size must not be served from the cache.
    new_plan = PLAN.replace(b"2", b"3")
    assert len(new_plan) == len(PLAN)
    store.put("plans/edge/cams/plan.json", new_plan)
    changed = await client.get("/v1/store/plans/edge/cams/plan.json", headers={"If-None-Match": etag})
    assert changed.status == 200 and await changed.read() == new_plan
    assert changed.headers["ETag"] == f'"{sha256_bytes(new_plan)}"'


async def test_signatures_menus_and_blobs_have_their_content_types(client: TestClient[Any, Any]) -> None:
    sig = await client.get("/v1/store/plans/edge/cams/plan.sig")
    assert sig.status == 200 and sig.headers["Content-Type"].startswith("text/plain")
    menu = await client.get("/v1/store/models/edge/digits/menu.json")
    assert menu.status == 200 and await menu.read() == MENU

    digest = sha256_bytes(BLOB)
    blob = await client.get(f"/v1/store/models/edge/digits/blobs/{digest}")
    assert blob.status == 200 and await blob.read() == BLOB
    assert blob.headers["Content-Type"] == "application/octet-stream"
    assert blob.headers["ETag"] == f'"{digest}"'
    assert blob.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    cached = await client.get(f"/v1/store/models/edge/digits/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert cached.status == 304


@pytest.mark.parametrize(
    "path",
    [
        "/v1/store/plans/edge/cams/missing.json",
        "/v1/store/models/edge/digits/blobs/" + "0" * 64,
        "/v1/store/sources/edge/digits/model.onnx",
        "/v1/store/models/%2E%2E/sources/edge/digits/model.onnx",  # inside the root, still not served
        "/v1/store/plans/edge/cams",  # a directory
        "/v1/store/plans/edge/cams/.plan.json.tmp",
    ],
)
async def test_absent_and_unserved_keys_are_404_naming_the_key(
    client: TestClient[Any, Any], store: DirectoryStore, path: str
) -> None:
    (store.root / "plans/edge/cams/.plan.json.tmp").write_bytes(b"half")
    response = await client.get(URL(path, encoded=True))
    assert response.status == 404
    assert "store key not found" in (await response.json())["error"]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/v1/store/models/%2E%2E/%2E%2E/secret.txt", "store key escapes the store root: 'models/../../secret.txt'"),
        ("/v1/store/%2Fetc%2Fpasswd", "store key escapes the store root: '/etc/passwd'"),
        ("/v1/store/plans/a%00b", "store key 'plans/a\\x00b': contains a NUL byte"),
    ],
)
async def test_bad_keys_are_400_naming_the_key(client: TestClient[Any, Any], path: str, error: str) -> None:
    response = await client.get(URL(path, encoded=True))
    assert response.status == 400
    assert (await response.json())["error"] == error


async def test_a_batch_with_one_bad_report_takes_the_others(client: TestClient[Any, Any]) -> None:
    batch = {"reports": [report("d1"), report("d2", phase="Runing"), report("d3", variant="fp32")]}
    response = await client.post("/v1/reports", json=batch)
    assert response.status == 200
    body = await response.json()
    assert body["accepted"] == 2
    error = "reports[1].phase: 'Runing' is not one of Pending, Downloading, Verifying, Running, Failed"
    assert body["rejected"] == [{"index": 1, "reason": "malformed", "error": error}]


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (b"{not json", 400, "body: not valid JSON"),
        (b"[" * 100_000, 400, "body: not valid JSON"),
        (b'{"reports": 3}', 400, "reports: is required and must be a list"),
        (json.dumps({"reports": [report("d")] * 1001}).encode(), 413, "reports: 1001 reports, at most 1000"),
        (b" " * (MAX_BODY_BYTES + 1), 413, "body: larger than 4 MiB"),
    ],
)
async def test_bad_batches_are_refused_and_the_gateway_keeps_serving(
    client: TestClient[Any, Any], data: bytes, status: int, error: str
) -> None:
    # BytesIO: aiohttp's client warns that large raw bytes could block its event loop.
    response = await client.post("/v1/reports", data=io.BytesIO(data), headers={"Content-Type": "application/json"})
    assert response.status == status
    assert (await response.json())["error"].startswith(error)
    assert (await client.get("/healthz")).status == 200


async def test_chunked_bodies_over_the_limit_are_413(client: TestClient[Any, Any]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (1024 * 1024)

    response = await client.post("/v1/reports", data=chunks())
    assert response.status == 413


async def test_summary_follows_reports_and_the_clock(client: TestClient[Any, Any], clock: Clock) -> None:
    empty = await client.get("/v1/fleets/edge/nobody/summary", params={"menu_version": "2"})
    assert empty.status == 200 and (await empty.json())["devices_reporting"] == 0

    batch = [report("d1"), report("d2", variant="fp32"), report("d3", phase="Failed", variant=None)]
    await client.post("/v1/reports", json={"reports": batch})
    response = await client.get("/v1/fleets/edge/cams/summary", params={"menu_version": "2"})
    assert await response.json() == {
        "devices_reporting": 3, "converged": 2, "failed": 1,
        "by_phase": {"Running": 2, "Failed": 1}, "by_variant": {"int8": 1, "fp32": 1},
        "last_converged_at": 1000.0, "menu_version": 2,
        "by_revision": {"0": {"Running": 2, "Failed": 1}}, "running_by_revision": {"0": {"int8": 1, "fp32": 1}},
        "stale": 0,
        "drift": [],  # no device sent histograms
        "rejected": {"total": 0, "by_reason": {}, "devices": []},
    }
    clock.now = 1031.0
    offline = await (await client.get("/v1/fleets/edge/cams/summary")).json()
    assert offline["by_phase"] == {"Offline": 3} and offline["converged"] == 0 and offline["menu_version"] == 2

    for raw in ("-1", "two", "\u00b2", "9" * 5000):
        bad = await client.get("/v1/fleets/edge/cams/summary", params={"menu_version": raw})
        assert bad.status == 400 and (await bad.json())["error"].startswith("menu_version:")


async def test_a_full_batch_is_taken_off_the_event_loop_and_counted(client: TestClient[Any, Any]) -> None:
    batch = [report(f"d{i}", latencies_ms=[0.5] * 256, inferences=256) for i in range(1000)]
    data = io.BytesIO(json.dumps({"reports": batch}).encode())
    response = await client.post("/v1/reports", data=data, headers={"Content-Type": "application/json"})
    assert (await response.json())["accepted"] == 1000
    text = await (await client.get("/metrics")).text()
    labels = 'device_class="gateway",fleet="cams",namespace="edge",revision="0",variant="int8"'
    assert f"tinymlops_device_inference_latency_seconds_count{{{labels}}} 256000.0" in text


def test_hot_files_are_hashed_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tinymlops.gateway.app as app_module

    hashed: list[bytes] = []

    def counting_sha256(data: bytes) -> str:
        hashed.append(data)
        return sha256_bytes(data)

    monkeypatch.setattr(app_module, "sha256_bytes", counting_sha256)
    store = DirectoryStore(tmp_path)
    files, key = app_module.HotFiles(store), "plans/a/b/plan.json"
    store.put(key, PLAN)
    assert files.read(key) == files.read(key) == (PLAN, sha256_bytes(PLAN))
    assert hashed == [PLAN]
    store.put(key, PLAN)  # rewritten: a new inode, so hashed again
    files.read(key)
    assert len(hashed) == 2


async def test_metrics_export_device_and_fleet_series_without_device_ids(client: TestClient[Any, Any]) -> None:
    await client.get("/v1/store/plans/edge/cams/plan.json")
    await client.get("/v1/store/sources/edge/digits/model.onnx")
    await client.post("/v1/reports", json={"reports": [report("d1"), report("d2", phase="x")]})
    response = await client.get("/metrics")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    labels = 'device_class="gateway",fleet="cams",namespace="edge",revision="0",variant="int8"'
    assert f"tinymlops_device_inferences_total{{{labels}}} 4.0" in text
    assert f"tinymlops_device_inference_latency_seconds_count{{{labels}}} 2.0" in text
    load = 'fleet="cams",namespace="edge",revision="0",variant="int8"'
    assert f"tinymlops_device_model_load_seconds_count{{{load}}} 1.0" in text
    assert 'tinymlops_fleet_devices{fleet="cams",namespace="edge",phase="Running",revision="0"} 1.0' in text
    assert 'tinymlops_fleet_converged_devices{fleet="cams",namespace="edge",variant="int8"} 1.0' in text
    assert "_created" not in text  # one series per counter, not two
    assert 'tinymlops_gateway_reports_total{result="accepted"} 1.0' in text
    assert 'tinymlops_gateway_reports_total{result="rejected"} 1.0' in text
    assert 'tinymlops_gateway_store_requests_total{code="200",kind="plan"} 1.0' in text
    assert 'tinymlops_gateway_store_requests_total{code="404",kind="other"} 1.0' in text
    assert "d1" not in text and "d2" not in text


async def test_a_canary_is_visible_by_revision_in_the_summary_and_the_metrics(
    client: TestClient[Any, Any], clock: Clock
) -> None:
    batch = [
        report("s1", revision=1),
        report("s2", revision=1, variant="fp32"),
        report("c1", revision=2, target_revision=2),
        report("c2", phase="Failed", revision=1, target_revision=2, reason="health check failed"),
        report("bad", revision=True),
    ]
    body = await (await client.post("/v1/reports", json={"reports": batch})).json()
    assert body["accepted"] == 4
    assert body["rejected"] == [{"index": 4, "reason": "malformed",
                                 "error": "reports[4].revision: True is not an integer in 0..1000000000"}]
    # The same batch again (a retry after a lost response) must not count c2's failure twice.
    await client.post("/v1/reports", json={"reports": batch[:4]})

    summary = await (await client.get("/v1/fleets/edge/cams/summary")).json()
    assert summary["by_revision"] == {"1": {"Running": 2}, "2": {"Running": 1, "Failed": 1}}
    assert summary["running_by_revision"] == {"1": {"int8": 1, "fp32": 1}, "2": {"int8": 1}}
    assert (summary["converged"], summary["failed"], summary["by_phase"]) == (3, 1, {"Running": 3, "Failed": 1})

    text = await (await client.get("/metrics")).text()
    fleet = 'fleet="cams",namespace="edge"'
    assert f'tinymlops_fleet_devices{{{fleet},phase="Failed",revision="2"}} 1.0' in text
    assert f'tinymlops_fleet_devices{{{fleet},phase="Failed",revision="1"}} 0.0' in text
    assert f'tinymlops_fleet_devices{{{fleet},phase="Running",revision="2"}} 1.0' in text
    assert f'tinymlops_device_update_failures_total{{{fleet},revision="2"}} 1.0' in text
    assert f'tinymlops_device_update_failures_total{{{fleet},revision="1"}} 0.0' in text
    canary = 'device_class="gateway",fleet="cams",namespace="edge",revision="2",variant="int8"'
    assert f"tinymlops_device_inferences_total{{{canary}}} 4.0" in text

    clock.now = 1031.0
    offline = await (await client.get("/v1/fleets/edge/cams/summary")).json()
    assert offline["by_revision"] == {"1": {"Offline": 2}, "2": {"Offline": 2}}
    assert offline["running_by_revision"] == {}
    text = await (await client.get("/metrics")).text()
    assert f'tinymlops_fleet_devices{{{fleet},phase="Offline",revision="2"}} 2.0' in text


async def test_unknown_routes_answer_json(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v2/nothing")
    assert response.status == 404 and "error" in await response.json()
    wrong_method = await client.delete("/v1/reports")
    assert wrong_method.status == 405 and "error" in await wrong_method.json()


async def test_gateway_listens_on_a_free_loopback_port(store: DirectoryStore) -> None:
    gateway_ = Gateway(store)
    await gateway_.start()
    try:
        assert gateway_.url.startswith("http://127.0.0.1:") and gateway_.port > 0
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{gateway_.url}/v1/reports", json={"reports": [report("d1")]}) as response,
        ):
            assert (await response.json())["accepted"] == 1
        assert gateway_.state.summary("edge", "cams").converged == 1
    finally:
        await gateway_.stop()
    await gateway_.stop()  # idempotent


def test_cli_run_has_help_and_needs_the_store_env() -> None:
    runner = CliRunner()
    result = runner.invoke(gateway, ["run", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "TINYMLOPS_STORE" in result.output
    missing = runner.invoke(gateway, ["run"], env={"TINYMLOPS_STORE": ""})
    assert missing.exit_code == 2 and "TINYMLOPS_STORE is not set" in missing.output
