"""Encrypted variants and every bad input of the issue, through `tinymlops agent install`.

Each case: the install is refused with a reason naming the problem, and the previously installed
model keeps serving (checked with `agent status`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.samples import picked, with_metrics
from tinymlops.agent import DeviceAgent, SessionCache
from tinymlops.agent.install import host_capabilities
from tinymlops.cli import main
from tinymlops.devices import DeviceCapabilities
from tinymlops.envelope import device_key_pem, device_public_pem, generate_device_key
from tinymlops.layout import model_prefix
from tinymlops.menu import menu_bytes
from tinymlops.model import DigitsArtifacts
from tinymlops.selection import DeviceContext
from tinymlops.signing import public_key_pem, sign
from tinymlops.store import DirectoryStore
from tinymlops.variants import build_variants

KEY = Ed25519PrivateKey.generate()
DEVICE, OTHER = generate_device_key(), generate_device_key()
DATA_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> Path:
    root = tmp_path_factory.mktemp("plain")
    build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                   signing_key=KEY, model_ref=("ns", "digits"), menu_version=2)
    return root / "models" / "ns" / "digits"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> Path:
    root = tmp_path_factory.mktemp("sealed")
    build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                   signing_key=KEY, model_ref=("ns", "digits"), menu_version=3, data_key=DATA_KEY,
                   recipients=[DEVICE.public_key()])
    return root / "models" / "ns" / "digits"


@pytest.fixture
def device(tmp_path: Path, plain: Path) -> dict[str, Path]:
    """A device with the plain v2 installed and its keys on disk."""
    files = {"pub": tmp_path / "pub.pem", "device": tmp_path / "device.pem", "state": tmp_path / "state"}
    files["pub"].write_bytes(public_key_pem(KEY.public_key()))
    files["device"].write_bytes(device_key_pem(DEVICE))
    result = install(plain, files, "--pubkey", str(files["pub"]), "--device-key", str(files["device"]))
    assert result.exit_code == 0, result.output
    return files


def install(source: Path, files: dict[str, Path], *extra: str) -> Result:
    return CliRunner().invoke(main, ["agent", "install", str(source), "--state-dir", str(files["state"]), *extra])


def still_serving_v2(files: dict[str, Path]) -> bool:
    status = CliRunner().invoke(main, ["agent", "status", "--state-dir", str(files["state"])])
    return status.exit_code == 0 and "menu v2" in status.output


def picked_blob(directory: Path, menu: dict[str, Any], files: dict[str, Path]) -> tuple[str, Path]:
    """The variant `agent install` on this machine will pick from `menu`, and its blob in `directory`: the
    one the device downloads, whichever variant the training favoured here."""
    variant = picked(menu, host_capabilities(files["state"]))
    return str(variant["id"]), directory / "blobs" / str(variant["sha256"])


def copy(source: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(source, tmp_path / name))


def republished(source: Path, tmp_path: Path, name: str,
                edit: Callable[[dict[str, Any]], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """A copy of `source` re-published by the real publisher as menu v3, after `edit` changed the menu."""
    directory = copy(source, tmp_path, name)
    menu = json.loads((directory / "menu.json").read_bytes())
    menu["version"] = 3
    if edit is not None:
        edit(menu)
    resign(directory, menu)
    return directory, menu


def resign(directory: Path, menu: dict[str, Any]) -> None:
    (directory / "menu.json").write_bytes(menu_bytes(menu))
    (directory / "menu.sig").write_text(sign(KEY, menu_bytes(menu)))


def refused(result: Result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "install refused, the previous model keeps serving" in result.output
    for word in words:
        assert word in result.output, (word, result.output)


def test_an_encrypted_variant_installs_and_survives_a_restart(device: dict[str, Path], sealed: Path) -> None:
    result = install(sealed, device)
    assert result.exit_code == 0 and "menu v3" in result.output, result.output
    slot = json.loads((device["state"] / "active.json").read_text())["slot"]
    stored = (device["state"] / "slots" / f"{slot}.model").read_bytes()
    assert stored.startswith(b"TMLE")  # kept encrypted at rest; decrypted only in memory
    again = install(sealed, device)  # a restart re-opens the encrypted slot with the device key
    assert again.exit_code == 0 and "kept" in again.output


def test_a_flipped_byte_in_a_blob(device: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    bad, menu = republished(plain, tmp_path, "flipped")
    variant_id, blob = picked_blob(bad, menu, device)
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    refused(install(bad, device), "sha256", f"variant {variant_id} (")
    assert still_serving_v2(device)


def test_a_truncated_download(device: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    bad, menu = republished(plain, tmp_path, "truncated")
    variant_id, blob = picked_blob(bad, menu, device)
    blob.write_bytes(blob.read_bytes()[:1000])
    refused(install(bad, device), "1000 bytes", f"variant {variant_id} (")
    assert still_serving_v2(device)


def test_a_menu_edited_without_resigning(device: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    bad = copy(plain, tmp_path, "edited")
    menu = json.loads((bad / "menu.json").read_bytes())
    menu["version"] = 9
    (bad / "menu.json").write_bytes(menu_bytes(menu))
    refused(install(bad, device), "signature does not match")
    assert still_serving_v2(device)


def test_a_menu_signed_by_another_key(device: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    bad = copy(plain, tmp_path, "forged")
    (bad / "menu.sig").write_text(sign(Ed25519PrivateKey.generate(), (bad / "menu.json").read_bytes()))
    refused(install(bad, device), "signature")
    assert still_serving_v2(device)


def test_an_older_menu(device: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    bad = copy(plain, tmp_path, "older")
    menu = json.loads((bad / "menu.json").read_bytes())
    menu["version"] = 1
    resign(bad, menu)
    refused(install(bad, device), "older than the installed version 2")
    assert still_serving_v2(device)


def test_a_blob_swapped_for_another_variants_blob(device: dict[str, Path], sealed: Path, tmp_path: Path) -> None:
    bad = copy(sealed, tmp_path, "swapped")
    menu = json.loads((bad / "menu.json").read_bytes())
    fp32, int8 = menu["variants"]
    # The publisher's own menu now names each variant's (encrypted) bytes for the other: digests and
    # signature hold, but an envelope is bound to the variant it was made for.  Both ways, so the refusal
    # does not hang on which variant this machine picks.
    for entry, other in ((fp32, dict(int8)), (int8, dict(fp32))):
        entry.update(sha256=other["sha256"], size_bytes=other["size_bytes"],
                     encryption={**other["encryption"], "plaintext_sha256": entry["encryption"]["plaintext_sha256"]})
    resign(bad, menu)
    refused(install(bad, device), "authentication failed")
    assert still_serving_v2(device)


def test_a_key_wrapped_for_another_device(device: dict[str, Path], sealed: Path, tmp_path: Path,
                                         digits: DigitsArtifacts) -> None:
    bad = copy(sealed, tmp_path, "other-device")
    mine = next((bad / "keys").iterdir())
    other_root = tmp_path / "other-build"
    build_variants(digits.model_path, None, DirectoryStore(other_root), "m",
                   signing_key=KEY, model_ref=("ns", "digits"), data_key=DATA_KEY,
                   recipients=[OTHER.public_key()], precisions=["fp32"])
    mine.write_bytes(next((other_root / "m" / "keys").iterdir()).read_bytes())
    refused(install(bad, device), "wrapped for another device")
    assert still_serving_v2(device)


def test_no_key_for_this_device(device: dict[str, Path], sealed: Path, tmp_path: Path) -> None:
    bad = copy(sealed, tmp_path, "no-key")
    shutil.rmtree(bad / "keys")
    refused(install(bad, device), "no data key is wrapped for this device")
    assert still_serving_v2(device)


def test_invalid_json_or_unknown_fields_in_the_menu(device: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    bad = copy(plain, tmp_path, "garbage")
    (bad / "menu.json").write_bytes(b"{not json")
    (bad / "menu.sig").write_text(sign(KEY, b"{not json"))
    refused(install(bad, device), "not JSON")
    wrong, _ = republished(plain, tmp_path, "schema", lambda menu: menu["variants"][0].update(size_bytes="big"))
    refused(install(wrong, device), "size_bytes")
    assert still_serving_v2(device)


def test_a_variant_too_large_for_the_device(device: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    def huge(menu: dict[str, Any]) -> None:
        for variant in menu["variants"]:
            variant["requirements"]["min_ram_mb"] = 10**9

    bad, _ = republished(plain, tmp_path, "huge", huge)
    refused(install(bad, device), "RAM")
    assert still_serving_v2(device)


def test_an_artifact_that_fails_its_health_check(device: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    def wrong_golden_outputs(menu: dict[str, Any]) -> None:  # signed by the publisher, yet wrong
        for variant in menu["variants"]:
            variant["health_check"]["outputs"] = [[5.0] * 10 for _ in variant["health_check"]["outputs"]]

    bad, _ = republished(plain, tmp_path, "unhealthy", wrong_golden_outputs)
    refused(install(bad, device), "golden sample 0 differs")
    assert still_serving_v2(device)


def test_keys_grant_lets_a_new_device_in_without_touching_menu_or_blobs(sealed: Path, tmp_path: Path) -> None:
    directory = copy(sealed, tmp_path, "granted")
    before = {p.name: p.read_bytes() for p in [directory / "menu.json", directory / "menu.sig",
                                                *(directory / "blobs").iterdir()]}
    (tmp_path / "data.key").write_text(DATA_KEY.hex())
    newcomer = generate_device_key()
    (tmp_path / "new.pub").write_bytes(device_public_pem(newcomer.public_key()))
    result = CliRunner().invoke(main, ["keys", "grant", str(directory), "--data-key", str(tmp_path / "data.key"),
                                       "--device-pubkey", str(tmp_path / "new.pub")])
    assert result.exit_code == 0, result.output
    after = {p.name: p.read_bytes() for p in [directory / "menu.json", directory / "menu.sig",
                                               *(directory / "blobs").iterdir()]}
    assert after == before
    (tmp_path / "pub.pem").write_bytes(public_key_pem(KEY.public_key()))
    (tmp_path / "new.pem").write_bytes(device_key_pem(newcomer))
    files = {"state": tmp_path / "newcomer"}
    ok = install(directory, files, "--pubkey", str(tmp_path / "pub.pem"), "--device-key", str(tmp_path / "new.pem"))
    assert ok.exit_code == 0, ok.output


def test_low_battery_switches_offline_to_a_cached_cheaper_variant(plain: Path) -> None:
    # Metrics set, not trained: fp32 half a point more accurate, int8 a little faster (host latencies vary, and
    # on another CPU the two may tie on accuracy), so the policy alone prefers fp32 and low battery int8.
    menu = with_metrics(json.loads((plain / "menu.json").read_bytes()), {
        "fp32": {"accuracy": 0.98, "latency_ms_p50": 0.2, "latency_ms_p95": 0.25},
        "int8-static": {"accuracy": 0.975, "latency_ms_p50": 0.15, "latency_ms_p95": 0.2},
    })
    caps = DeviceCapabilities(name="pi", arch="aarch64", device_class="rpi4", ram_mb=4096, model_storage_kb=1 << 20)
    agent = DeviceAgent(caps, KEY.public_key(), SessionCache())
    blobs = {v["id"]: (plain / "blobs" / v["sha256"]).read_bytes() for v in menu["variants"]}
    by_id = {v["id"]: v for v in menu["variants"]}
    # The device has both variants on board (it ran int8 before), and serves fp32 on mains power.
    agent.install(by_id["int8-static"], blobs["int8-static"], 2, "earlier")
    agent.install(by_id["fp32"], blobs["fp32"], 2, "on mains")
    assert agent.choose(menu, {"objective": "accuracy"})["id"] == "fp32"

    switched = agent.reconsider(DeviceContext(battery_pct=12, charging=False, network="offline"))
    assert switched is not None and switched.variant_id == "int8-static"
    assert agent.active is not None and agent.active.variant_id == "int8-static"
    assert "battery 12%" in agent.reason and "switched offline" in agent.reason

    back = agent.reconsider(DeviceContext(battery_pct=12, charging=True, network="offline"))
    assert back is not None and back.variant_id == "fp32"



def test_a_host_compiled_tvm_variant_runs_in_the_tvm_runtime(tmp_path: Path, digits: DigitsArtifacts) -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from tinymlops.agent.install import host_capabilities, install_from_dir
    from tinymlops.agent.slots import read_active

    build_variants(digits.model_path, digits.data_path, DirectoryStore(tmp_path / "store"), "tvm",
                   signing_key=KEY, model_ref=("ns", "digits"), precisions=["fp32"], targets=["x86_64"])
    menu = json.loads((tmp_path / "store" / "tvm" / "menu.json").read_bytes())
    only_tvm = [v for v in menu["variants"] if v["format"] == "tvm-lib"]
    assert only_tvm and only_tvm[0]["requirements"]["arch"] == ["x86_64"]
    resign_dir = tmp_path / "store" / "tvm"
    resign(resign_dir, {**menu, "variants": only_tvm})
    caps = host_capabilities(tmp_path)
    if caps.arch != "x86_64":
        pytest.skip("the TVM variant here is built for x86_64")
    result = install_from_dir(resign_dir, tmp_path / "state", pubkey_pem=public_key_pem(KEY.public_key()))
    assert result.variant_id == "tvm-x86-64" and result.switched
    assert read_active(tmp_path / "state").variant["format"] == "tvm-lib"  # type: ignore[union-attr]
