"""A standalone device's state on disk: the pinned publisher key and two model slots (A/B).

Layout of the state directory:

    publisher.pem            the key pinned at the first install; menus must be signed by it
    device-key.pem           the device's X25519 key (0600), when it receives encrypted variants
    identity.pem             the device's Ed25519 identity key (0600): it signs the device's reports
    report-seq               the highest report sequence number reserved so far (`identity.SequenceFile`)
    slots/<a|b>.model        verified artifact bytes as downloaded (still encrypted when they were)
    slots/<a|b>.<role>.wasm  the variant's WebAssembly pre/post modules, when it has any (`agent/modules.py`)
    slots/<a|b>.json         the menu entry they were verified against, the menu version and its expiry,
                             the wrapped key, the menu's sha256 and its drift bins (`monitoring`)
    active.json              which slot serves, and why; once a licence was installed, its tokens too
                             (`record_licence`): deleting meter.json cannot make a licensed device unmetered
    policy.json              the device's telemetry policy (`agent install --policy`; a fleet's `policy` object)
    telemetry.json           what `agent infer` recorded since: counts, latencies, drift window counts
    privacy-budget.json      the ε its drift releases spent today (`tinymlops.drift.privacy.BudgetLedger`)
    meter.json, receipts.bin, checkpoints.bin   the licence and its usage chain (`metering.py`)
    personal.json, personal-head.npz   the device's own last layer and its last fit (`personalise.py`)

A switch writes the spare slot completely (atomic rename, fsync) and only then
replaces `active.json` atomically: a crash at any point leaves a state whose
active slot is a complete, verified model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlops.agent.modules import ModuleBlobs
from tinymlops.errors import IntegrityError, SignatureError
from tinymlops.signing import IDENTITY_KEY_FILE, load_private_key, load_public_key, private_key_pem, public_key_pem
from tinymlops.store import atomic_write, digest_matches, read_json_file

SLOTS = ("a", "b")
PINNED_KEY, DEVICE_KEY, ACTIVE = "publisher.pem", "device-key.pem", "active.json"
LICENCE_TOKENS = "licence_tokens"  # in active.json: the install is licensed, so it is never served unmetered


@dataclass(frozen=True)
class ActiveSlot:
    slot: str
    variant: dict[str, Any]
    menu_version: int
    reason: str
    switched_at: float
    model: bytes
    wrapped: dict[str, Any] | None = None
    context: bytes = b""  # the model an encrypted slot's data key is bound to
    menu_expires: str | None = None  # the `expires` of the menu it came from (RFC 3339); None: never expires
    menu_sha256: str = ""  # the menu it came from (drift histograms name it)
    monitoring: dict[str, Any] | None = None  # that menu's drift bins
    modules: ModuleBlobs | None = None  # the variant's pre/post modules, re-verified when loaded


def pin_publisher_key(state_dir: Path, offered_pem: bytes | None) -> bytes:
    """The pinned key's PEM: pinned now from `offered_pem` on first use, then never replaced."""
    pinned = state_dir / PINNED_KEY
    if pinned.is_file():
        current = pinned.read_bytes()
        if offered_pem is not None and _canonical(offered_pem) != _canonical(current):
            raise SignatureError(
                f"--pubkey differs from the publisher key pinned in {pinned}; a device never accepts a new key"
            )
        return current
    if offered_pem is None:
        raise SignatureError(f"{state_dir}: no publisher key pinned yet; the first install needs --pubkey FILE")
    canonical = _canonical(offered_pem)
    atomic_write(pinned, canonical)
    return canonical


def _canonical(pem: bytes) -> bytes:
    return public_key_pem(load_public_key(pem, source="publisher key"))


def read_active(state_dir: Path) -> ActiveSlot | None:
    """The serving slot, re-verified against its recorded digest; None on a fresh device."""
    pointer = read_json_file(state_dir / ACTIVE)
    if pointer is None:
        return None
    slot = str(pointer["slot"])
    entry = json.loads((state_dir / "slots" / f"{slot}.json").read_bytes())
    model = (state_dir / "slots" / f"{slot}.model").read_bytes()
    variant = entry["variant"]
    if not digest_matches(model, variant["sha256"]):
        raise IntegrityError(f"slot {slot}: model bytes no longer match {variant['id']} ({variant['sha256'][:12]}…)")
    modules = None
    if entry.get("modules"):  # their digests are checked against these entries when they are loaded
        modules = ModuleBlobs(entry["modules"], {role: (state_dir / "slots" / f"{slot}.{role}.wasm").read_bytes()
                                                 for role in entry["modules"]})
    return ActiveSlot(slot, variant, int(entry["menu_version"]), str(pointer["reason"]),
                      float(pointer["switched_at"]), model, entry.get("wrapped"),
                      str(entry.get("context", "")).encode(), entry.get("menu_expires"),
                      str(entry.get("menu_sha256", "")), entry.get("monitoring"), modules)


