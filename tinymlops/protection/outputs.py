"""What an application gets back from an inference, under the fleet's output policy (pure numpy).

- `full`: the model's output as it is.
- `top1`: a one-hot vector of the output's shape (1 at the top class, 0 elsewhere).  One-hot rather than
  the class index, so an application written for the full output keeps working (same shape, same argmax)
  while it learns nothing but the label.
- `rounded`: each value rounded to `decimals` decimals.
- `perturbed`: a reverse-sigmoid perturbation (Lee et al. 2019, "Defending against NN model stealing attacks
  using deceptive perturbations") of probability outputs: p' ∝ p - β(σ(γ σ⁻¹(p)) - 1/2), renormalised, which
  poisons the gradients a thief would fit while keeping the label.  The top-1 class is then enforced on every
  output, not most: if the perturbation moved the argmax (or made a tie), the original top class is set to
  just above the new maximum (not renormalised again: that could undo it).

Every policy keeps the top-1 class of its input (`np.argmax`, first index on ties) except where rounding
itself makes a tie, which `rounded` breaks in favour of the original top class in the same way.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

MODES = ("full", "top1", "rounded", "perturbed")
BETA, GAMMA = 0.4, 0.5  # reverse-sigmoid strength and slope (Lee et al. use beta in 0.1..1, gamma in 0.1..1)
EPS = 1e-6


def apply(mode: str, out: NDArray[np.float32], *, decimals: int = 2) -> NDArray[np.float32]:
    """`out` (one inference's output, any shape) as the policy `mode` lets the application see it."""
    if mode == "full":
        return out
    flat = np.asarray(out, dtype=np.float32).reshape(-1)
    top = int(np.argmax(flat))
    if mode == "top1":
        shown = np.zeros_like(flat)
        shown[top] = 1.0
    elif mode == "rounded":
        shown = _keep_top(np.round(flat, decimals).astype(np.float32), top, step=10.0 ** -decimals, decimals=decimals)
    elif mode == "perturbed":
        shown = _keep_top(reverse_sigmoid(flat), top, step=EPS)
    else:
        raise ValueError(f"output policy {mode!r} is not one of {', '.join(MODES)}")
    result: NDArray[np.float32] = shown.reshape(np.shape(out))
    return result


def reverse_sigmoid(p: NDArray[np.float32], beta: float = BETA, gamma: float = GAMMA) -> NDArray[np.float32]:
    """Lee et al.'s reverse sigmoid on probabilities `p`, renormalised to sum to 1 (not yet top-1 safe)."""
    q = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    logit = np.log(q / (1 - q))
    perturbed = q - beta * (1 / (1 + np.exp(-gamma * logit)) - 0.5)
    perturbed = np.clip(perturbed, 0.0, None)
    total = perturbed.sum()
    if total <= 0:
        perturbed, total = np.ones_like(perturbed), float(len(perturbed))
    result: NDArray[np.float32] = (perturbed / total).astype(np.float32)
    return result


def _keep_top(shown: NDArray[np.float32], top: int, *, step: float, decimals: int | None = None) -> NDArray[np.float32]:
    """`shown` with `top` strictly the largest (so argmax, first index on ties, is `top`)."""
    others = np.delete(shown, top)
    if not len(others) or shown[top] > others.max():
        return shown
    fixed = shown.astype(np.float64)
    fixed[top] = float(others.max()) + step
    if decimals is not None:
        fixed[top] = round(fixed[top], decimals)
    result = fixed.astype(np.float32)
    if not result[top] > np.delete(result, top).max():  # float32 could not tell them apart: make room
        result[top] = np.nextafter(np.delete(result, top).max(), np.float32(np.inf))
    return result
