"""The edge node of a few microcontrollers: verify, choose, flash (with a boot check), run, relay reports.

Each MCU is emulated by its own qemu instance (MPS2-AN386) booting the image
the node flashed to it; a boot or a batch of inferences is one run of that
instance.  Nothing reaches an MCU before the node has verified the menu's
signature and the bundle's digest, and nothing runs on it before the firmware
has verified its own image's SHA-256: a refused image leaves the MCU on the one
it had.  A real board adds what qemu cannot show: MCUboot's signature check of
the image in the bootloader and A/B slots, so a power loss mid-flash still
boots the previous image (here the previous image simply stays the active one).
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from numpy.typing import NDArray

from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import HealthCheckError, IntegrityError, TinyMLOpsError
from tinymlops.faredge.choose import choose_mcu_variant
from tinymlops.layout import BLOBS_DIR
from tinymlops.menu import load_verified_menu, read_menu_files, verify_blob
from tinymlops.variants.mcu import qemu
from tinymlops.variants.mcu.firmware import Firmware, build_firmware, find_toolchain


@dataclass(frozen=True)
class Image:
    """What an MCU runs: a firmware build of one variant, and the digest the firmware checks itself against."""

    variant_id: str
    elf: Path
    image_sha256: str
    firmware: Firmware
    figures: dict[str, Any]


@dataclass
class Mcu:
    caps: DeviceCapabilities
    image: Image | None = None
    inferences: int = 0
    instructions: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)


def corrupt_copy(elf: Path, out: Path) -> Path:
    """A copy of `elf` with the last byte of its first loadable segment flipped: a flash write gone wrong
    (in the constants at the end of the code, so the image still boots and its own check finds it)."""
    data = bytearray(elf.read_bytes())
    phoff, = struct.unpack_from("<I", data, 0x1C)
    offset, = struct.unpack_from("<I", data, phoff + 4)  # p_offset of the first program header
    size, = struct.unpack_from("<I", data, phoff + 16)  # its p_filesz
    data[offset + size - 1] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


class EdgeNode:
    """One edge node and the microcontrollers wired to it."""

    def __init__(self, name: str, public_key: Ed25519PublicKey, mcus: list[DeviceCapabilities], workdir: Path):
        self.name, self.public_key, self.workdir = name, public_key, workdir
        self.mcus = {caps.name: Mcu(caps) for caps in mcus}
        self.qemu = find_toolchain().qemu

    def install(self, directory: Path, *, corrupt_on: frozenset[str] = frozenset()) -> dict[str, str]:
        """Give every MCU the variant of `directory`'s menu that fits it; per MCU, what happened.

        A menu that fails verification reaches no MCU (IntegrityError/SignatureError propagate).
        `corrupt_on` names MCUs whose flash write is corrupted (fault injection): their firmware
        must refuse the image and keep the previous one.
        """
        menu = load_verified_menu(*read_menu_files(directory), self.public_key)
        outcome = {}
        for name, mcu in self.mcus.items():
            try:
                entry = choose_mcu_variant(menu, mcu.caps)
                blob_path = directory / BLOBS_DIR / str(entry["sha256"])
                blob = blob_path.read_bytes() if blob_path.is_file() else b""
                verify_blob(blob, entry)
                firmware = build_firmware(blob, self.workdir / "firmware")
                outcome[name] = self._flash(mcu, entry, firmware, corrupt=name in corrupt_on)
            except TinyMLOpsError as exc:
                mcu.refusals.append(str(exc))
                kept = mcu.image.variant_id if mcu.image else "nothing"
                outcome[name] = f"refused ({exc}); keeps {kept}"
        return outcome

    def _flash(self, mcu: Mcu, entry: dict[str, Any], firmware: Firmware, *, corrupt: bool) -> str:
        elf = firmware.harness
        if corrupt:
            slot = self.workdir / "flash" / mcu.caps.name
            slot.mkdir(parents=True, exist_ok=True)
            elf = corrupt_copy(firmware.harness, slot / "harness.elf")
        image = Image(str(entry["id"]), elf, firmware.image_sha256, firmware, dict(entry.get("metrics", {})))
        check = entry.get("health_check", {})
        golden = np.asarray(check.get("inputs", []), dtype=np.float32)
        expected = np.asarray(check.get("outputs", []), dtype=np.float32)
        run = self._run(image, golden)  # the boot check: the firmware verifies its image, then the golden inputs
        diff = float(np.max(np.abs(run.outputs - expected.reshape(run.outputs.shape)))) if len(golden) else 0.0
        if not diff <= float(check.get("atol", 1e-4)):
            raise HealthCheckError(f"device {mcu.caps.name}: {image.variant_id}'s golden outputs differ by {diff:.3g}")
        previous = mcu.image.variant_id if mcu.image else "nothing"
        mcu.image = image
        return f"flashed {image.variant_id} (was {previous})"

    def _run(self, image: Image, x: NDArray[np.float32]) -> qemu.Run:
        info = image.firmware.info
        samples = x.reshape(len(x), *info["input"]["shape"]) if len(x) else x
        return qemu.run_firmware(self.qemu, image.elf, samples, input_dtype=info["input"]["dtype"],
                                 output_dtype=info["output"]["dtype"],
                                 output_size=int(np.prod(info["output"]["shape"])), image_sha256=image.image_sha256,
                                 board=image.firmware.board)

    def infer(self, name: str, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Run MCU `name`'s image on each row of `x`; an error is recorded in its report and raised."""
        mcu = self.mcus[name]
        if mcu.image is None:
            raise IntegrityError(f"device {name}: nothing flashed")
        try:
            run = self._run(mcu.image, x)
        except TinyMLOpsError as exc:
            mcu.errors.append(str(exc))
            raise
        mcu.inferences += len(x)
        mcu.instructions += run.instructions
        return run.outputs

    def reports(self) -> list[dict[str, Any]]:
        """What the node relays for each MCU: its variant, the measured figures, inferences, errors, refusals."""
        out = []
        for name, mcu in self.mcus.items():
            figures = mcu.image.figures if mcu.image else {}
            out.append({
                "device": name, "edge_node": self.name, "arch": mcu.caps.arch,
                "flash_kb": mcu.caps.model_storage_kb, "ram_kb": mcu.caps.ram_bytes // 1024,
                "variant": mcu.image.variant_id if mcu.image else None,
                "image_sha256": mcu.image.image_sha256 if mcu.image else None,
                **{key: figures.get(key) for key in ("flash_bytes", "ram_bytes", "latency_ms_estimate", "clock_mhz")},
                "inferences": mcu.inferences,
                "instructions_per_inference": int(np.median(mcu.instructions)) if mcu.instructions else None,
                "errors": list(mcu.errors), "refusals": list(mcu.refusals),
            })
        return out

    def close(self) -> None:
        shutil.rmtree(self.workdir / "flash", ignore_errors=True)
