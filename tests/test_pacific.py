"""`next_pacific_midnight` agrees with the IANA database."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keysched import next_pacific_midnight

try:
    from zoneinfo import ZoneInfo

    LA: datetime.tzinfo | None = ZoneInfo("America/Los_Angeles")
except Exception:  # tzdata may be missing on a fresh machine
    LA = None

needs_tz = pytest.mark.skipif(LA is None, reason="zoneinfo cannot load America/Los_Angeles")


def _reference(wall: float) -> float:
    assert LA is not None
    local = datetime.datetime.fromtimestamp(wall, LA)
    day = local.date() + datetime.timedelta(days=1)
    midnight = datetime.datetime(day.year, day.month, day.day, tzinfo=LA)
    return midnight.timestamp()


@needs_tz
@given(st.floats(min_value=1_167_609_600, max_value=4_102_444_800, allow_nan=False))
def test_matches_zoneinfo_for_random_instants(wall: float) -> None:
    """For any instant from 2007 to 2100 the next midnight matches zoneinfo's."""
    assert next_pacific_midnight(wall) == _reference(wall)


@needs_tz
@pytest.mark.parametrize("year", [2007, 2016, 2024, 2025, 2038, 2099])
def test_matches_zoneinfo_around_every_transition(year: int) -> None:
    """Minutes around both DST changes and both midnights next to them agree with zoneinfo."""
    assert LA is not None
    for month, day in [(3, 1), (11, 1)]:
        start = datetime.datetime(year, month, day, tzinfo=LA).timestamp()
        for minute in range(0, 15 * 24 * 60, 7):
            wall = start + minute * 60.0
            assert next_pacific_midnight(wall) == _reference(wall), (year, month, minute)


def test_is_strictly_after_and_within_25_hours() -> None:
    """The result is strictly after the instant, even at an exact midnight, and at most 25 h on."""
    midnight = 1_704_096_000.0  # 2024-01-01 00:00 PST
    assert next_pacific_midnight(midnight) == midnight + 86_400
    assert next_pacific_midnight(midnight - 0.001) == midnight
    for wall in range(1_700_000_000, 1_740_000_000, 3_601_337):
        nxt = next_pacific_midnight(float(wall))
        assert wall < nxt <= wall + 25 * 3600


@needs_tz
def test_day_lengths_across_dst() -> None:
    """The day DST starts is 23 h long and the day it ends 25 h, as zoneinfo says."""
    assert LA is not None
    spring = datetime.datetime(2024, 3, 10, tzinfo=LA).timestamp()
    fall = datetime.datetime(2024, 11, 3, tzinfo=LA).timestamp()
    assert next_pacific_midnight(spring) - spring == 23 * 3600
    assert next_pacific_midnight(fall) - fall == 25 * 3600
