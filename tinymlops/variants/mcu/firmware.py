"""Firmware for an emulated MPS2 board (`boards.py`) from a C bundle: cross-compiled, sized, cached.

Two images are linked from the same objects (`board/`): the *footprint*
image (reset vector, model, a `main` that calls `model_run` once; no stdio)
is what a device would need, so its text+data is the flash figure and its
data+bss the static RAM; the *harness* image adds semihosting stdio to read
samples and write outputs in qemu (`qemu.py`).  Both are cached under a key
of the bundle's digest, the board sources and the compiler's version, so a
second measurement or `tinymlops mcu run` does not rebuild.  The board is the one of the
bundle's target (`bundle.json`), and its data (flags, memory map, timer) is part of the key.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tinymlops.errors import FirmwareError, ToolchainMissingError
from tinymlops.variants.mcu.boards import BOARDS, Board, board_for

GCC = "arm-none-eabi-gcc"
SIZE = "arm-none-eabi-size"
OBJCOPY = "arm-none-eabi-objcopy"
QEMU = "qemu-system-arm"
APT_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
# Besides the board's CPU flags (boards.py).
CFLAGS = ("-O3", "-ffunction-sections", "-fdata-sections", "-fno-strict-aliasing")
BOARD_FILES = ("startup.c", "harness.c", "footprint.c", "mps2.ld", *(f"sha256/{name}" for name in (
    "SHA256.c", "hash_SHA2_template.c", "hash_SHA2_compress_portable.c", "common.h", "endianess.h", "errors.h")))
SHA256_DEFINES = ("-DNO_CPYTHON_MODULE", "-DHAVE_STDINT_H", "-DHAVE_MEMALIGN")
LINK = ("-nostartfiles", "-Wl,--gc-sections")


@dataclass(frozen=True)
class Toolchain:
    gcc: str
    size: str
    qemu: str
    objcopy: str

    def version(self) -> str:
        out = subprocess.run([self.gcc, "--version"], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[0]


@dataclass(frozen=True)
class Firmware:
    harness: Path  # the ELF qemu runs
    flash_bytes: int  # text + data of the footprint image
    static_ram_bytes: int  # data + bss of the footprint image (arenas, workspace, tensors)
    info: dict[str, Any]  # the bundle's bundle.json
    cached: bool
    image_sha256: str = ""  # of the harness image as flashed (objcopy -O binary); the firmware checks it
    board: Board = BOARDS["cortex-m4"]  # the emulated board it was built for and runs on


def find_toolchain(board: Board = BOARDS["cortex-m4"]) -> Toolchain:
    """The cross compiler and the emulator for `board`; ToolchainMissingError names the Debian packages
    otherwise."""
    found = {tool: shutil.which(tool) for tool in (GCC, SIZE, QEMU, OBJCOPY)}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise ToolchainMissingError(f"{board.target} firmware needs {', '.join(missing)} on the build machine "
                                    f"(apt-get install {APT_PACKAGES})")
    if not _has_newlib(str(found[GCC]), board):
        raise ToolchainMissingError(f"{board.target} firmware needs newlib for {GCC} {' '.join(board.cflags)} "
                                    "(apt-get install libnewlib-arm-none-eabi)")
    return Toolchain(str(found[GCC]), str(found[SIZE]), str(found[QEMU]), str(found[OBJCOPY]))


def _has_newlib(gcc: str, board: Board) -> bool:
    out = subprocess.run([gcc, *board.cflags, "-print-file-name=librdimon.a"], capture_output=True, text=True)
    return out.returncode == 0 and Path(out.stdout.strip()).is_file()


def board_source(name: str) -> bytes:
    return resources.files("tinymlops.variants.mcu").joinpath("board", name).read_bytes()


def firmware_key(bundle: bytes, toolchain: Toolchain, board: Board) -> str:
    digest = hashlib.sha256(bundle)
    for name in BOARD_FILES:
        digest.update(name.encode() + b"\0" + board_source(name))
    digest.update(" ".join(CFLAGS).encode() + toolchain.version().encode() + repr(board).encode())
    return digest.hexdigest()


def bundle_board(bundle: bytes) -> Board:
    """The board of a bundle's target (bundle.json); format-1 bundles without one are Cortex-M4."""
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            member = tar.extractfile("bundle.json")
            info = json.loads(member.read()) if member is not None else None
    except (tarfile.TarError, KeyError, ValueError) as exc:
        raise FirmwareError(f"not a microcontroller C bundle: no readable bundle.json ({exc})") from exc
    if not isinstance(info, dict):
        raise FirmwareError("not a microcontroller C bundle: bundle.json is not a JSON object")
    return board_for(str(info.get("target", "cortex-m4")))


