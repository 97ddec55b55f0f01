"""Nothing off the device is trusted until verified: plans and menus here, blobs by `menu.verify_blob` (pure).

Every check names what failed so a device's report says why it kept its model.
Expiry (`tinymlops.freshness`): a menu no fresh plan pins must not have expired;
a plan's expiry is the device's to weigh (`DeviceAgent.accept_plan`), because
the plan it already follows keeps serving after it expires.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tinymlops.errors import DowngradeError, ExpiredError, IntegrityError
from tinymlops.freshness import CLOCK_SKEW_S, expired, expiry
from tinymlops.layout import MENU_FILE, PLAN_FILE
from tinymlops.menu import load_verified_menu
from tinymlops.plan import PLAN_KIND
from tinymlops.signing import verify


def verify_plan(plan_json: bytes, signature: bytes | str, key: Ed25519PublicKey) -> dict[str, Any]:
    """The plan, once its signature over the exact bytes holds."""
    verify(key, plan_json, signature.strip(), what=PLAN_FILE)
    try:
        plan = json.loads(plan_json)
    except ValueError as exc:
        raise IntegrityError(f"{PLAN_FILE}: signed but not JSON ({exc})") from exc
    if not isinstance(plan, dict) or plan.get("kind") != PLAN_KIND:
        raise IntegrityError(f"{PLAN_FILE}: signed but not a {PLAN_KIND}")
    for field in ("fleet", "menu", "policy"):
        if not isinstance(plan.get(field), dict):
            raise IntegrityError(f"{PLAN_FILE}: {field} is missing")
    return plan


def verify_menu(
    menu_json: bytes, signature: bytes | str, key: Ed25519PublicKey, *, installed_version: int,
    now: float | None = None,
) -> dict[str, Any]:
    """The menu, once signed by `key`, schema-valid and not older than what is installed.

    With `now`, also not expired: pass None only when a fresh signed plan pins this menu's digest,
    which vouches for it whatever its age."""
    menu = load_verified_menu(menu_json, signature, key)
    expires = expiry(menu, what=MENU_FILE)
    if now is not None and expired(expires, now):
        assert expires is not None
        raise ExpiredError(
            f"{MENU_FILE}: version {menu['version']} expired at {menu['expires']} ({now - expires:.0f} s ago, "
            f"beyond the {CLOCK_SKEW_S:.0f} s allowed for clock skew); ask the publisher for a newer signed menu"
        )
    if int(menu["version"]) < installed_version:
        raise DowngradeError(
            f"{MENU_FILE}: version {menu['version']} is older than the installed version {installed_version}"
        )
    return menu
