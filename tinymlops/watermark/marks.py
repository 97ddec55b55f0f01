"""One licensee's watermark, recomputed from the owner's key: code bits, projection matrix and trigger set.

White-box (Uchida et al. 2017): the code is the licensee's 64-bit payload in BCH(127, 64); the embed teaches
the watermarked layer's weights w (flattened [fan_in, units]) that sign(X w) = code, X a key-derived matrix of
random signs, one row per code bit.  Black-box (Adi et al. 2018): trigger inputs are key-derived uniform noise
over the data's value range, far from any real input, each with a key-derived label the model learns to give.
Both are derived per licensee and trigger seed, so another licensee's model is, for this licensee's tests,
just a model that was never trained against them (`stats` relies on that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tinymlops.watermark import ecc
from tinymlops.watermark.keys import choices, payload_bits, signs, uniforms

CODE_BITS = ecc.N
PAYLOAD_BITS = ecc.K


@dataclass(frozen=True)
class Mark:
    payload: NDArray[np.uint8]
    code: NDArray[np.uint8]
    projection: NDArray[np.float32]  # [CODE_BITS, layer size]
    trigger_x: NDArray[np.float32]
    trigger_y: NDArray[np.int64]


def payload_hex(payload: NDArray[np.uint8]) -> str:
    return np.packbits(payload).tobytes().hex()


def derive_mark(key: bytes, licensee: str, trigger_seed: int, *, layer_size: int, triggers: int, classes: int,
                low: float, high: float, input_shape: tuple[int, ...]) -> Mark:
    payload = payload_bits(key, licensee, PAYLOAD_BITS)
    context = (licensee, trigger_seed)
    size = int(np.prod(input_shape))
    noise = uniforms(key, triggers * size, "trigger-inputs", *context).reshape(triggers, *input_shape)
    return Mark(
        payload=payload,
        code=ecc.encode(payload),
        projection=signs(key, (CODE_BITS, layer_size), "projection", *context),
        trigger_x=(low + (high - low) * noise).astype(np.float32),
        trigger_y=choices(key, triggers, classes, "trigger-labels", *context),
    )


def projections(projection: NDArray[np.float32], matrix: NDArray[np.float32]) -> NDArray[np.float64]:
    """X w for the layer's [fan_in, units] weights, in units of |w| (so a rescaled layer reads the same)."""
    flat = matrix.reshape(-1).astype(np.float64)
    return projection.astype(np.float64) @ flat / max(float(np.linalg.norm(flat)), 1e-12)


def bit_errors(code: NDArray[np.uint8], values: NDArray[np.float64]) -> int:
    """How many read-out bits disagree with `code`; a projection of exactly 0 is no bit and counts as an error."""
    return int(np.sum(np.where(code == 1, values <= 0, values >= 0)))


def read_bits(values: NDArray[np.float64]) -> NDArray[np.uint8]:
    return (values > 0).astype(np.uint8)
