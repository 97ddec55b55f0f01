"""The emulator's OpenAPI documents and server-side field validation, as kubectl uses them (no flags)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.integration.test_emulator import EM_URL, MERGE, ROOT, api, call, edgemodel, emulator, kubectl
from tinymlops.stack.emulator import ApiEmulator

pytestmark = pytest.mark.integration
__all__ = ["api", "emulator"]  # fixtures shared with test_emulator

INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))


def expectation(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# expect: ").strip()


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
async def test_kubectl_refuses_every_invalid_example_naming_the_field(
    emulator: ApiEmulator, tmp_path: Path, path: Path
) -> None:
    code, _, err = await kubectl(emulator, tmp_path, "apply", "-f", str(path))
    expected = expectation(path)
    field = expected.partition(": ")[0]
    assert code != 0
    assert expected in err or f'strict decoding error: unknown field "{field}"' in err, err
    (doc,) = yaml.safe_load_all(path.read_text())
    group, version = doc["apiVersion"].split("/")
    plural = f"{doc['kind'].lower()}s"  # every CRD of ours is named <kind>s (tests/unit/test_crds.py)
    assert emulator.objects(group, version, plural) == []


async def test_kubectl_explains_the_crd_fields(emulator: ApiEmulator, tmp_path: Path) -> None:
    code, out, err = await kubectl(emulator, tmp_path, "explain", "edgemodel.spec")
    assert code == 0, err
    assert "KIND:       EdgeModel" in out and "FIELD: spec <Object>" in out
    assert "accuracyBudget\t<number>" in out and "source\t<Object> -required-" in out
    code, out, err = await kubectl(emulator, tmp_path, "explain", "devicefleet.spec.strategy.canary.steps")
    assert code == 0 and "setWeight" in out, err
    code, out, _ = await kubectl(emulator, tmp_path, "explain", "configmap.data")
    assert code == 0 and "map[string]string" in out


async def test_the_server_reports_the_version_whose_features_it_has(emulator: ApiEmulator, tmp_path: Path) -> None:
    code, out, _ = await kubectl(emulator, tmp_path, "version", "-o", "yaml")
    server = yaml.safe_load(out)["serverVersion"]
    # CEL rules with isSorted and fieldPath (our DeviceFleet CRD) and server-side field validation: 1.28+.
    assert code == 0 and (server["major"], int(server["minor"])) >= ("1", 28)


async def test_openapi_v3_announces_field_validation_for_each_kind(api: aiohttp.ClientSession) -> None:
    _, index = await call(api, "GET", "/openapi/v3")
    url = index["paths"]["apis/tinymlops.io/v1alpha1"]["serverRelativeURL"]
    assert {"api/v1", "apis/devices.kubeedge.io/v1beta1", "apis/apiextensions.k8s.io/v1"} <= set(index["paths"])
    _, doc = await call(api, "GET", url)
    patch = doc["paths"]["/apis/tinymlops.io/v1alpha1/namespaces/{namespace}/edgemodels/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "tinymlops.io", "version": "v1alpha1",
                                                        "kind": "EdgeModel"}
    assert "fieldValidation" in {p["name"] for p in patch["parameters"] if p["in"] == "query"}
    # A CRD endpoint takes no strategic merge patches, so kubectl must not send one.
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    schema = doc["components"]["schemas"]["io.tinymlops.v1alpha1.EdgeModel"]
    assert schema["properties"]["spec"]["properties"]["accuracyBudget"]["maximum"] == 1
    async with api.get("/openapi/v2", headers={"Accept": "application/json"}) as response:
        v2 = await response.json()
    assert "io.tinymlops.v1alpha1.DeviceFleet" in v2["definitions"]
    async with api.get("/openapi/v2", headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"}
                       ) as response:
        assert response.status == 406  # client-go then does without v2, as against a server that has none


async def test_field_validation_strict_warn_and_ignore(emulator: ApiEmulator, api: aiohttp.ClientSession) -> None:
    body = edgemodel()
    body["spec"]["accuracybudget"] = 0.02
    body["metadata"]["lables"] = {"a": "b"}
    status, error = await call(api, "POST", f"{EM_URL}?fieldValidation=Strict", body)
    assert (status, error["reason"]) == (400, "BadRequest")
    assert 'unknown field "metadata.lables"' in error["message"]
    assert 'unknown field "spec.accuracybudget"' in error["message"]
    async with api.post(f"{EM_URL}?fieldValidation=Warn", json=body) as response:
        assert response.status == 201
        warning = response.headers["Warning"]
        created = await response.json()
    assert '299 - "unknown field \\"spec.accuracybudget\\""' in warning
    assert "accuracybudget" not in created["spec"] and "lables" not in created["metadata"]
    async with api.patch(f"{EM_URL}/digits?fieldValidation=Ignore", json={"spec": {"typo": 1}}, headers=MERGE
                         ) as response:
        assert response.status == 200 and "Warning" not in response.headers
    status, error = await call(api, "PATCH", f"{EM_URL}/digits?fieldValidation=Strict", {"spec": {"typo": 1}},
                               headers=MERGE)
    assert status == 400 and 'unknown field "spec.typo"' in error["message"]
    status, error = await call(api, "POST", f"{EM_URL}?fieldValidation=Sloppy", edgemodel("other"))
    assert status == 400 and "fieldValidation" in error["message"]


async def test_duplicate_fields_are_refused_when_strict(api: aiohttp.ClientSession) -> None:
    raw = (b'{"apiVersion": "tinymlops.io/v1alpha1", "kind": "EdgeModel", "metadata": {"name": "dup"},'
           b' "spec": {"source": {"uri": "store://a"}, "source": {"uri": "store://b"}}}')
    headers = {"Content-Type": "application/json"}
    async with api.post(f"{EM_URL}?fieldValidation=Strict", data=raw, headers=headers) as response:
        error = await response.json()
    assert response.status == 400 and 'duplicate field "spec.source"' in error["message"]
    async with api.post(EM_URL, data=raw, headers=headers) as response:  # Warn, the server's default
        assert response.status == 201 and 'duplicate field \\"spec.source\\"' in response.headers["Warning"]


async def test_built_in_kinds_are_checked_too(api: aiohttp.ClientSession) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}, "dta": {}}
    status, error = await call(api, "POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Strict", config)
    assert status == 400 and 'unknown field "dta"' in error["message"]