def provision_device_key(state_dir: Path, offered_pem: bytes | None) -> bytes | None:
    """The device's X25519 key PEM: stored (owner-only) when first offered, and never silently replaced."""
    from tinymlops.envelope import device_key_pem, load_device_key

    canonical = None if offered_pem is None else device_key_pem(load_device_key(offered_pem, source="--device-key"))
    return _provision(state_dir / DEVICE_KEY, canonical, option="--device-key")


def provision_identity_key(state_dir: Path, offered_pem: bytes | None) -> bytes | None:
    """The device's Ed25519 identity key PEM: stored (owner-only) when first offered, never silently replaced:
    the gateway's registry knows the device by its public half."""
    canonical = None if offered_pem is None else private_key_pem(load_private_key(offered_pem, source="--identity"))
    return _provision(state_dir / IDENTITY_KEY_FILE, canonical, option="--identity")


def _provision(stored: Path, offered: bytes | None, *, option: str) -> bytes | None:
    if offered is not None:
        if stored.is_file() and stored.read_bytes() != offered:
            raise SignatureError(f"{option} differs from the key provisioned in {stored}")
        atomic_write(stored, offered)
        stored.chmod(0o600)
        return offered
    return stored.read_bytes() if stored.is_file() else None


def switch_to(
    state_dir: Path,
    variant: Mapping[str, Any],
    model: bytes,
    *,
    menu_version: int,
    reason: str,
    wrapped: Mapping[str, Any] | None = None,
    context: bytes = b"",
    menu_expires: str | None = None,
    menu_sha256: str = "",
    monitoring: Mapping[str, Any] | None = None,
    modules: ModuleBlobs | None = None,
) -> str:
    """Write `model` (and its pre/post `modules`) into the spare slot, then point `active.json` at it; return the
    slot name."""
    previous = _pointer(state_dir)
    current = previous.get("slot")
    spare = SLOTS[1] if current == SLOTS[0] else SLOTS[0]
    slots = state_dir / "slots"
    atomic_write(slots / f"{spare}.model", model)
    for role, blob in (modules.blobs if modules else {}).items():
        atomic_write(slots / f"{spare}.{role}.wasm", blob)
    entry = {"variant": dict(variant), "menu_version": menu_version, "wrapped": dict(wrapped) if wrapped else None,
             "context": context.decode(), "menu_expires": menu_expires, "menu_sha256": menu_sha256,
             "monitoring": dict(monitoring) if monitoring else None,
             "modules": {role: dict(e) for role, e in modules.entries.items()} if modules else None}
    atomic_write(slots / f"{spare}.json", json.dumps(entry).encode())
    pointer = {"slot": spare, "variant": variant["id"], "sha256": variant["sha256"], "menu_version": menu_version,
               "reason": reason, "switched_at": time.time()}
    if previous.get(LICENCE_TOKENS):  # a licensed install stays one across model switches
        pointer[LICENCE_TOKENS] = previous[LICENCE_TOKENS]
    atomic_write(state_dir / ACTIVE, json.dumps(pointer, indent=2).encode())
    return spare


def _pointer(state_dir: Path) -> dict[str, Any]:
    try:
        pointer = json.loads((state_dir / ACTIVE).read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return pointer if isinstance(pointer, dict) else {}


def recorded_licence(state_dir: Path) -> list[str]:
    """The licence tokens the install record holds (oldest first); empty for an install never licensed."""
    tokens = _pointer(state_dir).get(LICENCE_TOKENS) or []
    return [str(t) for t in tokens] if isinstance(tokens, list) else []


def record_licence(state_dir: Path, tokens: list[str]) -> None:
    """Keep the licence tokens in the install record, beside the active slot (no-op when already there)."""
    pointer = _pointer(state_dir)
    if not pointer or pointer.get(LICENCE_TOKENS) == tokens:
        return
    atomic_write(state_dir / ACTIVE, json.dumps({**pointer, LICENCE_TOKENS: tokens}, indent=2).encode())
