"""The demo's far-edge scenario: a few Cortex-M4 microcontrollers behind one edge node.

The publisher builds the model's microcontroller variant (measured in qemu)
into its own signed menu in the store; the edge node (`tinymlops.faredge`)
verifies it, gives each MCU the variant that fits its flash and RAM labels
(a board too small is refused, naming both numbers), flashes it after the
firmware's own SHA-256 check, shows that a corrupted flash write is refused
with the previous image kept, runs each MCU on the digits data and relays
their reports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.devices import DeviceCapabilities
from tinymlops.faredge.node import EdgeNode
from tinymlops.signing import load_private_key
from tinymlops.store import DirectoryStore
from tinymlops.variants import build_variants

MENU_PREFIX = "far-edge/digits"
SAMPLES = 8
# Three Cortex-M4F boards by their datasheets: flash (model storage) and RAM.
MCUS = (
    DeviceCapabilities("nucleo-l4r5zi-0", "cortex-m4", "mcu", 0, 2048, ("c",), ram_kb=640),
    DeviceCapabilities("nucleo-f411re-0", "cortex-m4", "mcu", 0, 512, ("c",), ram_kb=128),
    DeviceCapabilities("nucleo-g431rb-0", "cortex-m4", "mcu", 0, 128, ("c",), ram_kb=32),
)


def run_far_edge(store: Path, private_key: Path, model: Path, data: Path, x: NDArray[np.float32], workdir: Path,
                 progress: Callable[[str], None]) -> dict[str, Any]:
    key = load_private_key(private_key.read_bytes(), source=str(private_key))
    progress("building the microcontroller variant (TVM C bundle, firmware measured in qemu)")
    menu = build_variants(model, data, DirectoryStore(store), MENU_PREFIX, signing_key=key,
                          model_ref=("default", "digits"), precisions=["fp32"], targets=["cortex-m4"],
                          cache_dir=workdir / "variant-cache")
    node = EdgeNode("edge-mcu-0", key.public_key(), list(MCUS), workdir / "edge-node")
    directory = store / MENU_PREFIX
    installed = node.install(directory)
    for name, what in installed.items():
        progress(f"{name}: {what}")
    flashed = [name for name, mcu in node.mcus.items() if mcu.image is not None]
    corrupted = node.install(directory, corrupt_on=frozenset(flashed[:1])) if flashed else {}
    if flashed:
        progress(f"{flashed[0]}, corrupted flash write: {corrupted[flashed[0]]}")
    for name in flashed:
        node.infer(name, x[:SAMPLES])
    reports = node.reports()
    node.close()
    return {"menu": MENU_PREFIX, "not_built": menu.get("not_built", []), "install": installed,
            "corrupted_flash": {name: corrupted[name] for name in flashed[:1]}, "devices": reports}