def tvm_include_dirs() -> list[str]:
    """TVM's C headers, from the installed wheel (the bundle's kernels include them)."""
    import tvm
    import tvm_ffi

    return [str(Path(tvm.__file__).parent / "include"), str(Path(tvm_ffi.__file__).parent / "include")]


def _sizes(toolchain: Toolchain, elf: Path) -> tuple[int, int, int]:
    out = subprocess.run([toolchain.size, str(elf)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return text, data, bss


def _compile(toolchain: Toolchain, work: Path, includes: list[str], board: Board) -> None:
    cflags = [*board.cflags, *CFLAGS]
    flags = [*cflags, f"-DTIMER_BASE={board.timer_base:#x}u", f"-I{work}", *(f"-I{d}" for d in includes)]
    for source in ("lib0.c", "model.c", "startup.c", "harness.c", "footprint.c"):
        _run([toolchain.gcc, *flags, "-c", str(work / source), "-o", str(work / f"{source[:-2]}.o")], board)
    objects = [str(work / "lib0.o"), str(work / "model.o"), str(work / "startup.o")]
    (work / "memory.ld").write_text(board.memory_ld())
    script = [f"-L{work}", "-T", str(work / "mps2.ld")]
    _run([toolchain.gcc, *cflags, *script, *LINK, *objects, str(work / "footprint.o"), "--specs=nano.specs",
          "--specs=nosys.specs", "-lm", "-o", str(work / "footprint.elf")], board)
    _run([toolchain.gcc, *cflags, *SHA256_DEFINES, f"-I{work / 'sha256'}", "-c", str(work / "sha256" / "SHA256.c"),
          "-o", str(work / "sha256.o")], board)
    _run([toolchain.gcc, *cflags, *script, *LINK, *objects, str(work / "harness.o"), str(work / "sha256.o"),
          "--specs=nano.specs", "--specs=rdimon.specs", "-lm", "-o", str(work / "harness.elf")], board)
    _run([toolchain.objcopy, "-O", "binary", str(work / "harness.elf"), str(work / "harness.bin")], board)


def _run(cmd: list[str], board: Board) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise FirmwareError(f"{board.target} firmware build failed: {Path(cmd[0]).name}: "
                            f"{done.stderr.strip()[-600:]}")


def _extract(bundle: bytes, into: Path) -> None:
    """Unpack a bundle: only regular files and directories, only under `into`. Python 3.11.4+ has tarfile's
    "data" filter for that; Debian 12's 3.11.2 does not, so the same rule is checked here first."""
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
            return
        root = into.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise FirmwareError(f"bundle member {member.name!r}: not a file under the bundle's directory")
        tar.extractall(into)  # noqa: S202 - every member was checked above


def build_firmware(bundle: bytes, cache_dir: Path) -> Firmware:
    """The firmware of `bundle` (a `tvm-cortex-m*` tar) for its target's board, built once per key under
    `cache_dir`."""
    board = bundle_board(bundle)
    toolchain = find_toolchain(board)
    key = firmware_key(bundle, toolchain, board)
    home = cache_dir / key[:2] / key
    summary = home / "firmware.json"
    cached = summary.is_file()
    if not cached:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tinymlops-fw-", dir=cache_dir) as tmp:
            work = Path(tmp)
            _extract(bundle, work)
            (work / "sha256").mkdir()
            for name in BOARD_FILES:
                (work / name).write_bytes(board_source(name))
            # A TVM bundle's kernels include TVM's C headers; emx-onnx-cgen's C includes only libc's.
            tvm_headers = '#include "tvm/' in (work / "model.c").read_text()
            _compile(toolchain, work, tvm_include_dirs() if tvm_headers else [], board)
            text, data, bss = _sizes(toolchain, work / "footprint.elf")
            info = json.loads((work / "bundle.json").read_text())
            image = (work / "harness.bin").read_bytes()
            sizes = {"flash_bytes": text + data, "static_ram_bytes": data + bss, "bundle": info,
                     "image_sha256": hashlib.sha256(image).hexdigest(), "image_bytes": len(image)}
            (work / "firmware.json").write_text(json.dumps(sizes, indent=2, sort_keys=True))
            home.parent.mkdir(parents=True, exist_ok=True)
            keep = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=home.parent))
            for name in ("harness.elf", "footprint.elf", "firmware.json", "model.h", "bundle.json"):
                shutil.copy2(work / name, keep / name)
            try:
                keep.rename(home)  # atomic: a concurrent build of the same key leaves one complete copy
            except OSError:
                shutil.rmtree(keep, ignore_errors=True)
    sizes = json.loads(summary.read_text())
    return Firmware(harness=home / "harness.elf", flash_bytes=int(sizes["flash_bytes"]),
                    static_ram_bytes=int(sizes["static_ram_bytes"]), info=sizes["bundle"], cached=cached,
                    image_sha256=str(sizes["image_sha256"]), board=board)
