"""How likely a model that carries no licensee's watermark would match it as well as the suspect does.

Both tests have an exact null distribution.  White-box: the projection matrix is key-derived random signs,
independent of any model not trained against it (the realignment uses the base model, not the key), so each
read-out bit of such a model is a fair coin, independent of the others; a tie (projection exactly 0) counts
as an error, which only makes the test more conservative.  Black-box: trigger labels are key-derived uniform
draws, so a model not trained on them predicts each with probability 1/classes, independently.  The p-value of
a test is the binomial tail at the observed count; a licensee is named only when its smallest p-value, times
the number of tests made across every licensee tried (Bonferroni), is at most `ALPHA`.
"""

from __future__ import annotations

from math import comb

ALPHA = 1e-6  # the bound on the probability of naming a licensee by chance


def at_most(successes: int, trials: int, probability: float) -> float:
    """P(Binomial(trials, probability) <= successes)."""
    if successes < 0:
        return 0.0
    if successes >= trials:
        return 1.0
    if probability == 0.5:  # exact in integers: no rounding for the white-box test's 127 coins
        return float(sum(comb(trials, k) for k in range(successes + 1)) / 2**trials)
    return min(1.0, sum(comb(trials, k) * probability**k * (1 - probability) ** (trials - k)
                        for k in range(successes + 1)))


def at_least(successes: int, trials: int, probability: float) -> float:
    """P(Binomial(trials, probability) >= successes), summed over the tail itself so that a tiny tail keeps
    its digits (1 - P(<= successes - 1) would round it to 0)."""
    return min(1.0, sum(comb(trials, k) * probability**k * (1 - probability) ** (trials - k)
                        for k in range(max(successes, 0), trials + 1)))


def bit_match_p_value(errors: int, bits: int) -> float:
    """The probability that fair coins agree with a code in at least `bits - errors` of `bits` positions."""
    return at_most(errors, bits, 0.5)


def trigger_p_value(hits: int, triggers: int, classes: int) -> float:
    """The probability that a model not trained on the trigger set predicts `hits` or more of its labels."""
    return at_least(hits, triggers, 1.0 / classes)


def corrected(p_value: float, tests: int) -> float:
    """The Bonferroni bound on a chance match somewhere among `tests` tests."""
    return min(1.0, p_value * max(tests, 1))
