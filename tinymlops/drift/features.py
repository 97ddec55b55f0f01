"""What the drift histograms describe: a few numbers per input, computed the same way everywhere.

One function, `extract`, turns a batch of model inputs into a feature matrix; the
factory bins the build's data with it and the device counts its own inputs with it,
so a bin edge means the same thing on both sides.

Which features:

- A small input (at most MAX_VALUE_FEATURES values per sample, e.g. tabular data):
  one feature per value, named `x[i]` (index into the flattened sample).
- Anything larger is treated as an image (or image-like signal) and summarised by
  IMAGE_FEATURES, computed on a 2-D grid (the last two axes, averaged over any
  channels; a flat sample of square length n is read as a sqrt(n) x sqrt(n) image,
  as the 8x8 digits are; any other flat sample as one row):

  `brightness` (mean value), `contrast` (standard deviation), `region[0..3]` (the
  mean of each quadrant, row-major; quarters of the row for a one-row grid) and
  `edges` (mean absolute difference between neighbouring values, across and down).

Why summaries and not one histogram per pixel: the digits' 64 pixels include many
that are always blank at the border (a histogram of a constant says nothing), the
differential-privacy noise grows with the number of histograms a device releases
(one inference moves one bin in each, `privacy.py`), every histogram adds bytes to
each report, and every feature is one more test the fleet's drift scoring must
correct for.  Seven summaries cover the shifts that matter for a camera or a
sensor: brighter or darker inputs (brightness), washed-out or noisy ones (contrast,
edges), and moved or rotated content (the quadrant means).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

MAX_VALUE_FEATURES = 16
IMAGE_FEATURES = ("brightness", "contrast", "region[0]", "region[1]", "region[2]", "region[3]", "edges")


def feature_names(sample_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The features `extract` computes for samples of `sample_shape` (the input shape without the batch)."""
    size = math.prod(sample_shape)
    if size <= MAX_VALUE_FEATURES:
        return tuple(f"x[{i}]" for i in range(size))
    return IMAGE_FEATURES


def extract(x: NDArray[np.floating]) -> NDArray[np.float64]:
    """The feature matrix (samples x features, float64) of a batch `x` (batch first)."""
    batch = np.asarray(x, dtype=np.float64)
    if batch.ndim < 2:
        raise ValueError(f"extract needs a batch (samples first), got shape {batch.shape}")
    flat = batch.reshape(len(batch), -1)
    if flat.shape[1] <= MAX_VALUE_FEATURES:
        return flat
    grid = _grid(batch)
    regions = _regions(grid)
    return np.column_stack([flat.mean(axis=1), flat.std(axis=1), *regions, _edges(grid)])


def _grid(batch: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each sample as one 2-D grid (samples x rows x columns)."""
    n = len(batch)
    if batch.ndim >= 3:
        height, width = batch.shape[-2:]
        channels_averaged: NDArray[np.float64] = batch.reshape(n, -1, height, width).mean(axis=1)
        return channels_averaged
    size = batch.shape[1]
    side = math.isqrt(size)
    shape = (n, side, side) if side * side == size else (n, 1, size)
    return batch.reshape(shape)


def _regions(grid: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    n, height, width = grid.shape
    if height >= 2 and width >= 2:
        top, bottom = grid[:, : height // 2], grid[:, height // 2:]
        return [part.reshape(n, -1).mean(axis=1)
                for half in (top, bottom) for part in (half[:, :, : width // 2], half[:, :, width // 2:])]
    return [part.mean(axis=1) for part in np.array_split(grid.reshape(n, -1), 4, axis=1)]


def _edges(grid: NDArray[np.float64]) -> NDArray[np.float64]:
    n = len(grid)
    across = np.abs(np.diff(grid, axis=2)).reshape(n, -1)
    down = np.abs(np.diff(grid, axis=1)).reshape(n, -1)
    both = np.concatenate([across, down], axis=1)
    return both.mean(axis=1) if both.shape[1] else np.zeros(n)
