"""A standalone device's licence between commands: install a token, open the meter, export usage.

`agent install --license`, `agent infer`, `agent status` and `agent receipts` are
separate processes; each opens the meter from the state directory (`metering.py`),
which verifies the current token once, against the pinned publisher key, this
device's identity key and the menu of the active slot.  A token that no longer
binds (a new menu was installed, say) leaves the model serving unlicensed requests
refused with the reason, and everything else working.  The install record keeps
the tokens too (`slots.record_licence`), so deleting meter.json refuses inferences
(naming why) rather than serving them unmetered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.agent.metering import CHECKPOINTS, METER, RECEIPTS, Meter, read_meter, rebuilt_state, verified
from tinymlops.agent.slots import PINNED_KEY, read_active, record_licence, recorded_licence
from tinymlops.errors import LicenseError, LicenseRefusedError, MeterStateMissingError
from tinymlops.licensing.export import UsageExport, build
from tinymlops.licensing.token import License, check_binding, read_license
from tinymlops.signing import IDENTITY_KEY_FILE, load_private_key, load_public_key, public_key_base64
from tinymlops.store import atomic_write


def _identity(state_dir: Path) -> Ed25519PrivateKey:
    path = state_dir / IDENTITY_KEY_FILE
    if not path.is_file():
        raise LicenseError(f"{state_dir}: no identity key ({IDENTITY_KEY_FILE}); a licence is bound to one: "
                           "install with --identity FILE (`tinymlops keys device` makes it)")
    return load_private_key(path.read_bytes(), source=str(path))


def _menu_sha256(state_dir: Path) -> str | None:
    active = read_active(state_dir)
    return None if active is None else active.menu_sha256


def install_license(state_dir: Path, token: str, now: float) -> License:
    """Verify `token` for this device and its active menu, and serve under it from now on."""
    publisher = load_public_key((state_dir / PINNED_KEY).read_bytes(), source=str(state_dir / PINNED_KEY))
    identity = _identity(state_dir)
    license = verified(token.strip(), publisher, identity, _menu_sha256(state_dir), now)
    try:
        saved = read_meter(state_dir)
    except MeterStateMissingError:  # a licensed device lost meter.json: rebuild it from the files on disk
        tokens = recorded_licence(state_dir)
        saved = rebuilt_state(state_dir, tokens, read_license(tokens[-1], publisher), now)
        atomic_write(state_dir / METER, json.dumps(saved).encode())
    meter: Meter | None
    if saved is None:
        meter = Meter(state_dir, identity, license, {"tokens": [], "token_base": 0, "reserved": 0,
                                                     "latest_seen": now}, now=now)
    else:
        meter = open_meter(state_dir, now, strict=False)
        assert meter is not None  # meter.json exists
        if meter.license.token_id == license.token_id:
            meter.close(now)
            record_licence(state_dir, meter.tokens)
            return license
        if license.epoch < meter.license.epoch:
            meter.close(now)
            raise LicenseError(f"licence {license.token_id[:8]}: epoch {license.epoch} is older than the "
                               f"installed licence's ({meter.license.epoch}); a device never goes back")
    meter.switch(token.strip(), license, now)
    meter.close(now)
    record_licence(state_dir, meter.tokens)  # the install record says this device is licensed from now on
    return license


def open_meter(state_dir: Path, now: float, *, strict: bool = True) -> Meter | None:
    """The meter as the last command left it; None when this device has no licence (it serves unmetered).

    `strict`: a token whose signature no longer holds raises LicenseRefusedError (nothing may be served);
    otherwise (installing another) it is opened to be replaced."""
    saved = read_meter(state_dir)
    if saved is None:
        return None
    publisher = load_public_key((state_dir / PINNED_KEY).read_bytes(), source=str(state_dir / PINNED_KEY))
    identity = _identity(state_dir)
    token = str(saved["tokens"][-1])
    try:
        license = read_license(token, publisher)
    except LicenseError as exc:
        raise LicenseRefusedError(f"the installed licence does not verify ({exc}); inferences refused") from exc
    meter = Meter(state_dir, identity, license, saved, now=now)
    if not recorded_licence(state_dir):  # licensed before the install record kept the tokens
        record_licence(state_dir, meter.tokens)
    try:
        menu = _menu_sha256(state_dir)
        if menu is None:
            raise LicenseError("no variant installed, so no menu the licence could be bound to")
        check_binding(license, device=identity.public_key(), model=menu)
    except LicenseError as exc:
        meter.problem = f"{exc}; inferences refused" if strict else None
    return meter


def export_usage(state_dir: Path, now: float) -> UsageExport:
    """Seal what is pending and export the chain and checkpoints (ReceiptsError names a damaged file)."""
    meter = open_meter(state_dir, now, strict=False)
    if meter is None:
        raise LicenseError(f"{state_dir}: no licence installed, so nothing was metered")
    meter.seal(now)
    meter.close(now)
    checkpoints = (state_dir / CHECKPOINTS).read_bytes() if (state_dir / CHECKPOINTS).is_file() else b""
    receipts = (state_dir / RECEIPTS).read_bytes() if (state_dir / RECEIPTS).is_file() else b""
    return build(public_key_base64(meter.identity.public_key()), meter.tokens, checkpoints, receipts)


def licence_status(state_dir: Path, now: float) -> dict[str, Any] | None:
    meter = open_meter(state_dir, now)
    if meter is None:
        return None
    try:
        return meter.status(now)
    finally:
        meter.close(now)
