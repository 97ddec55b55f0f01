"""A microcontroller variant scored on the emulated board: its firmware's own outputs and figures.

The factory evaluates a `tvm-cortex-m*` bundle like any variant (agreement or
accuracy against the base on the held-out data, the golden health-check
samples), but every output comes from the firmware running in qemu, so the
menu's figures are the microcontroller's: flash and RAM from the ELF and the
stack high-water mark, instructions per inference from the board's timer,
and a latency *estimated* from them at a stated clock (the board's, `boards.py`).  Outputs further from
onnxruntime's than `MAX_ABS_DIFF` make the variant refused, naming the
difference.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.variants.mcu import qemu
from tinymlops.variants.mcu.firmware import Firmware, build_firmware, find_toolchain

# Evaluation runs every sample through qemu: cap it so a firmware measurement stays within a minute.
MAX_EVAL_SAMPLES = 100
# fp32 kernels in another order than onnxruntime's: beyond this the firmware computes something else.
MAX_ABS_DIFF = 1e-4
# Integer kernels that round one requantization differently (a tie, a float scale) land one step apart,
# and one step in an earlier layer can move the output by another.
MAX_INT8_STEPS = 2


def firmware_cache() -> Path:
    """Where firmware is cached when the build has no cache directory of its own."""
    if os.environ.get("TINYMLOPS_FIRMWARE_CACHE"):
        return Path(os.environ["TINYMLOPS_FIRMWARE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinymlops" / "firmware"


@dataclass
class FirmwareRunner:
    """A built firmware behind evaluate.Runner's interface; records every run's figures."""

    firmware: Firmware
    qemu: str
    input_name: str
    output_name: str
    instructions: list[int] = field(default_factory=list)
    inputs: list[NDArray[np.float32]] = field(default_factory=list)  # every run's samples and outputs, so
    outputs: list[NDArray[np.float32]] = field(default_factory=list)  # they can be held against a reference
    stack_bytes: int = 0
    seconds: float = 0.0

    fixed_batch = True

    def many(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        started = time.perf_counter()
        info = self.firmware.info
        run = qemu.run_firmware(self.qemu, self.firmware.harness, x, input_dtype=info["input"]["dtype"],
                                output_dtype=info["output"]["dtype"],
                                output_size=int(np.prod(info["output"]["shape"])),
                                image_sha256=self.firmware.image_sha256, board=self.firmware.board)
        self.seconds += time.perf_counter() - started
        self.instructions += run.instructions
        self.stack_bytes = max(self.stack_bytes, run.stack_bytes)
        out: NDArray[np.float32] = run.outputs.reshape(len(x), *info["output"]["shape"][1:])
        self.inputs.append(x)
        self.outputs.append(out)
        return out

    def max_abs_diff(self, reference: Any) -> float:
        """The largest distance of every output this firmware gave from `reference` (a Runner) on the same inputs."""
        x, out = np.concatenate(self.inputs), np.concatenate(self.outputs)
        return float(np.max(np.abs(out - reference.many(x).reshape(out.shape))))

    def one(self, sample: NDArray[np.float32]) -> NDArray[np.float32]:
        """A sample this firmware already ran gives the output it gave: the image and its instructions are the
        same, so the health-check samples (the first evaluation samples) do not boot qemu again."""
        flat = np.ascontiguousarray(sample, dtype=np.float32).reshape(1, -1)
        for x, out in zip(self.inputs, self.outputs, strict=True):
            seen = np.flatnonzero((x.reshape(len(x), -1) == flat).all(axis=1))
            if seen.size:
                recorded: NDArray[np.float32] = out[seen[0]]
                return recorded
        first: NDArray[np.float32] = self.many(sample[None])[0]
        return first

    def latency_ms(self, x: NDArray[np.float32]) -> tuple[float, float]:
        raise NotImplementedError("a microcontroller's latency is estimated from instructions, not timed here")

    def figures(self) -> dict[str, Any]:
        """The measured figures for the menu (after at least one run)."""
        counts = np.asarray(self.instructions)
        ram = self.firmware.static_ram_bytes + self.stack_bytes
        board = self.firmware.board
        return {
            "flash_bytes": self.firmware.flash_bytes,
            "ram_bytes": ram,
            "static_ram_bytes": self.firmware.static_ram_bytes,
            "stack_bytes": self.stack_bytes,
            "instructions": int(np.median(counts)),
            "instructions_max": int(counts.max()),
            "latency_ms_estimate": round(float(np.median(counts)) / (board.clock_mhz * 1e3), 3),
            "clock_mhz": board.clock_mhz,
            "latency_note": board.latency_note,
            "board": board.description,
            "arena_bytes": self.firmware.info["arena_bytes"],
            "workspace_bytes": self.firmware.info["workspace_bytes"],
            "kernel_calls": self.firmware.info["kernel_calls"],
        }


def load_runner(bundle: bytes, *, input_name: str, output_name: str, cache_dir: Path | None = None) -> FirmwareRunner:
    started = time.perf_counter()
    firmware = build_firmware(bundle, cache_dir or firmware_cache())
    toolchain = find_toolchain(firmware.board)
    runner = FirmwareRunner(firmware, toolchain.qemu, input_name, output_name)
    runner.seconds = time.perf_counter() - started
    return runner


def evaluation_subset(dataset: Any) -> Any:
    """At most MAX_EVAL_SAMPLES of the held-out data (the same subset for the base and the firmware)."""
    if len(dataset.evaluation) <= MAX_EVAL_SAMPLES:
        return dataset
    labels = None if dataset.labels is None else dataset.labels[:MAX_EVAL_SAMPLES]
    return replace(dataset, evaluation=dataset.evaluation[:MAX_EVAL_SAMPLES], labels=labels)
