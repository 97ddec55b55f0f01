"""The signed variant menu: assemble it, check it, verify it (publishing is `tinymlops.publish`).

Its format is in docs/interfaces.md, "Variant menu (menu.json)".

menu.json holds canonical bytes (sorted keys, no whitespace) so equal menus
sign equally; menu.sig is the base64 Ed25519 signature over exactly those
bytes.  Verification never re-serialises: it checks the bytes it was given.
A variant directory (`tinymlops variants build --out DIR`, or any
`models/<ns>/<model>/` folder of the store, see `tinymlops.layout`) holds
menu.json, menu.sig and blobs/<sha256>.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tinymlops import API_GROUP, API_VERSION
from tinymlops.errors import IntegrityError, SignatureError, SpecError
from tinymlops.layout import BLOBS_DIR, MENU_FILE, MENU_SIGNATURE_FILE
from tinymlops.signing import verify
from tinymlops.store import check_digest
from tinymlops.wasm.modules import describe, verify_module

MENU_KIND = "VariantMenu"


def assemble_menu(
    *,
    model_ref: tuple[str, str],
    version: int,
    base: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]],
    not_built: Sequence[Mapping[str, Any]] = (),
    expires: str | None = None,
    monitoring: Mapping[str, Any] | None = None,
    modules: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The menu document.  `expires` (RFC 3339): after it a device installs from this menu only when a fresh
    signed plan pins its digest (`tinymlops.freshness`); None: a menu that never expires."""
    namespace, name = model_ref
    ids = [variant["id"] for variant in variants]
    if len(set(ids)) != len(ids):
        raise SpecError(f"variant ids must be unique, got {ids}")
    if version < 1:
        raise SpecError(f"menu version must be >= 1, got {version}")
    menu: dict[str, Any] = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": MENU_KIND,
        "model": {"namespace": namespace, "name": name},
        "version": int(version),
        "base": dict(base),
        "variants": [dict(variant) for variant in variants],
        # Asked for but impossible on their target (an unsupported operator, named in the reason).
        "not_built": [dict(entry) for entry in not_built],
    }
    if expires is not None:
        menu["expires"] = expires
    if monitoring is not None:  # reference drift histograms (tinymlops.drift.reference); absent: no drift bins
        menu["monitoring"] = dict(monitoring)
    if modules:  # WebAssembly pre/post modules the variants name by digest (tinymlops.wasm.modules)
        menu["modules"] = [dict(module) for module in modules]
    return menu


def menu_bytes(menu: Mapping[str, Any]) -> bytes:
    """Canonical bytes: sorted keys and no whitespace (the same rule as plan_bytes)."""
    return json.dumps(menu, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@cache
def menu_schema() -> dict[str, Any]:
    text = resources.files("tinymlops").joinpath("schemas/menu.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_menu(menu: Mapping[str, Any], *, what: str = "menu") -> None:
    """Raise IntegrityError naming the first field that breaks the menu schema."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(menu_schema()).iter_errors(menu))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise IntegrityError(f"{what}: {where}: {error.message}")


def load_verified_menu(menu_json: bytes, sig_b64: str | bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Check the signature over the exact bytes, then parse and schema-check the menu.

    The signature is checked on every call; parsing and the schema check are a pure function
    of the bytes and remembered for the last few menus (a fleet simulator's thousands of
    devices read the same menu).  Treat the returned menu as read-only: it may be shared.
    """
    verify(public_key, menu_json, sig_b64.strip(), what=MENU_FILE)  # a trailing newline is not tampering
    return _parsed_menu(menu_json)


@lru_cache(maxsize=8)
def _parsed_menu(menu_json: bytes) -> dict[str, Any]:
    try:
        menu = json.loads(menu_json)
    except ValueError as exc:  # signed garbage: the publisher is broken, not the transport
        raise IntegrityError(f"{MENU_FILE}: signed but not JSON ({exc})") from exc
    if not isinstance(menu, dict):
        raise IntegrityError(f"{MENU_FILE}: signed but not a JSON object")
    validate_menu(menu, what=MENU_FILE)
    return menu


def read_menu_files(directory: Path) -> tuple[bytes, bytes]:
    """The raw menu.json and menu.sig of a variant directory, each failure naming the file."""
    try:
        payload = (directory / MENU_FILE).read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{directory / MENU_FILE}: cannot be read ({exc.strerror or exc})") from exc
    try:
        signature = (directory / MENU_SIGNATURE_FILE).read_bytes()
    except OSError as exc:
        raise SignatureError(f"{directory / MENU_SIGNATURE_FILE}: missing, the menu is unsigned") from exc
    return payload, signature


def blob_size(variant: Mapping[str, Any]) -> int:
    """The bytes of `variant`'s blob as downloaded: `blob_bytes` where `size_bytes` means something else
    (a microcontroller variant's `size_bytes` is the flash its firmware needs), else `size_bytes`."""
    return int(variant.get("blob_bytes", variant["size_bytes"]))


def verify_blob(blob: bytes, variant: Mapping[str, Any]) -> None:
    """The blob is exactly the bytes the menu promises for `variant`: its size, then its digest."""
    what = f"variant {variant['id']} (blob {str(variant['sha256'])[:12]}…)"
    if len(blob) != blob_size(variant):
        raise IntegrityError(f"{what}: {len(blob)} bytes, the signed menu says {blob_size(variant)}")
    check_digest(blob, str(variant["sha256"]), what=what)


def split_parts(variant: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(what, {sha256, size_bytes}) of each head and tail blob the variant's split points name
    (`tinymlops.variants.split`)."""
    return [(f"variant {variant['id']} split@{point['k']} {name}", point[name])
            for point in (variant.get("split") or {}).get("points", []) for name in ("head", "tail") if name in point]


def verify_part(blob: bytes, what: str, part: Mapping[str, Any]) -> None:
    if len(blob) != int(part["size_bytes"]):
        raise IntegrityError(f"{what}: {len(blob)} bytes, the signed menu says {part['size_bytes']}")
    check_digest(blob, str(part["sha256"]), what=what)


def verify_variant_dir(directory: Path, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The verified menu of `directory`: signature first, then every blob."""
    menu = load_verified_menu(*read_menu_files(directory), public_key)
    for variant in menu["variants"]:
        try:
            blob = (directory / BLOBS_DIR / variant["sha256"]).read_bytes()
        except OSError as exc:
            raise IntegrityError(f"variant {variant['id']} (blob {variant['sha256'][:12]}…): blob is missing "
                                 f"from {directory / BLOBS_DIR}") from exc
        verify_blob(blob, variant)
    for module in menu.get("modules", []):
        try:
            blob = (directory / BLOBS_DIR / module["sha256"]).read_bytes()
        except OSError as exc:
            raise IntegrityError(f"{describe(module)}: blob is missing from {directory / BLOBS_DIR}") from exc
        verify_module(blob, module)
    for variant in menu["variants"]:
        for what, part in split_parts(variant):
            try:
                blob = (directory / BLOBS_DIR / str(part["sha256"])).read_bytes()
            except OSError as exc:
                raise IntegrityError(f"{what}: blob is missing from {directory / BLOBS_DIR}") from exc
            verify_part(blob, what, part)
    return menu
