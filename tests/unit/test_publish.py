"""One way to publish a menu: blobs, then the wrapped keys, then menu.sig, then menu.json, checked first."""

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops import envelope
from tinymlops.errors import IntegrityError
from tinymlops.freshness import MENU_TTL_S
from tinymlops.layout import grant_key, menu_key, model_prefix, signature_key
from tinymlops.menu import assemble_menu, menu_bytes, verify_variant_dir
from tinymlops.publish import publish, write_menu
from tinymlops.store import DirectoryStore, sha256_bytes
from tinymlops.timestamps import seconds
from tinymlops.variants import build_variant
from tinymlops.variants.source import Dataset, SourceModel

KEY = Ed25519PrivateKey.generate()
PREFIX = model_prefix("team", "digits")


class RecordingStore(DirectoryStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.written: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.written.append(key)
        super().put(key, data)


@pytest.fixture(scope="module")
def built(base: SourceModel, dataset: Dataset) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    variant = build_variant(base, dataset, "fp32", accuracy_budget=0.01)
    return base.base_info(), variant.entry, variant.blob


def test_every_reader_finds_what_the_menu_names_once_menu_json_is_there(
    built: tuple[dict[str, Any], dict[str, Any], bytes], tmp_path: Path
) -> None:
    base, entry, blob = built
    store = RecordingStore(tmp_path)
    devices = [envelope.generate_device_key() for _ in range(2)]
    published = publish(store, PREFIX, model_ref=("team", "digits"), version=2, base=base, variants=[entry],
                        blobs={entry["sha256"]: blob}, signing_key=KEY, data_key=envelope.new_data_key(),
                        recipients=[d.public_key() for d in devices])
    sealed = published.menu["variants"][0]
    grants = sorted(grant_key(PREFIX, envelope.fingerprint(d.public_key())) for d in devices)
    assert store.written[0] == f"{PREFIX}/blobs/{sealed['sha256']}"
    assert sorted(store.written[1:3]) == grants
    assert store.written[3:] == [signature_key(menu_key(PREFIX)), menu_key(PREFIX)]
    assert published.sha256 == sha256_bytes(store.get(menu_key(PREFIX)))
    assert verify_variant_dir(tmp_path / PREFIX, KEY.public_key()) == published.menu


def test_the_published_menu_is_the_assembled_one_byte_for_byte(
    built: tuple[dict[str, Any], dict[str, Any], bytes], tmp_path: Path
) -> None:
    base, entry, blob = built
    store = DirectoryStore(tmp_path)
    published = publish(store, PREFIX, model_ref=("team", "digits"), version=2, base=base, variants=[entry],
                        blobs={entry["sha256"]: blob}, signing_key=KEY, not_built=[{"id": "x", "reason": "why"}],
                        expires="2031-01-01T00:00:00.000Z")
    assembled = assemble_menu(model_ref=("team", "digits"), version=2, base=base, variants=[entry],
                              not_built=[{"id": "x", "reason": "why"}], expires="2031-01-01T00:00:00.000Z")
    assert store.get(menu_key(PREFIX)) == menu_bytes(assembled) and published.menu == assembled
    assert not (tmp_path / PREFIX / "keys").exists()  # plain: no data key, nothing to grant


def test_a_published_menu_expires_a_year_after_publishing_unless_told_otherwise(
    built: tuple[dict[str, Any], dict[str, Any], bytes], tmp_path: Path
) -> None:
    base, entry, blob = built
    before = time.time()
    published = publish(DirectoryStore(tmp_path), PREFIX, model_ref=("team", "digits"), version=2, base=base,
                        variants=[entry], blobs={entry["sha256"]: blob}, signing_key=KEY)
    expires = seconds(published.menu["expires"])
    assert before + MENU_TTL_S - 1 <= expires <= time.time() + MENU_TTL_S + 1
    assert verify_variant_dir(tmp_path / PREFIX, KEY.public_key())["expires"] == published.menu["expires"]


@pytest.mark.parametrize(
    ("blobs", "error"),
    [("tampered", r"variant fp32 \(blob [0-9a-f]{12}…\): sha256 is"),
     ("missing", "variant fp32: blob .* was not built")],
)
def test_a_blob_that_is_not_what_the_menu_names_is_refused_before_anything_is_written(
    built: tuple[dict[str, Any], dict[str, Any], bytes], tmp_path: Path, blobs: str, error: str
) -> None:
    base, entry, blob = built
    menu = assemble_menu(model_ref=("team", "digits"), version=2, base=base, variants=[entry])
    given = {entry["sha256"]: bytes([blob[0] ^ 1]) + blob[1:]} if blobs == "tampered" else {}
    store = RecordingStore(tmp_path)
    with pytest.raises(IntegrityError, match=error):
        write_menu(store, PREFIX, menu, given, KEY)
    assert store.written == []
