"""Pre/post modules in the signed menu: their entries, the variants' links to them, and the checks a reader applies.

No wasmtime here: publishing and verifying a menu need only bytes and digests.

The menu lists each module once, content-addressed like a variant (its bytes are
`blobs/<sha256>` beside the variants'):

    "modules": [{"role": "pre", "sha256": ..., "size_bytes": ..., "format": "wasm",
                 "abi": "tinymlops.process/v1", "inputs": 64, "outputs": 64}, ...]

and each variant that uses them names them by digest, in `modules` and in its
`lineage` (the modules are part of how its outputs came to be):

    "modules": {"pre": "<sha256>", "post": "<sha256>"}

`inputs`/`outputs` are the values per sample the factory saw the module take and
return (a device refuses a call that returns another count).  The variant's
`health_check.modules` holds golden samples per role (inputs and outputs) that a
device replays before it lets the modules serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinymlops.errors import IntegrityError, SpecError
from tinymlops.store import check_digest, sha256_bytes

ROLES = ("pre", "post")
MODULE_FORMAT = "wasm"
ABI = "tinymlops.process/v1"  # DESIGN §6: `memory` + `process(n: i32) -> i32`, float32 values at offset 0
# The golden samples are replayed by the same wasm on the device, whose float semantics are deterministic.
MODULE_ATOL = 1e-6


def module_entry(role: str, blob: bytes, *, inputs: int, outputs: int) -> dict[str, Any]:
    """The menu's entry for one module, from its bytes and the value counts the factory measured."""
    if role not in ROLES:
        raise SpecError(f"module role {role!r}: must be one of {', '.join(ROLES)}")
    return {"role": role, "sha256": sha256_bytes(blob), "size_bytes": len(blob), "format": MODULE_FORMAT,
            "abi": ABI, "inputs": int(inputs), "outputs": int(outputs)}


def link(variant: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]],
         golden: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """`variant`'s menu entry using the modules `entries` (by role), with their golden samples in its health check."""
    if not entries:
        return dict(variant)
    digests = {role: str(entry["sha256"]) for role, entry in entries.items()}
    linked = dict(variant)
    linked["modules"] = digests
    linked["lineage"] = {**variant["lineage"], "modules": digests}
    linked["health_check"] = {**variant["health_check"],
                              "modules": {role: dict(golden[role]) for role in digests}}
    return linked


def modules_of(menu: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The module entries (by role) `variant` uses; IntegrityError when it names one the menu does not list."""
    listed = {str(entry["sha256"]): entry for entry in menu.get("modules", [])}
    used: dict[str, Mapping[str, Any]] = {}
    for role, digest in (variant.get("modules") or {}).items():
        entry = listed.get(str(digest))
        if entry is None or entry["role"] != role:
            raise IntegrityError(f"variant {variant['id']}: its {role} module {str(digest)[:12]}… is not among the "
                                 "signed menu's modules")
        used[str(role)] = entry
    return used


def verify_module(blob: bytes, entry: Mapping[str, Any]) -> None:
    """The bytes are exactly the module the signed menu lists: size, then digest (before anything compiles them)."""
    what = f"{entry['role']} module (blob {str(entry['sha256'])[:12]}…)"
    if len(blob) != int(entry["size_bytes"]):
        raise IntegrityError(f"{what}: {len(blob)} bytes, the signed menu says {entry['size_bytes']}")
    check_digest(blob, str(entry["sha256"]), what=what)


def describe(entry: Mapping[str, Any]) -> str:
    """How errors name a module: its role and digest prefix."""
    return f"{entry['role']} module {str(entry['sha256'])[:12]}…"
