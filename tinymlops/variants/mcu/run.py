"""`tinymlops mcu run`: a microcontroller variant of a signed variant directory, run on the emulated board.

The menu's signature and the bundle's digest are checked first (nothing off the
device is trusted before that); the firmware is built once per bundle and cached
(`firmware.py`), then every input runs through it in qemu.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import IntegrityError, InvalidDataError, SpecError
from tinymlops.layout import BLOBS_DIR
from tinymlops.menu import load_verified_menu, read_menu_files, verify_blob
from tinymlops.variants.mcu.measure import load_runner


@dataclass(frozen=True)
class McuRun:
    variant: str
    outputs: NDArray[np.float32]
    figures: dict[str, Any]
    cached: bool


def pick_variant(menu: dict[str, Any], variant_id: str) -> dict[str, Any]:
    """The menu's entry for `variant_id`, which must be a microcontroller bundle (pure)."""
    entry = next((v for v in menu.get("variants", []) if v.get("id") == variant_id), None)
    if entry is None:
        known = ", ".join(str(v.get("id")) for v in menu.get("variants", [])) or "none"
        not_built = {str(v.get("id")): v.get("reason") for v in menu.get("not_built", [])}
        why = f" (not built: {not_built[variant_id]})" if variant_id in not_built else ""
        raise SpecError(f"--variant: {variant_id!r} is not in the menu{why} (variants: {known})")
    if entry.get("format") != "c-source":
        raise SpecError(f"--variant: {variant_id} is {entry.get('format')}, not a microcontroller bundle "
                        "(c-source, e.g. tvm-cortex-m4, tvm-cortex-m7, tvm-cortex-m33)")
    if "encryption" in entry:
        raise SpecError(f"--variant: {variant_id} is published encrypted; only its devices can open it")
    return dict(entry)


def samples_for(x: NDArray[np.float32], input_shape: list[int]) -> NDArray[np.float32]:
    """`x` (batch first) as one model input per row; InvalidDataError names both shapes when it cannot be."""
    per_sample = int(np.prod(input_shape))
    if x.ndim < 1 or len(x) == 0 or x[0].size != per_sample:
        raise InvalidDataError(f"--input: x has shape {x.shape}; the firmware takes samples of "
                               f"{'x'.join(map(str, input_shape))} ({per_sample} values)")
    return np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), *input_shape)


def run_variant(directory: Path, variant_id: str, x: NDArray[np.float32], public_key: Any,
                cache_dir: Path | None = None) -> McuRun:
    menu = load_verified_menu(*read_menu_files(directory), public_key)
    entry = pick_variant(menu, variant_id)
    path = directory / BLOBS_DIR / str(entry["sha256"])
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"variant {variant_id}: {path} cannot be read ({exc.strerror or exc})") from exc
    verify_blob(blob, entry)
    output_name = str(entry.get("health_check", {}).get("output_name", "output"))
    input_name = str(entry.get("health_check", {}).get("input_name", "input"))
    runner = load_runner(blob, input_name=input_name, output_name=output_name, cache_dir=cache_dir)
    samples = samples_for(x, runner.firmware.info["input"]["shape"])
    outputs = runner.many(samples)
    return McuRun(variant=variant_id, outputs=outputs.reshape(len(samples), -1), figures=runner.figures(),
                  cached=runner.firmware.cached)
