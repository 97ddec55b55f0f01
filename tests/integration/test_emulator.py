"""The local Kubernetes API emulator, checked with the clients that use it: raw HTTP, kubectl and kopf."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml

from tinymlops.stack.emulator import ApiEmulator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EM = ("tinymlops.io", "v1alpha1", "edgemodels")
EM_URL = "/apis/tinymlops.io/v1alpha1/namespaces/default/edgemodels"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def edgemodel(name: str = "digits", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tinymlops.io/v1alpha1",
        "kind": "EdgeModel",
        "metadata": {"name": name},
        "spec": {"source": {"uri": "store://sources/digits/model.onnx"}, "variants": {"precisions": ["fp32"]}, **spec},
    }


@pytest.fixture
async def emulator() -> AsyncIterator[ApiEmulator]:
    async with ApiEmulator([ROOT / "crds"]) as emu:
        yield emu


@pytest.fixture
async def api(emulator: ApiEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=emulator.url) as session:
        yield session


async def call(api: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    async with api.request(method, url, json=body, **kw) as response:
        return response.status, await response.json()


async def kubectl(emulator: ApiEmulator, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    config = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    process = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(config), *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


async def test_discovery_describes_crds_and_core_resources(api: aiohttp.ClientSession) -> None:
    _, core = await call(api, "GET", "/api/v1")
    resources = {r["name"]: r for r in core["resources"]}
    assert core["groupVersion"] == "v1"
    assert resources["namespaces"]["namespaced"] is False
    assert {"configmaps", "secrets", "events", "nodes"} <= set(resources)
    _, ours = await call(api, "GET", "/apis/tinymlops.io/v1alpha1")
    resources = {r["name"]: r for r in ours["resources"]}
    assert resources["edgemodels"]["shortNames"] == ["em"]
    assert set(resources["devicefleets"]["shortNames"]) == {"df", "fleet"}
    assert resources["edgemodels"]["kind"] == "EdgeModel" and resources["edgemodels"]["namespaced"] is True
    assert {"list", "watch", "patch"} <= set(resources["edgemodels"]["verbs"])
    assert "edgemodels/status" in resources
    _, groups = await call(api, "GET", "/apis")
    assert {"tinymlops.io", "devices.kubeedge.io", "apiextensions.k8s.io", "events.k8s.io"} <= {
        g["name"] for g in groups["groups"]
    }


async def test_create_completes_metadata_and_lists(api: aiohttp.ClientSession) -> None:
    status, created = await call(api, "POST", EM_URL, edgemodel())
    assert status == 201
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["generation"] == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert created["spec"]["accuracyBudget"] == 0.01  # a schema default
    status, listed = await call(api, "GET", EM_URL)
    assert listed["kind"] == "EdgeModelList" and listed["apiVersion"] == "tinymlops.io/v1alpha1"
    assert int(listed["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    assert [i["metadata"]["name"] for i in listed["items"]] == ["digits"]
    status, error = await call(api, "POST", EM_URL, edgemodel())
    assert (status, error["kind"], error["reason"]) == (409, "Status", "AlreadyExists")
    status, error = await call(api, "GET", f"{EM_URL}/nope")
    assert (status, error["reason"], error["message"]) == (404, "NotFound", 'edgemodels.tinymlops.io "nope" not found')


async def test_invalid_objects_are_rejected_naming_the_field(api: aiohttp.ClientSession) -> None:
    body = edgemodel()
    del body["spec"]["source"]
    status, error = await call(api, "POST", EM_URL, body)
    assert (status, error["reason"]) == (422, "Invalid")
    assert "spec.source: Required value" in error["message"]
    await call(api, "POST", EM_URL, edgemodel())
    status, error = await call(api, "PATCH", f"{EM_URL}/digits", {"spec": {"accuracyBudget": 7}}, headers=MERGE)
    assert status == 422 and "spec.accuracyBudget" in error["message"]


async def test_generation_and_the_status_subresource(api: aiohttp.ClientSession) -> None:
    await call(api, "POST", EM_URL, edgemodel())
    _, obj = await call(api, "PATCH", f"{EM_URL}/digits/status", {"status": {"phase": "Building"}}, headers=MERGE)
    assert obj["status"] == {"phase": "Building"} and obj["metadata"]["generation"] == 1
    # The main resource ignores status; the status subresource ignores everything else.
    patch = {"spec": {"accuracyBudget": 0.05}, "status": {"phase": "Hacked"}, "metadata": {"labels": {"a": "b"}}}
    _, obj = await call(api, "PATCH", f"{EM_URL}/digits", patch, headers=MERGE)
    assert obj["status"] == {"phase": "Building"} and obj["metadata"]["generation"] == 2
    assert obj["metadata"]["labels"] == {"a": "b"}
    _, obj = await call(api, "PATCH", f"{EM_URL}/digits/status", {"spec": {"accuracyBudget": 0.5}}, headers=MERGE)
    assert obj["spec"]["accuracyBudget"] == 0.05
    rv = obj["metadata"]["resourceVersion"]
    _, obj = await call(api, "PATCH", f"{EM_URL}/digits", {"metadata": {"annotations": {"x": "y"}}}, headers=MERGE)
    assert obj["metadata"]["generation"] == 2 and int(obj["metadata"]["resourceVersion"]) > int(rv)
    _, same = await call(api, "PATCH", f"{EM_URL}/digits", {"metadata": {"annotations": {"x": "y"}}}, headers=MERGE)
    assert same["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]  # no-op writes are free
    stale = {**obj, "metadata": {**obj["metadata"], "resourceVersion": rv}}
    status, error = await call(api, "PUT", f"{EM_URL}/digits", stale)
    assert (status, error["reason"]) == (409, "Conflict")


async def test_merge_and_json_patches(api: aiohttp.ClientSession) -> None:
    body = edgemodel()
    body["metadata"]["annotations"] = {"keep": "1", "drop": "2"}
    await call(api, "POST", EM_URL, body)
    _, obj = await call(api, "PATCH", f"{EM_URL}/digits", {"metadata": {"annotations": {"drop": None}}}, headers=MERGE)
    assert obj["metadata"]["annotations"] == {"keep": "1"}
    rv = obj["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["tinymlops.io/cleanup"]},
    ]
    status, obj = await call(api, "PATCH", f"{EM_URL}/digits", ops, headers=JSON_PATCH)
    assert status == 200 and obj["metadata"]["finalizers"] == ["tinymlops.io/cleanup"]
    status, error = await call(api, "PATCH", f"{EM_URL}/digits", ops, headers=JSON_PATCH)  # rv is stale now
    assert (status, error["reason"]) == (422, "Invalid")  # what kopf expects from a failed test op


async def test_watch_sees_added_modified_deleted_and_resumes(api: aiohttp.ClientSession) -> None:
    _, listed = await call(api, "GET", EM_URL)
    since = listed["metadata"]["resourceVersion"]
    events: list[tuple[str, str]] = []

    async def watch(rv: str) -> None:
        params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "5"}
        async with api.get(EM_URL, params=params) as response:
            async for line in response.content:
                event = json.loads(line)
                events.append((event["type"], event["object"]["metadata"]["resourceVersion"]))
                if event["type"] == "DELETED":
                    return

    watcher = asyncio.create_task(watch(since))
    await asyncio.sleep(0.1)
    await call(api, "POST", EM_URL, edgemodel())
    await call(api, "PATCH", f"{EM_URL}/digits", {"spec": {"accuracyBudget": 0.02}}, headers=MERGE)
    await call(api, "DELETE", f"{EM_URL}/digits")
    await asyncio.wait_for(watcher, 5)
    assert [kind for kind, _ in events] == ["ADDED", "MODIFIED", "DELETED"]
    live, events[:] = list(events), []
    await asyncio.wait_for(watch(live[0][1]), 5)  # a resumed watch replays what came after its resourceVersion
    assert events == live[1:]


async def test_deletion_waits_for_finalizers(api: aiohttp.ClientSession) -> None:
    body = edgemodel()
    body["metadata"]["finalizers"] = ["tinymlops.io/cleanup"]
    await call(api, "POST", EM_URL, body)
    status, obj = await call(api, "DELETE", f"{EM_URL}/digits")
    assert status == 200 and obj["metadata"]["deletionTimestamp"].endswith("Z")
    status, obj = await call(api, "GET", f"{EM_URL}/digits")
    assert status == 200
    await call(api, "PATCH", f"{EM_URL}/digits", {"metadata": {"finalizers": None}}, headers=MERGE)
    status, _ = await call(api, "GET", f"{EM_URL}/digits")
    assert status == 404


async def test_namespaces_events_and_generate_name(api: aiohttp.ClientSession) -> None:
    status, listed = await call(api, "GET", "/api/v1/namespaces")  # kmock 0.8 itself fails on this URL
    assert status == 200 and [n["metadata"]["name"] for n in listed["items"]] == ["default"]
    status, _ = await call(api, "POST", "/api/v1/namespaces", {"metadata": {"name": "edge"}})
    assert status == 201
    status, ns = await call(api, "GET", "/api/v1/namespaces/edge")
    assert (status, ns["kind"], ns["status"]["phase"]) == (200, "Namespace", "Active")
    event = {"metadata": {"namespace": "edge", "generateName": "kopf-event-"}, "reason": "Test", "message": "hi"}
    status, posted = await call(api, "POST", "/api/v1/namespaces/edge/events", event)
    assert status == 201 and posted["metadata"]["name"].startswith("kopf-event-") and posted["kind"] == "Event"
    status, error = await call(api, "POST", "/api/v1/namespaces/nowhere/configmaps", {"metadata": {"name": "c"}})
    assert status == 404


async def test_a_thousand_devices_take_seconds(emulator: ApiEmulator, api: aiohttp.ClientSession) -> None:
    url = "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices"
    started = time.monotonic()
    for i in range(1000):
        body = {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
                "metadata": {"name": f"dev-{i:04}", "labels": {"tinymlops.io/arch": "aarch64" if i % 2 else "x86_64"}},
                "spec": {"deviceModelRef": {"name": "rpi"}}}
        status, _ = await call(api, "POST", url, body)
        assert status == 201
    _, listed = await call(api, "GET", url, params={"labelSelector": "tinymlops.io/arch=aarch64"})
    assert len(listed["items"]) == 500
    assert time.monotonic() - started < 15
    assert emulator.writes["create", "devices"] == 1000 and emulator.write_count == 1000
    assert len(emulator.objects("devices.kubeedge.io", "v1beta1", "devices", "default")) == 1000


async def test_kubectl_apply_get_and_reapply_without_flags(emulator: ApiEmulator, tmp_path: Path) -> None:
    code, out, err = await kubectl(emulator, tmp_path, "apply", "-f", "examples/")
    assert code == 0, err
    code, more, err = await kubectl(emulator, tmp_path, "apply", "-f", "examples/kubeedge/")
    assert code == 0, err
    out += more
    assert "edgemodel.tinymlops.io/digits created" in out and "device.devices.kubeedge.io/" in out
    for what in ("edgemodels", "em", "devicefleets", "df", "fleet", "devices", "crd"):
        code, out, err = await kubectl(emulator, tmp_path, "get", what)
        assert code == 0 and "NAME" in out, (what, err)
    code, out, _ = await kubectl(emulator, tmp_path, "get", "df", "digits-fleet")
    assert "MODEL" in out.splitlines()[0] and "digits" in out.splitlines()[1]  # printer columns via Table
    changed = yaml.safe_load((ROOT / "examples/edgemodel-digits.yaml").read_text())
    changed["spec"]["accuracyBudget"] = 0.02
    (tmp_path / "em.yaml").write_text(yaml.safe_dump(changed))
    code, out, err = await kubectl(emulator, tmp_path, "apply", "-f", str(tmp_path / "em.yaml"))
    assert code == 0 and "configured" in out, err
    code, out, _ = await kubectl(emulator, tmp_path, "get", "em", "digits", "-o", "json")
    obj = json.loads(out)
    assert obj["spec"]["accuracyBudget"] == 0.02 and obj["metadata"]["generation"] == 2
    code, out, err = await kubectl(emulator, tmp_path, "delete", "em", "digits")
    assert code == 0 and "deleted" in out, err
    invalid = "examples/invalid/edgemodel-missing-source.yaml"
    code, _, err = await kubectl(emulator, tmp_path, "apply", "-f", invalid)
    assert code != 0 and "spec.source: Required value" in err


@pytest.mark.parametrize("scope", [{"clusterwide": True}, {"namespaces": ["def*"]}], ids=["clusterwide", "glob"])
async def test_kopf_operator_sees_creations_and_writes_status(
    emulator: ApiEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scope: dict[str, Any]
) -> None:
    """Namespace globs make kopf list and watch namespaces: the URL kmock 0.8 could not parse."""
    monkeypatch.setenv("KUBECONFIG", str(emulator.write_kubeconfig(tmp_path / "kubeconfig")))
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create(*EM, registry=registry)
    def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Pending"
        kopf.info(body, reason="Seen", message="the emulator works")

    stop = asyncio.Event()
    operator = asyncio.create_task(kopf.operator(registry=registry, stop_flag=stop, **scope))
    try:
        async with aiohttp.ClientSession(base_url=emulator.url) as api:
            await call(api, "POST", EM_URL, edgemodel())
            for _ in range(100):
                (obj,) = emulator.objects(*EM, "default")
                events = emulator.objects("", "v1", "events", "default")
                if obj.get("status", {}).get("phase") == "Pending" and events:
                    break
                await asyncio.sleep(0.1)
        assert obj["status"]["phase"] == "Pending"
        assert emulator.writes["patch", "edgemodels/status"] >= 1
        assert [(e["reason"], e["involvedObject"]["name"]) for e in events] == [("Seen", "digits")]
    finally:
        stop.set()
        await asyncio.wait_for(operator, 10)


def test_runs_in_a_thread_for_synchronous_callers() -> None:
    emulator = ApiEmulator([ROOT / "crds"])
    with emulator.running_in_thread():
        with urllib.request.urlopen(f"{emulator.url}/api/v1/namespaces", timeout=5) as response:
            assert json.load(response)["kind"] == "NamespaceList"
        assert [n["metadata"]["name"] for n in emulator.objects("", "v1", "namespaces")] == ["default"]
        assert emulator.write_count == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{emulator.url}/api", timeout=2)
