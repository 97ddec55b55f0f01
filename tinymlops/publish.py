"""Publishing a variant menu: one function, one order of writes, which readers rely on.

`publish` encrypts the built variants (given a data key), assembles the menu,
wraps the data key for each recipient, then writes, in this order:

    1. blobs/<sha256>            every artifact the menu names (variants, pre/post modules, split parts)
    2. keys/<fingerprint>.json   the data key wrapped for each recipient (an encrypted menu)
    3. menu.sig                  the signature over the new menu's exact bytes
    4. menu.json                 the menu itself

Every reader starts from menu.json and only then fetches what it names: a device
reads the menu, then its signature, then its variant's blob, then its wrapped key
(`agent/online.py` through a plan, `agent/install.py` from a directory), and the
operator copies menu.json and menu.sig to `menus/<sha256>` once the build is done.
So menu.json goes last, as the commit point: whoever sees it finds everything it
names, and a device never follows a menu whose blob or key is not there yet (the
race `variants build` had while it wrote the keys after the menu); a first publish
never shows a menu without its signature.  Replacing a menu, a reader that
straddles the last two writes reads the old menu.json and the new menu.sig: the
signature check fails, nothing is installed, and its next poll reads both anew
(the operator writes plan.sig before plan.json, and kept menus, by the same rule).

Each write is atomic (`ArtifactStore.put`).  The two publishers both call
`publish`: `build_variants` (`tinymlops variants build`, in-process) and the
pipeline's publish_menu component; `tinymlops variants build --out DIR` moves the
files of its staging directory into DIR in the same order (`MENU_FILES_LAST`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from tinymlops.errors import IntegrityError
from tinymlops.freshness import MENU_TTL_S, expires_after
from tinymlops.layout import MENU_FILE, MENU_SIGNATURE_FILE, menu_key, signature_key
from tinymlops.menu import assemble_menu, menu_bytes, split_parts, validate_menu, verify_blob, verify_part
from tinymlops.protect import encrypt_variants, grant, model_context, write_grants
from tinymlops.signing import sign
from tinymlops.store import ArtifactStore, DirectoryStore, sha256_bytes
from tinymlops.wasm.modules import verify_module

# The menu's own files, in the order they are written after the blobs and keys they name: menu.json last.
MENU_FILES_LAST = (MENU_SIGNATURE_FILE, MENU_FILE)


@dataclass(frozen=True)
class Published:
    menu: dict[str, Any]
    sha256: str  # of menu.json's bytes: what EdgeModel status and plans name the menu by


def publish(
    store: ArtifactStore,
    prefix: str,
    *,
    model_ref: tuple[str, str],
    version: int,
    base: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]],
    blobs: Mapping[str, bytes],
    signing_key: Ed25519PrivateKey,
    not_built: Sequence[Mapping[str, Any]] = (),
    data_key: bytes | None = None,
    recipients: Sequence[X25519PublicKey] = (),
    expires: str | None = None,
    monitoring: Mapping[str, Any] | None = None,
    modules: Sequence[Mapping[str, Any]] = (),
) -> Published:
    """Publish the built `variants` (menu entries, their artifacts in `blobs` by sha256) under `prefix`.

    The menu expires at `expires` (RFC 3339), by default MENU_TTL_S from now (`tinymlops.freshness`).

    With `data_key`, every artifact is published encrypted under it and the key is wrapped for
    each of `recipients` (devices or device groups); without, `recipients` are not used.
    `monitoring`: the reference drift histograms of the build's data (`variants/monitoring.py`).
    `modules`: the menu entries of the WebAssembly pre/post modules the variants name (`tinymlops.wasm.modules`),
    their bytes in `blobs` too; they are published in the clear (preprocessing code, not the model's weights).
    """
    if data_key is not None:
        module_blobs = {str(m["sha256"]): blobs[str(m["sha256"])] for m in modules}
        variants, blobs = encrypt_variants(variants, blobs, data_key)
        blobs = {**blobs, **module_blobs}
    menu = assemble_menu(model_ref=model_ref, version=version, base=base, variants=variants, not_built=not_built,
                         expires=expires or expires_after(time.time(), MENU_TTL_S), monitoring=monitoring,
                         modules=modules)
    grants = grant(data_key, recipients, context=model_context(*model_ref)) if data_key is not None else {}
    return Published(menu, write_menu(store, prefix, menu, blobs, signing_key, grants=grants))


def write_menu(
    store: ArtifactStore,
    prefix: str,
    menu: Mapping[str, Any],
    blobs: Mapping[str, bytes],
    signing_key: Ed25519PrivateKey,
    *,
    grants: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Write an assembled menu in the order of the module docstring and return its sha256.

    Every blob is checked as a device will check it before anything is written.
    """
    validate_menu(menu)
    for variant in menu["variants"]:
        if variant["sha256"] not in blobs:
            raise IntegrityError(f"variant {variant['id']}: blob {variant['sha256']} was not built")
        verify_blob(blobs[variant["sha256"]], variant)
    for module in menu.get("modules", []):
        if module["sha256"] not in blobs:
            raise IntegrityError(f"{module['role']} module: blob {module['sha256']} was not given")
        verify_module(blobs[module["sha256"]], module)
    parts = [part for variant in menu["variants"] for part in split_parts(variant)]
    for what, part in parts:
        if part["sha256"] not in blobs:
            raise IntegrityError(f"{what}: blob {part['sha256']} was not given")
        verify_part(blobs[part["sha256"]], what, part)
    for variant in menu["variants"]:
        store.put_blob(prefix, blobs[variant["sha256"]])
    for module in menu.get("modules", []):
        store.put_blob(prefix, blobs[module["sha256"]])
    for _, part in parts:
        store.put_blob(prefix, blobs[part["sha256"]])
    write_grants(store, prefix, grants or {})
    payload = menu_bytes(menu)
    path = menu_key(prefix)
    files = {MENU_SIGNATURE_FILE: (signature_key(path), sign(signing_key, payload).encode()),
             MENU_FILE: (path, payload)}
    for name in MENU_FILES_LAST:
        store.put(*files[name])
    return sha256_bytes(payload)


def write_variant_dir(
    out_dir: Path, menu: Mapping[str, Any], blobs: Mapping[str, bytes], signing_key: Ed25519PrivateKey
) -> str:
    """A stand-alone variant directory of an assembled menu; return the menu's sha256."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Store keys are "<prefix>/<file>": the directory's parent is the root and its name the prefix.
    return write_menu(DirectoryStore(out_dir.parent), out_dir.name, menu, blobs, signing_key)
