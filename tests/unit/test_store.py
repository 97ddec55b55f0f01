"""The store's layout (every key in one place), its interface (delete, stamps) and the one digest check."""

from pathlib import Path

import pytest

from tinymlops.errors import IntegrityError
from tinymlops.layout import (
    MENU_SIGNATURE_FILE,
    PLAN_SIGNATURE_FILE,
    blob_key,
    grant_file,
    grant_key,
    is_blob_key,
    kept_menu,
    menu_key,
    model_prefix,
    plan_key,
    plan_prefix,
    signature_key,
    source_prefix,
)
from tinymlops.store import DirectoryStore, check_digest, digest_matches, normal_key, sha256_bytes

DIGEST = "a" * 64


def test_the_layout_spells_the_store_tree() -> None:
    models, plans = model_prefix("edge", "digits"), plan_prefix("edge", "cams")
    assert menu_key(models) == "models/edge/digits/menu.json"
    assert signature_key(menu_key(models)) == "models/edge/digits/menu.sig"
    assert blob_key(models, DIGEST) == f"models/edge/digits/blobs/{DIGEST}"
    assert grant_key(models, "f1") == "models/edge/digits/keys/f1.json" and grant_file("f1") == "keys/f1.json"
    assert kept_menu("edge", "digits", DIGEST) == (f"models/edge/digits/menus/{DIGEST}.json",
                                                   f"models/edge/digits/menus/{DIGEST}.sig")
    assert plan_key(plans) == "plans/edge/cams/plan.json"
    assert signature_key(plan_key(plans)) == "plans/edge/cams/plan.sig"
    assert source_prefix("digits") == "sources/digits"
    assert signature_key("menu.json") == MENU_SIGNATURE_FILE and signature_key("plan.json") == PLAN_SIGNATURE_FILE


def test_a_folder_from_a_plan_keeps_its_trailing_slash_out_of_keys() -> None:
    folder = model_prefix("edge", "digits") + "/"  # how a plan's menu reference spells it
    assert blob_key(folder, DIGEST) == blob_key(model_prefix("edge", "digits"), DIGEST)
    assert is_blob_key(blob_key(folder, DIGEST)) and not is_blob_key(menu_key(folder))


def test_only_json_files_have_a_signature() -> None:
    with pytest.raises(ValueError, match="only .json files are signed"):
        signature_key(blob_key("models/edge/digits", DIGEST))


def test_delete_removes_a_key_and_an_absent_key_is_not_an_error(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put("plans/edge/cams/plan.json", b"{}")
    store.delete("plans/edge/cams/plan.json")
    assert not store.exists("plans/edge/cams/plan.json")
    store.delete("plans/edge/cams/plan.json")  # idempotent: a retried withdrawal ends the same way
    store.delete("plans/never/was/plan.json")
    with pytest.raises(ValueError, match="escapes the store root"):
        store.delete("../outside")


def test_a_stamp_changes_with_every_put_and_describes_what_was_read(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put("plans/a/b/plan.json", b"one")
    data, stamp = store.get_stamped("plans/a/b/plan.json")
    assert data == b"one" and stamp == store.stamp("plans/a/b/plan.json")
    store.put("plans/a/b/plan.json", b"one")  # the same bytes rewritten are a new version
    assert store.stamp("plans/a/b/plan.json") != stamp
    with pytest.raises(FileNotFoundError):
        store.stamp("plans/a/b/missing.json")


@pytest.mark.parametrize(
    ("key", "normal"),
    [("models/a/../b/menu.json", "models/b/menu.json"), ("plans/./a//plan.json", "plans/a/plan.json")],
)
def test_keys_are_normalised_like_paths(key: str, normal: str) -> None:
    assert normal_key(key) == normal


@pytest.mark.parametrize("key", ["..", "../x", "models/../../x", "/etc/passwd", ".", "models/.."])
def test_keys_that_leave_the_store_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match=f"store key escapes the store root: {key!r}"):
        normal_key(key)


def test_the_digest_check_names_the_thing_and_who_named_the_digest() -> None:
    data = b"model bytes"
    assert digest_matches(data, sha256_bytes(data)) and not digest_matches(data, DIGEST)
    check_digest(data, sha256_bytes(data), what="variant fp32")
    with pytest.raises(IntegrityError, match=rf"^variant fp32: sha256 is {sha256_bytes(data)[:12]}…, "
                                             rf"the signed menu says {DIGEST[:12]}…$"):
        check_digest(data, DIGEST, what="variant fp32")
    with pytest.raises(IntegrityError, match="^models/x/menus/a.json: .*, the signed plan says"):
        check_digest(data, DIGEST, what="models/x/menus/a.json", named_by="the signed plan")
