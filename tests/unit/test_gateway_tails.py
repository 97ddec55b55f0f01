"""The gateway's tail service: a registered device's head output in, the split variant's scores out; every bad
request refused with its reason named and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.gateway.app import METRICS, create_app
from tinymlops.gateway.authn import ReportGuard
from tinymlops.layout import model_prefix
from tinymlops.menu import verify_variant_dir
from tinymlops.model import DigitsArtifacts
from tinymlops.runners import Runner
from tinymlops.store import DirectoryStore
from tinymlops.tailrequest import TIME_HEADER, sign_request, tail_path
from tinymlops.variants import build_variants

PUBLISHER, DEVICE, STRANGER = (Ed25519PrivateKey.generate() for _ in range(3))
NOW = 1_000_000.0


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("store")
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                          signing_key=PUBLISHER, model_ref=("ns", "digits"), precisions=("fp32",),
                          split_parts=True)
    return root, menu


def point(menu: dict[str, Any]) -> dict[str, Any]:
    """The split point after the first hidden layer's activation: 256 values to send."""
    points = menu["variants"][0]["split"]["points"]
    return next(p for p in points if p["values"] == 256 and "tail" in p)


def test_the_menu_names_every_exact_points_head_and_tail(published: tuple[Path, dict[str, Any]]) -> None:
    root, menu = published
    assert verify_variant_dir(root / model_prefix("ns", "digits"), PUBLISHER.public_key()) == menu
    for p in menu["variants"][0]["split"]["points"]:
        assert ("head" in p and "tail" in p) == p["exact"]


async def client(root: Path, *, registry: bool = True) -> TestClient[Any, Any]:
    guard = ReportGuard({("ns", "cam-1"): DEVICE.public_key()}) if registry else None
    return TestClient(TestServer(create_app(DirectoryStore(root), guard=guard, clock=lambda: NOW)))


async def post(client: TestClient[Any, Any], path: str, body: bytes, key: Ed25519PrivateKey = DEVICE,
               device: tuple[str, str] = ("ns", "cam-1"), now: float = NOW, **headers: str) -> Any:
    signed = {**sign_request(key, device, path, body, now), **headers}
    response = await client.post(path, data=body, headers=signed)
    return response.status, await response.json()


async def test_head_on_the_device_then_tail_at_the_gateway_equals_the_whole_variant(
        published: tuple[Path, dict[str, Any]], digits: DigitsArtifacts) -> None:
    root, menu = published
    p = point(menu)
    blobs = root / model_prefix("ns", "digits") / "blobs"
    head = Runner.load((blobs / p["head"]["sha256"]).read_bytes())
    whole = Runner.load((blobs / menu["variants"][0]["sha256"]).read_bytes())
    with np.load(digits.data_path) as npz:
        x = npz["x"][:5]
    async with await client(root) as gateway:
        status, answer = await post(gateway, tail_path("ns", "digits", p["tail"]["sha256"]),
                                    head.many(x).astype("<f4").tobytes())
        assert status == 200
        np.testing.assert_allclose(answer["outputs"], whole.many(x), atol=1e-6)
        metrics = gateway.app[METRICS].exposition(None)[0].decode()
        assert 'tinymlops_gateway_tail_requests_total{result="ok"} 1.0' in metrics


async def test_every_bad_request_is_refused_with_its_reason(published: tuple[Path, dict[str, Any]]) -> None:
    root, menu = published
    p = point(menu)
    path = tail_path("ns", "digits", p["tail"]["sha256"])
    body = np.zeros((1, 256), "<f4").tobytes()
    async with await client(root) as gateway:
        cases = {
            "unknown-device": await post(gateway, path, body, device=("ns", "cam-9")),
            "bad-signature": await post(gateway, path, body, key=STRANGER),
            "stale": await post(gateway, path, body, now=NOW - 3600),
            "bad-shape": await post(gateway, path, np.zeros(255, "<f4").tobytes()),
            "too-large": await post(gateway, path, bytes((1 << 20) + 4)),
            "unknown-tail": await post(gateway, tail_path("ns", "digits", "0" * 64), body),
        }
        forged = await post(gateway, path, body, **{TIME_HEADER: f"{NOW + 1:.3f}"})  # signed for another time
        assert forged[0] == 401 and forged[1]["reason"] == "bad-signature"
        for reason, (status, answer) in cases.items():
            assert answer["reason"] == reason, (reason, answer)
            assert status == {"unknown-device": 401, "bad-signature": 401, "stale": 401, "bad-shape": 400,
                              "too-large": 413, "unknown-tail": 404}[reason]
        assert "1..64 samples of float32 [256] (1024 bytes each)" in cases["bad-shape"][1]["error"]
        metrics = gateway.app[METRICS].exposition(None)[0].decode()
        assert 'tinymlops_gateway_tail_requests_total{result="bad-signature"} 2.0' in metrics
    async with await client(root, registry=False) as open_gateway:
        status, answer = await post(open_gateway, path, body)
        assert (status, answer["reason"]) == (403, "no-registry")
        assert json.dumps(answer)  # still JSON
