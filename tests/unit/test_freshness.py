"""When a signed document stops being current, with a tolerance for device clocks (tinymlops/freshness.py)."""

from __future__ import annotations

import pytest

from tinymlops.errors import IntegrityError
from tinymlops.freshness import (
    CLOCK_SKEW_S,
    expired,
    expires_after,
    expires_option,
    expiry,
    parse_duration,
    stale_seconds,
)
from tinymlops.timestamps import seconds

T = 1_800_000_000.0


def test_expires_is_rfc3339_and_reads_back() -> None:
    value = expires_after(T, 3600)
    assert value.endswith("Z") and expiry({"expires": value}, what="plan.json") == T + 3600
    assert expiry({}, what="plan.json") is None  # written before documents expired: no claim either way


@pytest.mark.parametrize("value", ["tomorrow", "2026-12-01T09:30:12", 17])
def test_a_malformed_expiry_is_refused_by_name(value: object) -> None:
    with pytest.raises(IntegrityError, match=r"^plan\.json: expires .* is not an RFC 3339 time"):
        expiry({"expires": value}, what="plan.json")


def test_a_document_expires_only_past_the_clock_skew_tolerance() -> None:
    assert not expired(T, T) and not expired(T, T + CLOCK_SKEW_S)
    assert expired(T, T + CLOCK_SKEW_S + 0.001)
    assert not expired(None, T + 10**9)  # no expiry claimed


def test_staleness_counts_from_the_expiry_itself() -> None:
    assert stale_seconds(T, T + CLOCK_SKEW_S) is None
    assert stale_seconds(T, T + 3600) == 3600.0
    assert stale_seconds(None, T) is None


@pytest.mark.parametrize(("text", "expected"), [("90d", 90 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45),
                                                 ("600", 600), ("1.5h", 5400)])
def test_durations(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


def test_an_expires_option_is_a_duration_or_a_future_time() -> None:
    assert seconds(expires_option("90d", T)) == T + 90 * 86400
    assert expires_option("2031-01-01T00:00:00Z", T) == "2031-01-01T00:00:00.000Z"
    with pytest.raises(ValueError, match="is not in the future"):
        expires_option("2020-01-01T00:00:00Z", T)
    with pytest.raises(ValueError, match="neither a duration"):
        expires_option("next week", T)
