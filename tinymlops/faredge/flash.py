"""A microcontroller's flash as the device agent sees it: two image slots behind the `SessionCache` interface.

In a fleet, each MCU behind an edge node is followed by its own `DeviceAgent`
(the node runs it on the MCU's behalf).  What the agent calls "loading a
variant" is, for an MCU, building the firmware of the verified C bundle and
flashing it; its health check is the first boot, where the firmware hashes its
own image against the digest the node sends with it before anything runs, then
the menu's golden inputs must give the golden outputs.  The image goes to the
slot the running one does not occupy (A/B, as MCUboot lays out flash), so a
refused write never touches the image that serves: the agent keeps its active
runner, which still points at the intact slot.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.agent.sessions import SessionCache
from tinymlops.errors import ModelLoadError, TinyMLOpsError
from tinymlops.faredge.node import corrupt_copy
from tinymlops.runners import VariantRunner
from tinymlops.variants.mcu import qemu
from tinymlops.variants.mcu.firmware import Firmware, build_firmware, find_toolchain
from tinymlops.variants.mcu.measure import firmware_cache

SLOTS = ("slot-a", "slot-b")


@dataclass
class McuImage:
    """A firmware image in one flash slot of one MCU, run by booting it in its own qemu instance.

    Every run is a boot: the firmware checks its image's SHA-256 (`image_sha256`, what the node flashed it
    with) before it runs anything.  `last_instructions` is what the board's timer counted for the last
    sample, so whoever runs the image can report what the MCU measured."""

    variant_id: str
    sha256: str  # the menu digest of the bundle it was built from
    slot: str
    elf: Path
    firmware: Firmware
    qemu: str
    input_name: str = "input"
    output_name: str = "output"
    last_instructions: list[int] = field(default_factory=list)

    def many(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        info = self.firmware.info
        run = qemu.run_firmware(self.qemu, self.elf, x.reshape(len(x), *info["input"]["shape"][1:]),
                                input_dtype=info["input"]["dtype"], output_dtype=info["output"]["dtype"],
                                output_size=int(np.prod(info["output"]["shape"])),
                                image_sha256=self.firmware.image_sha256, board=self.firmware.board)
        self.last_instructions = run.instructions
        out: NDArray[np.float32] = run.outputs.reshape(len(x), *info["output"]["shape"][1:])
        return out

    def one(self, sample: NDArray[np.float32]) -> NDArray[np.float32]:
        first: NDArray[np.float32] = self.many(sample[None])[0]
        return first

    def latency_ms(self, x: NDArray[np.float32]) -> tuple[float, float]:
        raise NotImplementedError("a microcontroller's latency is estimated from its instruction counts")


class McuFlash(SessionCache):
    """One MCU's two flash slots.  `load` builds the firmware (cached by bundle digest) and writes it to the
    slot the running image does not occupy; `get` answers for the digests a slot holds.

    `corrupt_next` is fault injection: the next write flips a byte of the image, as a flash write gone wrong
    would, and the firmware's own check must then refuse it at its first boot."""

    def __init__(self, device: str, directory: Path, *, cache_dir: Path | None = None) -> None:
        super().__init__()
        self.device, self.directory = device, directory
        self.cache_dir = cache_dir
        self.slots: dict[str, McuImage] = {}
        self.serving: str | None = None  # the slot the agent's active runner boots (set by whoever switches)
        self.corrupt_next = False
        self._flash_lock = threading.Lock()

    def load(self, sha256: str, blob: bytes, variant: Mapping[str, Any] | None = None
             ) -> tuple[VariantRunner, float | None]:
        with self._flash_lock:
            for image in self.slots.values():
                if image.sha256 == sha256 and image.slot == self.serving:
                    return image, None  # already the running image: nothing to flash
            started = time.perf_counter()
            what = f"device {self.device}: variant {variant['id'] if variant else sha256[:12]}"
            try:
                firmware = build_firmware(blob, self.cache_dir or firmware_cache())
                qemu_bin = find_toolchain().qemu
            except TinyMLOpsError as exc:
                raise ModelLoadError(f"{what}: no firmware ({exc})") from exc
            slot = next(s for s in SLOTS if s != self.serving)
            home = self.directory / slot
            home.mkdir(parents=True, exist_ok=True)
            elf = home / "image.elf"
            if self.corrupt_next:
                self.corrupt_next = False
                corrupt_copy(firmware.harness, elf)
            else:
                shutil.copyfile(firmware.harness, elf)
            image = McuImage(str(variant["id"]) if variant else sha256[:12], sha256, slot, elf, firmware, qemu_bin)
            self.slots[slot] = image
            self.loads += 1
            return image, (time.perf_counter() - started) * 1000

    def get(self, sha256: str) -> VariantRunner | None:
        """The image of `sha256` only while it is the one serving: the other slot holds a written, unproven
        image (or a refused one), which an offline switch must not boot without a fresh health check."""
        image = self.slots.get(self.serving) if self.serving else None
        return image if image is not None and image.sha256 == sha256 else None

    def __len__(self) -> int:
        return len(self.slots)
