"""Nothing off the device is trusted until verified: plans, menus and blobs (pure, over bytes).

Every check names what failed so a device's report says why it kept its model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tinymlops.errors import DowngradeError, IntegrityError
from tinymlops.menu import load_verified_menu
from tinymlops.plan import PLAN_KIND
from tinymlops.signing import verify
from tinymlops.store import check_digest


def verify_plan(plan_json: bytes, signature: bytes | str, key: Ed25519PublicKey) -> dict[str, Any]:
    """The plan, once its signature over the exact bytes holds."""
    verify(key, plan_json, signature.strip(), what="plan.json")
    try:
        plan = json.loads(plan_json)
    except ValueError as exc:
        raise IntegrityError(f"plan.json: signed but not JSON ({exc})") from exc
    if not isinstance(plan, dict) or plan.get("kind") != PLAN_KIND:
        raise IntegrityError(f"plan.json: signed but not a {PLAN_KIND}")
    for field in ("fleet", "menu", "policy"):
        if not isinstance(plan.get(field), dict):
            raise IntegrityError(f"plan.json: {field} is missing")
    return plan


def verify_menu(
    menu_json: bytes, signature: bytes | str, key: Ed25519PublicKey, *, installed_version: int
) -> dict[str, Any]:
    """The menu, once signed by `key`, schema-valid and not older than what is installed."""
    menu = load_verified_menu(menu_json, signature, key)
    if int(menu["version"]) < installed_version:
        raise DowngradeError(
            f"menu.json: version {menu['version']} is older than the installed version {installed_version}"
        )
    return menu


def verify_blob(blob: bytes, variant: Mapping[str, Any]) -> None:
    """The blob is exactly the bytes the signed menu promises for `variant`."""
    what = f"variant {variant['id']} (blob {str(variant['sha256'])[:12]}…)"
    if len(blob) != int(variant["size_bytes"]):
        raise IntegrityError(f"{what}: {len(blob)} bytes, the signed menu says {variant['size_bytes']}")
    check_digest(blob, str(variant["sha256"]), what=what)
