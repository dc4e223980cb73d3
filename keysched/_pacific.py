"""Midnight in America/Los_Angeles, by arithmetic alone.

Per-day Gemini quotas reset at 00:00 Pacific time.  The core may not import ``datetime`` or read
a clock, and tz data is not guaranteed on every machine, so the rule is written out: Pacific
standard time is UTC-8, daylight time UTC-7, and since 2007 daylight time runs from the second
Sunday of March 02:00 local to the first Sunday of November 02:00 local.  Midnight is never inside
a transition (they happen at 02:00), so "next midnight" is well defined on every day.
The tests check this against the IANA database.
"""

from __future__ import annotations

__all__ = ["next_pacific_midnight"]

_DAY = 86_400


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm)."""
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _nth_sunday(year: int, month: int, n: int) -> int:
    """The day count of the n-th Sunday of a month."""
    first = _days_from_civil(year, month, 1)
    weekday = (first + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return first + (6 - weekday) % 7 + 7 * (n - 1)


def _offset_hours(utc_seconds: float) -> int:
    """Hours to add to UTC to get Pacific local time at that instant."""
    year = _civil_from_days(int(utc_seconds // _DAY))[0]
    # Transitions at 02:00 local: 10:00 UTC in March (from PST), 09:00 UTC in November (from PDT).
    dst_start = _nth_sunday(year, 3, 2) * _DAY + 10 * 3600
    dst_end = _nth_sunday(year, 11, 1) * _DAY + 9 * 3600
    return -7 if dst_start <= utc_seconds < dst_end else -8


def next_pacific_midnight(wall_time: float) -> float:
    """The first midnight in America/Los_Angeles strictly after `wall_time` (Unix seconds)."""
    local = wall_time + _offset_hours(wall_time) * 3600
    next_local_day = int(local // _DAY) + 1
    # Midnight local, converted back with the offset in force at that midnight.
    guess = next_local_day * _DAY + 8 * 3600
    return float(next_local_day * _DAY - _offset_hours(guess) * 3600)
