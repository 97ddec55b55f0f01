"""The privacy a federated run spends: ε of its rounds of Gaussian noise on clipped client updates, by OpenDP.

Flower's DP wrappers clip every client's update to `clip_norm` (L2) and add Gaussian noise of standard deviation
`noise_multiplier * clip_norm` to their sum, so one client changes one round's sum by at most `clip_norm`: a
Gaussian mechanism with sensitivity 1 and scale `noise_multiplier` in units of the clipping norm.  The rounds
compose in zero-concentrated DP and are converted to (ε, δ) by OpenDP.  No amplification by client sampling is
claimed (Flower's own accountant takes the same `no-amplification` stance with fixed clipping), so the figure is
an upper bound for client-level privacy.
"""

from __future__ import annotations

import math

from tinymlops.errors import SpecError
from tinymlops.extras import missing_extra

DEFAULT_DELTA = 1e-5


def epsilon(noise_multiplier: float, rounds: int, delta: float = DEFAULT_DELTA) -> float:
    """ε after `rounds` noised aggregates at `delta`; infinity without noise."""
    if rounds < 0 or not 0 < delta < 1:
        raise SpecError(f"privacy: rounds must be >= 0 and delta in (0, 1), got {rounds} and {delta}")
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    try:
        import opendp.prelude as dp
    except ImportError as exc:
        raise missing_extra("privacy", "opendp", "the ε of a federated run") from exc
    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)
    one_round = dp.m.make_gaussian(*space, scale=float(noise_multiplier))
    rounds_composed = dp.c.make_composition([one_round] * rounds)
    approximate = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(rounds_composed), delta)
    spent, _ = approximate.map(1.0)  # type: ignore[no-untyped-call]
    return float(spent)
