"""Times in status: RFC 3339 strings out, RFC 3339 strings or older Unix seconds in."""

from __future__ import annotations

import pytest

from tinymlops.timestamps import rfc3339, seconds


def test_rfc3339_in_utc_to_the_millisecond_and_back() -> None:
    assert rfc3339(1_796_191_232.7486126) == "2026-12-02T06:00:32.748Z"
    assert seconds("2026-12-02T06:00:32.748Z") == pytest.approx(1_796_191_232.748)
    assert seconds("2026-12-02T07:00:32.748+01:00") == seconds("2026-12-02T06:00:32.748Z")
    # Written, read and written again, a time never drifts (status comparisons depend on it).
    for value in (0.0005, 1_700_000_000.0, 1_796_191_232.7486126, 2_000_000_000.9999):
        assert rfc3339(seconds(rfc3339(value))) == rfc3339(value)


def test_older_numbers_and_absent_times_still_read() -> None:
    assert seconds(1_796_191_232.75) == 1_796_191_232.75 and seconds(12) == 12.0
    assert seconds(None) == 0.0 and seconds("") == 0.0


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        seconds("2026-12-02T06:00:32")
