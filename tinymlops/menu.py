"""The signed variant menu (DESIGN §6): build it, sign it, publish it, verify it.

menu.json holds canonical bytes (sorted keys, no whitespace) so equal menus
sign equally; menu.sig is the base64 Ed25519 signature over exactly those
bytes.  Verification never re-serialises: it checks the bytes it was given.
A variant directory (`tinymlops variants build --out DIR`, or any
`models/<ns>/<model>/` folder of the store) holds menu.json, menu.sig and
blobs/<sha256>.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops import API_GROUP, API_VERSION
from tinymlops.errors import IntegrityError, SignatureError, SpecError
from tinymlops.signing import sign, verify
from tinymlops.store import ArtifactStore, DirectoryStore, check_digest, sha256_bytes

MENU_KIND = "VariantMenu"
MENU_FILE, SIGNATURE_FILE, BLOBS_DIR = "menu.json", "menu.sig", "blobs"


def assemble_menu(
    *,
    model_ref: tuple[str, str],
    version: int,
    base: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]],
    not_built: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    namespace, name = model_ref
    ids = [variant["id"] for variant in variants]
    if len(set(ids)) != len(ids):
        raise SpecError(f"variant ids must be unique, got {ids}")
    if version < 1:
        raise SpecError(f"menu version must be >= 1, got {version}")
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": MENU_KIND,
        "model": {"namespace": namespace, "name": name},
        "version": int(version),
        "base": dict(base),
        "variants": [dict(variant) for variant in variants],
        # Asked for but impossible on their target (an unsupported operator, named in the reason).
        "not_built": [dict(entry) for entry in not_built],
    }


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


def write_menu(
    store: ArtifactStore,
    prefix: str,
    menu: Mapping[str, Any],
    blobs: Mapping[str, bytes],
    key: Ed25519PrivateKey,
) -> str:
    """Publish blobs first, then menu.json and menu.sig; return the menu's sha256.

    Blobs go first so a reader that sees the new menu finds every blob it names.
    """
    validate_menu(menu)
    for variant in menu["variants"]:
        digest = variant["sha256"]
        if digest not in blobs:
            raise IntegrityError(f"variant {variant['id']}: blob {digest} was not built")
        check_digest(blobs[digest], digest, what=f"variant {variant['id']}")
        if store.put_blob(prefix, blobs[digest]) != digest:  # pragma: no cover - checked just above
            raise IntegrityError(f"variant {variant['id']}: stored digest differs")
    payload = menu_bytes(menu)
    store.put(f"{prefix}/{MENU_FILE}", payload)
    store.put(f"{prefix}/{SIGNATURE_FILE}", sign(key, payload).encode())
    return sha256_bytes(payload)


def write_variant_dir(
    out_dir: Path, menu: Mapping[str, Any], blobs: Mapping[str, bytes], key: Ed25519PrivateKey
) -> str:
    """A stand-alone variant directory (what `tinymlops variants build --out DIR` writes)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Store keys are "<prefix>/<file>": the directory's parent is the root and its name the prefix.
    return write_menu(DirectoryStore(out_dir.parent), out_dir.name, menu, blobs, key)


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
        signature = (directory / SIGNATURE_FILE).read_bytes()
    except OSError as exc:
        raise SignatureError(f"{directory / SIGNATURE_FILE}: missing, the menu is unsigned") from exc
    return payload, signature


def verify_variant_dir(directory: Path, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The verified menu of `directory`: signature first, then every blob's digest."""
    menu = load_verified_menu(*read_menu_files(directory), public_key)
    for variant in menu["variants"]:
        digest = variant["sha256"]
        what = f"variant {variant['id']} (blob {digest[:12]}…)"
        try:
            blob = (directory / BLOBS_DIR / digest).read_bytes()
        except OSError as exc:
            raise IntegrityError(f"{what}: blob is missing from {directory / BLOBS_DIR}") from exc
        check_digest(blob, digest, what=what)
        if len(blob) != variant["size_bytes"]:
            raise IntegrityError(f"{what}: {len(blob)} bytes, the signed menu says {variant['size_bytes']}")
    return menu
