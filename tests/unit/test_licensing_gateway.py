"""The gateway's side of pay-per-query: uploads reconciled against the last accepted checkpoint, usage counted
once, anomalies by name in the summary and the metrics; tokens handed to registered devices; refill decisions."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.test_licensing_agent import IDENTITY, install, issue, keys, variant_dir  # noqa: F401 (fixture)
from tinymlops.agent.standalone import infer
from tinymlops.agent.usage_uplink import acked_end, refresh_license, upload
from tinymlops.errors import LicenseRefusedError, MeterStateMissingError, SpecError
from tinymlops.gateway.app import create_app
from tinymlops.gateway.authn import ReportGuard
from tinymlops.layout import license_key
from tinymlops.licensing import chain
from tinymlops.licensing.checkpoint import Checkpoint, seal
from tinymlops.licensing.issuer import Issued, LicenseSpec, next_quota, period_used
from tinymlops.model.digits import DigitsArtifacts
from tinymlops.store import DirectoryStore

KEY = Ed25519PrivateKey.generate()
T0 = 1_800_000_000


def checkpoints(n: int, *, start: int = 0, head: bytes = chain.GENESIS, at: int = T0) -> list[Checkpoint]:
    out, token = [], bytes(16)
    for i in range(n):
        receipts = os.urandom(32 * 10)
        new = chain.fold(head, start + 1, receipts, token)
        out.append(seal(KEY, token_id=token, start=start, end=start + 10, sealed_at=at + i, prev_head=head, head=new,
                        root=chain.interval_root(start + 1, receipts)))
        start, head = start + 10, new
    return out


def body(cps: list[Checkpoint]) -> dict[str, str]:
    return {"checkpoints": base64.b64encode(b"".join(c.to_bytes() for c in cps)).decode()}


async def test_uploads_are_reconciled_counted_once_and_anomalies_named(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    app = create_app(store, guard=ReportGuard({("edge", "cam-1"): KEY.public_key()}))
    cps = checkpoints(4)
    async with TestClient(TestServer(app)) as client:
        first = await (await client.post("/v1/usage/edge/cams/cam-1", json=body(cps[:3]))).json()
        assert first["usage"] == 30 and first["anomalies"] == [] and first["last_end"] == 30
        again = await (await client.post("/v1/usage/edge/cams/cam-1", json=body(cps[2:3]))).json()
        assert again["usage"] == 0 and [a["kind"] for a in again["anomalies"]] == ["replayed-checkpoint"]
        restored = checkpoints(1, start=10, head=cps[0].head, at=T0 + 100)
        rolled = await (await client.post("/v1/usage/edge/cams/cam-1", json=body(restored))).json()
        assert [a["kind"] for a in rolled["anomalies"]] == ["rolled-back-counter"]
        assert (await client.post("/v1/usage/edge/cams/cam-9", json=body(cps))).status == 403
        assert (await client.post("/v1/usage/edge/cams/cam-1", json={"checkpoints": "!!"})).status == 400
        assert (await client.post("/v1/usage/edge/cams/cam-1", data=b"{")).status == 400
        assert (await client.post("/v1/usage/edge/../cam-1", json=body(cps))).status in (400, 404)
        summary = await (await client.get("/v1/fleets/edge/cams/usage")).json()
        assert summary["inferences"] == 40 and summary["anomalies"] == {"replayed-checkpoint": 1,
                                                                       "rolled-back-counter": 1}
        assert summary["devices"]["cam-1"]["counted"] == 40
        metrics = await (await client.get("/metrics")).text()
        assert 'tinymlops_license_inferences_total{fleet="cams",namespace="edge"} 40.0' in metrics
        assert 'kind="rolled-back-counter",namespace="edge"} 1.0' in metrics and "cam-1" not in metrics
        assert (await client.get("/v1/licenses/edge/cams/cam-1")).status == 404
        store.put(license_key("edge", "cams", "cam-1"), b"v4.public.token\n")
        assert await (await client.get("/v1/licenses/edge/cams/cam-1")).text() == "v4.public.token\n"
        assert (await client.get("/v1/licenses/edge/cams/cam-9")).status == 403


async def test_a_rollback_across_a_gateway_restart_is_caught(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    guard = {("edge", "cam-1"): KEY.public_key()}
    cps = checkpoints(3)
    async with TestClient(TestServer(create_app(store, guard=ReportGuard(dict(guard))))) as client:
        first = await (await client.post("/v1/usage/edge/cams/cam-1", json=body(cps))).json()
        assert first["usage"] == 30 and first["anomalies"] == []
        assert (await client.get("/v1/store/registry/usage/edge/cam-1.json")).status in (403, 404)  # never served
    # The gateway restarts (a new app, nothing in memory), and the device restored a state from before
    # the second checkpoint: its next checkpoint re-uses counters 11..20.
    async with TestClient(TestServer(create_app(store, guard=ReportGuard(dict(guard))))) as client:
        summary = await (await client.get("/v1/fleets/edge/cams/usage")).json()
        assert summary["inferences"] == 30 and summary["devices"]["cam-1"]["per_token"] == {"00" * 16: 30}
        restored = checkpoints(1, start=10, head=cps[0].head, at=T0 + 100)
        caught = await (await client.post("/v1/usage/edge/cams/cam-1", json=body(restored))).json()
        assert [a["kind"] for a in caught["anomalies"]] == ["rolled-back-counter"]
        replay = await (await client.post("/v1/usage/edge/cams/cam-1", json=body(restored))).json()
        assert replay["usage"] == 0 and [a["kind"] for a in replay["anomalies"]] == ["replayed-checkpoint"]
        assert (await client.get("/v1/fleets/edge/../usage")).status in (400, 404)
    async with TestClient(TestServer(create_app(store, guard=ReportGuard(dict(guard))))) as client:
        again = await (await client.get("/v1/fleets/edge/cams/usage")).json()
        assert again["devices"]["cam-1"]["anomalies"] == {"rolled-back-counter": 1, "replayed-checkpoint": 1}
        assert [a["kind"] for a in again["devices"]["cam-1"]["recent"]] == ["rolled-back-counter",
                                                                          "replayed-checkpoint"]


def test_a_damaged_usage_ledger_is_named(tmp_path: Path) -> None:
    from tinymlops.errors import ReceiptsError
    from tinymlops.gateway.usageledger import UsageLedger
    from tinymlops.layout import usage_ledger_key

    store = DirectoryStore(tmp_path)
    store.put(usage_ledger_key("edge", "cam-1"), b'{"fleet": "cams"}')
    with pytest.raises(ReceiptsError, match="registry/usage/edge/cam-1.json: not a usage ledger"):
        UsageLedger(store).load("edge", "cam-1")


async def test_without_a_registry_no_usage_is_taken(tmp_path: Path) -> None:
    async with TestClient(TestServer(create_app(DirectoryStore(tmp_path)))) as client:
        assert (await client.post("/v1/usage/edge/cams/cam-1", json=body(checkpoints(1)))).status == 403


def test_refills_follow_reconciled_usage_within_the_period() -> None:
    spec = LicenseSpec("acme", per_period=250, per_token=100, period="month")
    assert next_quota(spec, None, 0, T0) == 100
    issued = Issued("t1", 100, 1, "2027-01", 0)
    now = 1_798_800_000 + 86400 * 10  # within 2027-01
    assert next_quota(spec, issued, 99, now) is None  # not used up yet
    assert next_quota(spec, issued, 100, now) == 100
    second = Issued("t2", 100, 2, "2027-01", period_used(issued, 100, now, spec))
    assert next_quota(spec, second, 100, now) == 50  # what is left of the month's 250
    third = Issued("t3", 50, 3, "2027-01", period_used(second, 100, now, spec))
    assert next_quota(spec, third, 50, now) is None  # the month is used up
    assert next_quota(spec, third, 0, now + 86400 * 31) == 100  # a new month
    with pytest.raises(SpecError, match="perToken"):
        LicenseSpec("acme", per_period=10, per_token=20)


async def test_a_device_uploads_runs_out_and_is_refilled_through_the_gateway(
        tmp_path: Path, variant_dir: Path, digits: DigitsArtifacts) -> None:  # noqa: F811
    keys(tmp_path)
    state, installed = install(tmp_path, variant_dir, issue(tmp_path, variant_dir, 4))
    assert installed.exit_code == 0, installed.output
    with np.load(digits.data_path) as npz:
        x = npz["x"][:4]
    infer(state, x)
    with pytest.raises(LicenseRefusedError, match="quota exhausted: 4 of 4"):
        infer(state, x[:1])
    store = DirectoryStore(tmp_path / "store")
    app = create_app(store, guard=ReportGuard({("edge", "cam-1"): IDENTITY.public_key()}))
    async with TestClient(TestServer(app)) as client:
        url = str(client.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as session:
            answer = await upload(session, url, state, namespace="edge", fleet="cams", device="cam-1", now=T0)
            assert answer["usage"] == 4 and acked_end(state) == 4
            nothing_new = await upload(session, url, state, namespace="edge", fleet="cams", device="cam-1", now=T0)
            assert nothing_new["usage"] == 0 and nothing_new["anomalies"] == []
            assert await refresh_license(session, url, state, namespace="edge", fleet="cams", device="cam-1",
                                         now=T0) is None
            refill = issue(tmp_path, variant_dir, 6, "refill", epoch="2").read_bytes()
            store.put(license_key("edge", "cams", "cam-1"), refill)
            lic = await refresh_license(session, url, state, namespace="edge", fleet="cams", device="cam-1", now=T0)
            assert lic is not None and lic.quota == 6 and lic.epoch == 2
    assert len(infer(state, x).scores) == 4  # serving again under the refill

    # meter.json deleted: refused (not unmetered); the gateway's token, installed again, rebuilds the meter and
    # counts the lost reservation as possibly served (here: the rest of the refill).
    (state / "meter.json").unlink()
    with pytest.raises(MeterStateMissingError, match="meter.json is missing"):
        infer(state, x[:1])
    async with TestClient(TestServer(app)) as client:
        url = str(client.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as session:
            assert (await upload(session, url, state, namespace="edge", fleet="cams", device="cam-1",
                                 now=T0))["anomalies"] == []
            lic = await refresh_license(session, url, state, namespace="edge", fleet="cams", device="cam-1", now=T0)
            assert lic is not None and lic.epoch == 2
    with pytest.raises(LicenseRefusedError, match="quota exhausted: 6 of 6"):
        infer(state, x[:1])
