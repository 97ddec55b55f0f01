"""`tinymlops agent install`: a sideloaded variant directory, with every check a device applies.

The same `DeviceAgent` steps as the online agent, fed from a directory instead
of the gateway, with the result persisted in A/B slots (`slots.py`).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tinymlops.agent.device import ActiveModel, DeviceAgent
from tinymlops.agent.modules import ModuleBlobs, load_modules
from tinymlops.agent.sessions import SessionCache
from tinymlops.agent.slots import (
    DEVICE_KEY,
    ActiveSlot,
    pin_publisher_key,
    provision_device_key,
    provision_identity_key,
    read_active,
    switch_to,
)
from tinymlops.cpufeatures import host_features
from tinymlops.devices import DeviceCapabilities
from tinymlops.envelope import load_device_key
from tinymlops.errors import IntegrityError
from tinymlops.layout import BLOBS_DIR
from tinymlops.menu import read_menu_files
from tinymlops.protect import device_grant_file, model_context, open_artifact
from tinymlops.signing import load_public_key
from tinymlops.store import read_json_file, sha256_bytes
from tinymlops.wasm.modules import modules_of

ARCH_OF_MACHINE = {"amd64": "x86_64", "arm64": "aarch64", "armv7": "armv7l"}


def host_capabilities(state_dir: Path, *, name: str | None = None) -> DeviceCapabilities:
    """What this machine can run, as a device: its architecture, vector extensions, RAM and free space for
    models."""
    machine = platform.machine().lower()
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    free_kb = shutil.disk_usage(state_dir).free // 1024
    return DeviceCapabilities(
        name=name or platform.node() or "this-device",
        arch=ARCH_OF_MACHINE.get(machine, machine),
        device_class="standalone",
        ram_mb=int(ram_mb),
        model_storage_kb=int(free_kb),
        runtimes=("onnxruntime", "tvm") if importlib.util.find_spec("tvm") else ("onnxruntime",),
        cpu_features=host_features(),
    )


@dataclass(frozen=True)
class InstallResult:
    variant_id: str
    menu_version: int
    slot: str
    switched: bool
    reason: str


def install_from_dir(
    directory: Path,
    state_dir: Path,
    *,
    pubkey_pem: bytes | None = None,
    device_key_pem: bytes | None = None,
    identity_pem: bytes | None = None,
    objective: str = "accuracy",
    caps: DeviceCapabilities | None = None,
) -> InstallResult:
    """Verify and install the best variant of `directory` for this device; raise naming what failed.

    On any failure the previously active slot is untouched and keeps serving.  `identity_pem`, the
    device's Ed25519 identity key, is kept in the state directory for signing its reports.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    key = load_public_key(pin_publisher_key(state_dir, pubkey_pem), source=str(state_dir / "publisher.pem"))
    provision_identity_key(state_dir, identity_pem)
    device_pem = provision_device_key(state_dir, device_key_pem)
    device_key = load_device_key(device_pem, source=str(state_dir / DEVICE_KEY)) if device_pem else None
    sessions = SessionCache()
    previous = read_active(state_dir)
    agent = DeviceAgent(caps or host_capabilities(state_dir), key, sessions,
                        active=restore(previous, sessions, device_key), device_key=device_key)
    menu_json, menu_sig = read_menu_files(directory)
    menu = agent.accept_menu(menu_json, menu_sig)
    version = int(menu["version"])
    variant = agent.choose(menu, {"objective": objective})
    reason = agent.choice.reason if agent.choice else f"best {objective}"
    if previous is not None and agent.is_active(variant, version):
        return InstallResult(str(variant["id"]), version, previous.slot, False, "already active")
    blob_path = directory / BLOBS_DIR / str(variant["sha256"])
    try:
        blob = blob_path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"variant {variant['id']}: blob {blob_path} cannot be read") from exc
    wrapped = _wrapped_key(directory, variant, device_key)
    context = model_context(str(menu["model"]["namespace"]), str(menu["model"]["name"]))
    modules = _module_blobs(directory, menu, variant)
    agent.install(variant, blob, version, reason, wrapped=wrapped, context=context, modules=modules)
    slot = switch_to(state_dir, variant, blob, menu_version=version, reason=reason, wrapped=wrapped,
                     context=context, menu_expires=menu.get("expires"), menu_sha256=sha256_bytes(menu_json),
                     monitoring=menu.get("monitoring"), modules=modules)
    return InstallResult(str(variant["id"]), version, slot, True, reason)


def _module_blobs(directory: Path, menu: Mapping[str, Any], variant: Mapping[str, Any]) -> ModuleBlobs | None:
    """The variant's pre/post modules from the directory (checked against the menu when they are loaded)."""
    entries = modules_of(menu, variant)
    blobs = {}
    for role, entry in entries.items():
        path = directory / BLOBS_DIR / str(entry["sha256"])
        try:
            blobs[role] = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(f"variant {variant['id']}: its {role} module {path} cannot be read") from exc
    return ModuleBlobs(entries, blobs) if entries else None


def _wrapped_key(directory: Path, variant: Mapping[str, Any], device_key: X25519PrivateKey | None) -> Any:
    """This device's wrapped data key from the directory, when the variant is encrypted and one is there."""
    if not variant.get("encryption") or device_key is None:
        return None
    path = directory / device_grant_file(device_key)
    return read_json_file(path)  # None when missing: open_artifact names the missing key


def restore(previous: ActiveSlot | None, sessions: SessionCache,
            device_key: X25519PrivateKey | None) -> ActiveModel | None:
    """The serving slot, loaded again (and decrypted in memory when it was encrypted)."""
    if previous is None:
        return None
    model = previous.model
    if previous.variant.get("encryption"):
        model = open_artifact(model, previous.variant, device_key=device_key, wrapped=previous.wrapped,
                              context=previous.context)
    runner, _ = sessions.load(str(previous.variant["sha256"]), model, previous.variant)
    return ActiveModel(previous.variant, previous.menu_version, runner, previous.reason, previous.switched_at,
                       menu_sha256=previous.menu_sha256, monitoring=previous.monitoring,
                       modules=load_modules(previous.variant, previous.modules))

