"""One signed build of the digits variants (the menu at version 2 and its blobs), with the publisher key that signed
it and two device shapes: what the agent's install tests start from (the `signed_build` fixture in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.devices import DeviceCapabilities
from tinymlops.layout import model_prefix
from tinymlops.model import DigitsArtifacts
from tinymlops.signing import public_key_pem
from tinymlops.store import DirectoryStore
from tinymlops.variants import build_variants

KEY = Ed25519PrivateKey.generate()
PUB = public_key_pem(KEY.public_key())
BIG = DeviceCapabilities(name="pc", arch="x86_64", device_class="pc", ram_mb=4096, model_storage_kb=1 << 20)
SMALL = DeviceCapabilities(name="zero", arch="armv7l", device_class="zero", ram_mb=512, model_storage_kb=128)

Built = tuple[dict[str, Any], dict[str, bytes]]


def build(root: Path, digits: DigitsArtifacts) -> Built:
    """The menu (signed with KEY) and its blobs by digest."""
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                          signing_key=KEY, model_ref=("ns", "digits"), menu_version=2)
    blobs = {v["sha256"]: (root / "models/ns/digits/blobs" / v["sha256"]).read_bytes() for v in menu["variants"]}
    return menu, blobs
