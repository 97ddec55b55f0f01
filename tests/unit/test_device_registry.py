"""The device registry: built by the operator from the Devices' identity annotations, published in the store,
reloaded by the gateway when it changes (logic/registry.py, handlers/registry.py, gateway/registry.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.errors import SignatureError
from tinymlops.gateway.app import create_app
from tinymlops.gateway.authn import ReportGuard, parse_registry
from tinymlops.gateway.registry import StoreRegistry
from tinymlops.layout import DEVICE_REGISTRY_KEY, SERVED_ROOTS
from tinymlops.report import Report, sign_report
from tinymlops.signing import IDENTITY_ANNOTATION, load_public_key_base64, public_key_base64
from tinymlops.store import DirectoryStore
from tinymlops_operator.handlers.registry import RegistryPublisher
from tinymlops_operator.logic.registry import DeviceIdentity, device_identity, registry_bytes

KEY, OTHER = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def annotated(key: Ed25519PrivateKey) -> dict[str, str]:
    return {IDENTITY_ANNOTATION: public_key_base64(key.public_key()), "other": "x"}


def report(device: str = "cam-1") -> Report:
    return Report(device=device, namespace="edge", fleet="cams", device_class="rpi4", arch="aarch64",
                  phase="Running", menu_version=1, sent_at=1.0)


def test_the_raw_key_in_base64_round_trips_and_a_bad_one_is_named() -> None:
    text = public_key_base64(KEY.public_key())
    assert len(text) == 44 and load_public_key_base64(text).public_bytes_raw() == KEY.public_key().public_bytes_raw()
    with pytest.raises(SignatureError, match="Device edge/x.*16 bytes"):
        load_public_key_base64(base64.b64encode(b"0" * 16).decode(), source="Device edge/x")
    with pytest.raises(SignatureError, match="not base64"):
        load_public_key_base64("not base64!")


def test_a_device_registers_its_annotated_key_and_a_malformed_one_is_named_not_registered() -> None:
    good = device_identity("edge", "cam-1", annotated(KEY))
    assert good is not None and good.problem is None
    assert device_identity("edge", "cam-2", {"other": "x"}) is None
    bad = device_identity("edge", "cam-3", {IDENTITY_ANNOTATION: "-----BEGIN PUBLIC KEY-----"})
    assert bad is not None and bad.public_key_pem is None
    assert bad.problem is not None and "Device edge/cam-3" in bad.problem and IDENTITY_ANNOTATION in bad.problem
    registry = parse_registry(registry_bytes([bad, good]))
    assert list(registry) == [("edge", "cam-1")]
    assert registry["edge", "cam-1"].public_bytes_raw() == KEY.public_key().public_bytes_raw()


def test_equal_registries_are_equal_bytes_whatever_the_order() -> None:
    a = device_identity("edge", "a", annotated(KEY))
    b = device_identity("edge", "b", annotated(OTHER))
    assert a is not None and b is not None
    assert registry_bytes([a, b]) == registry_bytes([b, a])


def test_the_registry_is_never_served() -> None:
    assert DEVICE_REGISTRY_KEY.split("/")[0] not in SERVED_ROOTS


class Runtime:
    def __init__(self, store: DirectoryStore) -> None:
        self.store = store


def identities(**keys: Ed25519PrivateKey) -> dict[tuple[str, str], list[DeviceIdentity]]:
    index = {}
    for name, key in keys.items():
        identity = device_identity("edge", name, annotated(key))
        assert identity is not None
        index["edge", name] = [identity]
    return index


def test_the_operator_writes_the_registry_only_when_it_changed(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    publisher = RegistryPublisher(Runtime(store))  # type: ignore[arg-type]
    assert publisher.snapshot() is None  # no Device event yet: the index may not be filled, publish nothing
    publisher.index = identities(a=KEY)
    data = publisher.snapshot()
    assert data is not None and publisher.write(data) and not publisher.write(data)
    assert parse_registry(store.get(DEVICE_REGISTRY_KEY)).keys() == {("edge", "a")}
    # A restarted operator finds the same registry in the store and writes nothing.
    again = RegistryPublisher(Runtime(store))  # type: ignore[arg-type]
    assert not again.write(data)


def test_a_malformed_key_warns_once_per_bad_value_naming_the_device(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tinymlops_operator.handlers import registry as handler

    warned: list[dict[str, Any]] = []
    monkeypatch.setattr(handler.kopf, "warn", lambda body, **kw: warned.append(kw))

    async def events() -> None:
        publisher = RegistryPublisher(Runtime(DirectoryStore(tmp_path)))  # type: ignore[arg-type]
        for value in ("bad", "bad", "worse", public_key_base64(KEY.public_key())):
            publisher.device_event({}, body={}, namespace="edge", name="cam-9",  # type: ignore[arg-type]
                                   annotations={IDENTITY_ANNOTATION: value})
        assert publisher.dirty.is_set()

    asyncio.run(events())
    assert [w["reason"] for w in warned] == ["InvalidIdentityKey", "InvalidIdentityKey"]
    assert all("edge/cam-9" in w["message"] for w in warned)


def test_only_a_changed_or_deleted_identity_marks_the_registry_dirty(tmp_path: Path) -> None:
    async def events() -> list[bool]:
        publisher = RegistryPublisher(Runtime(DirectoryStore(tmp_path)))  # type: ignore[arg-type]
        dirty = []
        for given, deleted in ((annotated(KEY), False), (annotated(KEY), False), ({}, False),
                               ({}, False), ({}, True)):
            publisher.dirty.clear()
            publisher.device_event({}, body={}, namespace="edge", name="cam-1",  # type: ignore[arg-type]
                                   annotations=given, deleted=deleted)
            dirty.append(publisher.dirty.is_set())
        return dirty

    # Listed; a twin update (same key); the key removed; another twin update; deleted.
    assert asyncio.run(events()) == [True, False, True, False, True]


def test_the_gateway_reloads_a_changed_registry_and_keeps_the_previous_one_when_it_breaks(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    source, guard = StoreRegistry(store), ReportGuard({})
    assert not source.refresh(guard) and guard.registry == {}  # nothing published yet: nobody registered
    store.put(DEVICE_REGISTRY_KEY, registry_bytes(identities(a=KEY)["edge", "a"]))
    assert source.refresh(guard) and set(guard.registry) == {("edge", "a")}
    assert not source.refresh(guard)  # unchanged: a stat, no reload
    store.put(DEVICE_REGISTRY_KEY, b"{not json")
    assert not source.refresh(guard) and set(guard.registry) == {("edge", "a")}
    assert source.error is not None and DEVICE_REGISTRY_KEY in source.error


def test_a_device_keeps_its_last_seq_unless_its_key_changes() -> None:
    guard = ReportGuard({("edge", "cam-1"): KEY.public_key()})
    assert isinstance(guard.admit(sign_report(report(), KEY, 5).to_json(), where="r"), Report)
    guard.replace_registry({})  # removed...
    guard.replace_registry({("edge", "cam-1"): KEY.public_key()})  # ...and back with the same key
    assert guard.admit(sign_report(report(), KEY, 3).to_json(), where="r").reason == "replay"  # type: ignore[union-attr]
    guard.replace_registry({("edge", "cam-1"): OTHER.public_key()})  # re-provisioned: a new key starts afresh
    assert isinstance(guard.admit(sign_report(report(), OTHER, 1).to_json(), where="r"), Report)


async def test_a_device_registered_later_is_accepted_once_the_operator_published_it(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    async with TestClient(TestServer(create_app(store, registry_from_store=True))) as client:
        body = {"reports": [sign_report(report(), KEY, 1).to_json()]}
        refused = await (await client.post("/v1/reports", json=body)).json()
        assert refused["accepted"] == 0 and "no registered identity key" in refused["rejected"][0]["error"]
        store.put(DEVICE_REGISTRY_KEY, registry_bytes(identities(**{"cam-1": KEY})["edge", "cam-1"]))
        body = {"reports": [sign_report(report(), KEY, 2).to_json()]}
        assert (await (await client.post("/v1/reports", json=body)).json())["accepted"] == 1
        registry = await client.get(f"/v1/store/{DEVICE_REGISTRY_KEY}")
        assert registry.status == 404
        assert json.loads(store.get(DEVICE_REGISTRY_KEY))["devices"][0]["name"] == "cam-1"
