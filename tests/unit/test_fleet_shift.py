"""Input shifts the simulator can put on a device class's workload (tinymlops.fleet.shift)."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlops.commands.demo import SHIFTS as CLI_SHIFTS
from tinymlops.drift.features import IMAGE_FEATURES, extract
from tinymlops.fleet.shift import BRIGHTER_BY, SHIFTS, shift_inputs


@pytest.fixture
def digits() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 17, size=(50, 64)) / 16.0).astype(np.float32)


def test_the_cli_offers_every_shift() -> None:
    assert CLI_SHIFTS == SHIFTS


def test_brighter_raises_brightness_and_stays_in_range(digits: np.ndarray) -> None:
    shifted = shift_inputs("brighter", digits)
    brightness = IMAGE_FEATURES.index("brightness")
    assert shifted.dtype == np.float32 and shifted.shape == digits.shape
    assert shifted.min() >= 0.0 and shifted.max() <= 1.0
    assert np.all(extract(shifted)[:, brightness] > extract(digits)[:, brightness])
    assert np.allclose(shifted, np.minimum(digits + BRIGHTER_BY, 1.0))


def test_noisier_is_seeded_and_raises_edges(digits: np.ndarray) -> None:
    a, b = shift_inputs("noisier", digits, seed=1), shift_inputs("noisier", digits, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, shift_inputs("noisier", digits, seed=2))
    assert a.min() >= 0.0 and a.max() <= 1.0
    edges = IMAGE_FEATURES.index("edges")
    blank = np.zeros((5, 64), dtype=np.float32)
    assert np.all(extract(shift_inputs("noisier", blank))[:, edges] > 0)


def test_rotated_turns_square_images_and_moves_the_quadrants(digits: np.ndarray) -> None:
    image = np.zeros((1, 64), dtype=np.float32)
    image[0, 0:4] = 1.0  # the top-left quadrant's top row
    turned = shift_inputs("rotated", image)
    region = [IMAGE_FEATURES.index(f"region[{i}]") for i in range(4)]
    assert extract(image)[0, region[0]] > 0 and extract(turned)[0, region[0]] == 0
    assert extract(turned)[0, region[2]] > 0  # a quarter turn counter-clockwise: top-left goes bottom-left
    assert np.array_equal(shift_inputs("rotated", shift_inputs("rotated", turned)), np.rot90(
        image.reshape(1, 8, 8), 3, axes=(1, 2)).reshape(1, 64))
    with pytest.raises(ValueError, match="square"):
        shift_inputs("rotated", np.zeros((2, 10), dtype=np.float32))


def test_none_is_an_unchanged_copy_and_unknown_kinds_are_named(digits: np.ndarray) -> None:
    same = shift_inputs("none", digits)
    assert np.array_equal(same, digits) and same is not digits
    with pytest.raises(ValueError, match="'darker' is not one of"):
        shift_inputs("darker", digits)
