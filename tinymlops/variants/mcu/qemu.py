"""Running a harness firmware on its emulated MPS2 board in qemu and reading what it measured.

`-icount shift=0` makes qemu execute one instruction per nanosecond of
virtual time, deterministically; the harness reads the board's CMSDK timer
around each `model_run`, so a tick is `Board.instructions_per_tick`
instructions (40 at the AN386's 25 MHz; the counts are exact to that step).
Samples go in and outputs come out through semihosting files in a scratch
directory.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import FirmwareError, IntegrityError
from tinymlops.variants.mcu.boards import BOARDS, Board

IMAGE_REFUSED = 3  # harness.c: the image's SHA-256 is not the one it was flashed with
STACK_OUTGROWN = 99  # harness.c: the run used all the stack the harness watches (1 MB)
SECONDS_PER_SAMPLE = 2.0  # generous: ResNet-8 runs ~0.5 s of host time per inference in qemu


@dataclass(frozen=True)
class Run:
    outputs: NDArray[np.float32]  # one row per sample, flattened
    instructions: list[int]  # per sample
    stack_bytes: int  # the deepest any sample's model_run went


def parse_report(stdout: str) -> tuple[list[int], list[int], list[int]]:
    """Statuses, timer ticks and stack bytes of the harness's `run` lines (pure)."""
    statuses, ticks, stacks = [], [], []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "run":
            statuses.append(int(parts[1]))
            ticks.append(int(parts[2]))
            stacks.append(int(parts[3]))
    return statuses, ticks, stacks


def run_firmware(qemu: str, elf: Path, samples: NDArray[np.generic], *, input_dtype: str, output_dtype: str,
                 output_size: int, image_sha256: str, board: Board = BOARDS["cortex-m4"]) -> Run:
    """Run `elf` on each of `samples` (batch first); FirmwareError names what went wrong.

    The firmware first checks that its image hashes to `image_sha256` (hex) and refuses to run
    otherwise: IntegrityError.
    """
    with tempfile.TemporaryDirectory(prefix="tinymlops-qemu-") as tmp:
        work = Path(tmp)
        (work / "image.sha256").write_bytes(bytes.fromhex(image_sha256))
        np.ascontiguousarray(samples, dtype=input_dtype).tofile(work / "input.bin")
        timeout = 10.0 + SECONDS_PER_SAMPLE * len(samples)
        try:
            # qemu runs in `work`, so a relative path (a demo under ./.tinymlops) must be made absolute first.
            done = subprocess.run([qemu, *board.qemu_args, "-kernel", str(elf.resolve())], cwd=work,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise FirmwareError(f"{elf.name}: qemu did not finish {len(samples)} inference(s) "
                                f"in {timeout:.0f} s") from exc
        statuses, ticks, stacks = parse_report(done.stdout)
        if done.returncode == IMAGE_REFUSED or "refused image" in done.stdout:
            said = [line for line in done.stdout.splitlines() if line.startswith("refused image")]
            refusal = said[0] if said else "refused image (status 3: its SHA-256 is not the flashed one)"
            raise IntegrityError(f"{elf.name}: the firmware {refusal} (expected {image_sha256[:12]}…); nothing ran")
        if done.returncode != 0:
            raise FirmwareError(f"{elf.name}: firmware stopped with status {done.returncode} after "
                                f"{len(statuses)} of {len(samples)} inference(s) (70: a fault) "
                                f"{(done.stdout + done.stderr).strip()[-300:]}")
        failed = [s for s in statuses if s != 0]
        if STACK_OUTGROWN in failed:
            raise FirmwareError(f"{elf.name}: model_run used more than the 1 MB of stack the harness watches")
        if failed or len(statuses) != len(samples):
            raise FirmwareError(f"{elf.name}: model_run returned {failed[0] if failed else 'nothing'} "
                                f"({len(statuses)} of {len(samples)} inference(s) reported)")
        outputs = np.fromfile(work / "output.bin", dtype=output_dtype).reshape(len(samples), output_size)
    return Run(outputs=outputs, instructions=[t * board.instructions_per_tick for t in ticks], stack_bytes=max(stacks))
