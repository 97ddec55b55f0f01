"""When a device gets a new licence token, and for how many inferences (pure).

A licence spec grants each device `per_period` inferences per period (a UTC day or
month), handed out in tokens of at most `per_token`, so an offline device carries a
bounded allowance.  A device gets its next token (a refill: epoch + 1) once its
reconciled usage has used up the current one, never past the period's allowance.
Usage counts only what reconciling accepted, so a device that hides checkpoints
gets no refill, and one that re-used counters has them counted against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinymlops.errors import SpecError
from tinymlops.licensing.statement import PERIODS, period_of


@dataclass(frozen=True)
class LicenseSpec:
    licensee: str
    per_period: int
    per_token: int
    period: str = "month"
    validity_s: float = 7 * 86400.0  # how long a token stays valid offline

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise SpecError(f"period: {self.period!r} is not one of {', '.join(PERIODS)}")
        if not 1 <= self.per_token <= self.per_period:
            raise SpecError(f"perToken: {self.per_token} must be within 1..perPeriod ({self.per_period})")
        if self.validity_s <= 0:
            raise SpecError(f"validity: {self.validity_s} s must be positive")


@dataclass(frozen=True)
class Issued:
    """What the issuer last gave a device: its token's id, quota, epoch and period."""

    token_id: str
    quota: int
    epoch: int
    period: str
    period_used_before: int  # inferences of this period counted before this token


def next_quota(spec: LicenseSpec, issued: Issued | None, used_under_token: int, now: float) -> int | None:
    """The quota of the device's next token, or None when it needs none now.

    `used_under_token`: the reconciled usage counted under `issued.token_id`."""
    if issued is None or issued.period != period_of(now, spec.period):
        return spec.per_token  # a new device, or a new period: a fresh allowance
    if used_under_token < issued.quota:
        return None
    left = spec.per_period - issued.period_used_before - used_under_token
    return min(spec.per_token, left) if left > 0 else None


def period_used(issued: Issued | None, used_under_token: int, now: float, spec: LicenseSpec) -> int:
    """This period's usage before the next token (what `Issued.period_used_before` of that token is)."""
    if issued is None or issued.period != period_of(now, spec.period):
        return 0
    return issued.period_used_before + used_under_token
