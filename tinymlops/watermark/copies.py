"""A licensee's copy around the fine-tune: the embed's parameters, the data checks, what is measured on the
written copy, and the copy the registry already holds (an embed asked again returns it, trained nowhere).

Training a copy again on another machine gives other weights (BLAS kernels differ), and the registry refuses a
second copy for the same licensee and base model, so a repeated embed with the same key, seed and parameters
returns the kept copy; the same licensee and base model with anything else is a conflict, named before training.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import InvalidDataError, RegistryConflictError
from tinymlops.runners import Runner
from tinymlops.store import sha256_bytes
from tinymlops.watermark import marks
from tinymlops.watermark.keys import payload_bits
from tinymlops.watermark.registry import LicenseeRecord, WatermarkRegistry
from tinymlops.watermark.weights import load_onnx, weight_layers


@dataclass(frozen=True)
class Parameters:
    """The embed's knobs, recorded in the registry (and their names in the lineage)."""

    layer: int = 0  # which weight layer carries the code (graph order)
    triggers: int = 100
    epochs: int = 20
    max_epochs: int = 200
    learning_rate: float = 1e-3
    batch_size: int = 64
    strength: float = 1.0  # weight of the code's loss against the task's
    sharpness: float = 2.0  # logits are sharpness * projection: bits are pushed to |projection| >= ~2 / sharpness
    margin: float = 1.0  # training goes on until every bit's projection is this far on its side of 0
    holdout: float = 0.2  # share of the data kept out of training to measure accuracy
    distillation: float = 1.0  # weight of matching the base model's outputs (KL), which keeps the copy's behaviour


@dataclass(frozen=True)
class Embedded:
    model: bytes
    record: LicenseeRecord
    metrics: dict[str, Any] = field(default_factory=dict)


def check_data(x: Any, y: Any, input_size: int) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2 or len(x) < 2:
        raise InvalidDataError("watermark data: x must be float32 with batch first and at least 2 samples")
    if int(np.prod(x.shape[1:])) != input_size:
        raise InvalidDataError(f"watermark data: x has {int(np.prod(x.shape[1:]))} values per sample, the model's "
                               f"first weight layer takes {input_size}")
    if y is not None and (not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (len(x),)):
        raise InvalidDataError("watermark data: y must be int64 with one label per sample of x")


def split(count: int, share: float, seed: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    order = np.random.default_rng(seed).permutation(count)
    held = int(round(count * share)) if count >= 10 else 0
    return order[held:], order[:held]


def accuracy(model: bytes, x: NDArray[np.float32], labels: NDArray[np.int64]) -> float | None:
    if len(x) == 0:  # fewer than 10 samples: nothing is held out (None, not NaN, which JSON cannot carry)
        return None
    return float(np.mean(Runner.load(model).many(x).reshape(len(x), -1).argmax(axis=1) == labels))


def measure(model: bytes, watermarked: bytes, mark: marks.Mark, layer: int, x_held: NDArray[np.float32],
            y_held: NDArray[np.int64], *, labelled: bool) -> dict[str, Any]:
    """Held-out accuracy before and after, and the watermark read back from the written bytes."""
    read = weight_layers(load_onnx(watermarked, what="watermarked model"))[layer].matrix
    errors = marks.bit_errors(mark.code, marks.projections(mark.projection, read))
    return {"accuracy_before": accuracy(model, x_held, y_held),
            "accuracy_after": accuracy(watermarked, x_held, y_held), "holdout_samples": len(x_held),
            "labels": "given" if labelled else "base model predictions",
            "bit_error_rate": errors / marks.CODE_BITS,
            "trigger_accuracy": accuracy(watermarked, mark.trigger_x, mark.trigger_y)}


def recorded_copy(model: bytes, x: NDArray[np.float32], y: NDArray[np.int64] | None, *, key: bytes, licensee: str,
                  registry: WatermarkRegistry, seed: int, params: Parameters) -> Embedded | None:
    """The copy the registry already holds for this licensee and base model, when it was made with this key,
    seed and these parameters; a record made otherwise is a conflict, found before any training."""
    record = registry.find(licensee, sha256_bytes(model))
    if record is None:
        return None
    started, cpu_started = time.perf_counter(), time.process_time()
    asked = {**asdict(params), "trigger_seed": seed, "payload": marks.payload_hex(payload_bits(key, licensee,
                                                                                               marks.PAYLOAD_BITS))}
    recorded = {**record.parameters, "trigger_seed": record.trigger_seed, "payload": record.payload}
    differing = sorted(name for name, value in asked.items() if recorded.get(name) != value)
    if differing:
        what = ", ".join("key" if name == "payload" else name for name in differing)
        raise RegistryConflictError(f"licensee {licensee!r} already has a watermark in base model "
                                    f"{record.base_sha256[:12]}… made with another {what}; the registry never "
                                    "replaces a record: name the new copy another licensee id")
    copy = registry.watermarked_model(record)
    if copy is None:
        return None  # an older registry without copies: train again (add() refuses it if the bytes differ)
    p = record.parameters
    mark = marks.derive_mark(key, licensee, seed, layer_size=int(np.prod(p["layer_shape"])), triggers=params.triggers,
                             classes=int(p["classes"]), low=float(p["input_low"]), high=float(p["input_high"]),
                             input_shape=tuple(int(d) for d in p["input_shape"]))
    check_data(x, y, int(np.prod(x.shape[1:])))
    labels = y if y is not None else Runner.load(model).many(x).reshape(len(x), -1).argmax(1).astype(np.int64)
    _, held = split(len(x), params.holdout, seed)
    metrics = measure(model, copy, mark, params.layer, x[held], labels[held], labelled=y is not None)
    metrics.update(epochs=0, reused=True, seconds=time.perf_counter() - started,
                   cpu_seconds=time.process_time() - cpu_started)
    return Embedded(copy, record, metrics)
