"""The signed menu: schema-valid, and any flipped byte (menu or blob) is caught and named."""

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.errors import IntegrityError, SignatureError, SpecError
from tinymlops.layout import model_prefix
from tinymlops.menu import (
    assemble_menu,
    load_verified_menu,
    menu_bytes,
    menu_schema,
    validate_menu,
    verify_variant_dir,
)
from tinymlops.model import prepare_digits
from tinymlops.store import DirectoryStore, sha256_bytes
from tinymlops.variants import build_variants

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    digits = prepare_digits(tmp_path_factory.mktemp("digits"))
    store_root = tmp_path_factory.mktemp("store")
    menu = build_variants(
        digits.model_path, digits.data_path, DirectoryStore(store_root), model_prefix("team", "digits"),
        signing_key=KEY, model_ref=("team", "digits"), menu_version=3,
    )
    return store_root / "models" / "team" / "digits", menu


@pytest.fixture
def variant_dir(published: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    copy = tmp_path / "variants"
    shutil.copytree(published[0], copy)
    return copy


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_schema_is_valid_and_built_menus_follow_it(published: tuple[Path, dict[str, Any]]) -> None:
    jsonschema.Draft202012Validator.check_schema(menu_schema())
    _, menu = published
    jsonschema.Draft202012Validator(menu_schema()).validate(menu)
    assert menu["apiVersion"] == "tinymlops.io/v1alpha1" and menu["kind"] == "VariantMenu"
    assert menu["model"] == {"namespace": "team", "name": "digits"} and menu["version"] == 3
    assert [v["id"] for v in menu["variants"]] == ["fp32", "int8-static"]


def test_schema_names_the_broken_field(published: tuple[Path, dict[str, Any]]) -> None:
    broken = json.loads(json.dumps(published[1]))
    broken["variants"][1]["sha256"] = "not-a-digest"
    with pytest.raises(IntegrityError, match="variants/1/sha256"):
        validate_menu(broken)


def test_menu_json_holds_canonical_bytes(published: tuple[Path, dict[str, Any]]) -> None:
    directory, menu = published
    assert (directory / "menu.json").read_bytes() == menu_bytes(menu)
    assert menu_bytes(json.loads(menu_bytes(menu))) == menu_bytes(menu)


def test_verified_directory_returns_the_menu(variant_dir: Path, published: tuple[Path, dict[str, Any]]) -> None:
    assert verify_variant_dir(variant_dir, KEY.public_key()) == published[1]
    payload, signature = (variant_dir / "menu.json").read_bytes(), (variant_dir / "menu.sig").read_bytes()
    assert load_verified_menu(payload, signature, KEY.public_key())["version"] == 3


def test_flipped_byte_in_menu_breaks_the_signature(variant_dir: Path) -> None:
    flip_byte(variant_dir / "menu.json", 40)
    with pytest.raises(SignatureError, match="menu.json: signature does not match"):
        verify_variant_dir(variant_dir, KEY.public_key())


def test_flipped_byte_in_a_blob_names_the_variant(variant_dir: Path, published: tuple[Path, dict[str, Any]]) -> None:
    int8 = published[1]["variants"][1]
    flip_byte(variant_dir / "blobs" / int8["sha256"], 1000)
    with pytest.raises(IntegrityError, match=rf"variant int8-static \(blob {int8['sha256'][:12]}"):
        verify_variant_dir(variant_dir, KEY.public_key())


def test_missing_blob_and_missing_signature(variant_dir: Path, published: tuple[Path, dict[str, Any]]) -> None:
    (variant_dir / "blobs" / published[1]["variants"][0]["sha256"]).unlink()
    with pytest.raises(IntegrityError, match="variant fp32 .* blob is missing"):
        verify_variant_dir(variant_dir, KEY.public_key())
    (variant_dir / "menu.sig").unlink()
    with pytest.raises(SignatureError, match="menu.sig: missing"):
        verify_variant_dir(variant_dir, KEY.public_key())


def test_another_key_is_refused(variant_dir: Path) -> None:
    with pytest.raises(SignatureError, match="signed by another key"):
        verify_variant_dir(variant_dir, Ed25519PrivateKey.generate().public_key())


def test_signed_but_malformed_menu_is_refused() -> None:
    from tinymlops.signing import sign

    payload = b'{"kind":"VariantMenu"}'
    with pytest.raises(IntegrityError, match="menu.json: .*required"):
        load_verified_menu(payload, sign(KEY, payload), KEY.public_key())


def test_assemble_menu_refuses_duplicate_ids_and_version_zero() -> None:
    base = {"sha256": sha256_bytes(b"x"), "size_bytes": 1, "source": "x"}
    with pytest.raises(SpecError, match="unique"):
        assemble_menu(model_ref=("a", "b"), version=1, base=base, variants=[{"id": "fp32"}, {"id": "fp32"}])
    with pytest.raises(SpecError, match=">= 1"):
        assemble_menu(model_ref=("a", "b"), version=0, base=base, variants=[])
