"""Undo a permutation and a positive rescaling of hidden units before the watermark is read.

Permuting the hidden units of a ReLU network (columns of one layer, rows of the next) or scaling a unit's
incoming weights by c > 0 and its outgoing ones by 1/c leaves every output unchanged, and scrambles a naive
read-out of the weights.  Both leave the direction of each unit's incoming and outgoing weight vectors alone,
so units are matched to the base model's by the cosine similarity of those vectors (an optimal assignment:
the Hungarian method, scipy's linear_sum_assignment), and each matched column is scaled back onto the base's
column by least squares.  The base model is the reference, never a watermarked copy: the alignment then
depends on nothing derived from the key, which keeps the chance-match probabilities exact (`stats`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from tinymlops.extras import require_extra

TINY = 1e-12


def _unit_directions(matrix: NDArray[np.float32], axis: int) -> NDArray[np.float64]:
    vectors = matrix.astype(np.float64)
    norms = np.linalg.norm(vectors, axis=axis, keepdims=True)
    directions: NDArray[np.float64] = vectors / np.maximum(norms, TINY)
    return directions


def matching(base_in: NDArray[np.float32], suspect_in: NDArray[np.float32],
             base_out: NDArray[np.float32] | None = None,
             suspect_out: NDArray[np.float32] | None = None) -> NDArray[np.intp]:
    """For each base unit j, the suspect unit that is it: `order[j]`.

    `*_in` are [fan_in, units] (a unit is a column), `*_out` the next layer's [units, fan_out] (a unit is a row),
    or None when the next layer does not take these units one row each (a convolution, or no next layer)."""
    require_extra("protection", "watermark verification", "scipy")
    from scipy.optimize import linear_sum_assignment

    similarity = _unit_directions(base_in, 0).T @ _unit_directions(suspect_in, 0)
    if base_out is not None and suspect_out is not None:
        similarity += _unit_directions(base_out, 1) @ _unit_directions(suspect_out, 1).T
    rows, columns = linear_sum_assignment(similarity, maximize=True)
    order = np.empty(base_in.shape[1], dtype=np.intp)
    order[rows] = columns
    return order


def realigned(base_in: NDArray[np.float32], suspect_in: NDArray[np.float32],
              base_out: NDArray[np.float32] | None = None,
              suspect_out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """The suspect's [fan_in, units] weights with its units put in the base's order and at the base's scale."""
    if base_in.shape != suspect_in.shape:
        raise ValueError(f"cannot realign {suspect_in.shape} weights onto {base_in.shape}")
    ordered = suspect_in[:, matching(base_in, suspect_in, base_out, suspect_out)].astype(np.float64)
    reference = base_in.astype(np.float64)
    energy = (ordered * ordered).sum(axis=0)
    scale = (ordered * reference).sum(axis=0) / np.maximum(energy, TINY)
    # A unit the thief zeroed (energy 0) or one that points away from its match has no meaningful scale: keep it.
    scale = np.where((energy > TINY) & (scale > 0), scale, 1.0)
    return (ordered * scale).astype(np.float32)
