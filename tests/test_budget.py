"""Budgets never let a known limit be exceeded, and say exactly when room returns."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from keysched import Limit, next_pacific_midnight
from keysched._budget import WINDOW, Budget

EPOCH = 1_000_000.0
WALL = 1_710_050_000.5 - EPOCH  # core time 1e6 is a few hours before a DST change, off the second


def _naive_room(sent: list[tuple[float, int]], limit: Limit, at: float, tokens: int) -> bool:
    """Whether one more request of `tokens` at `at` stays within every limit, by brute force."""
    window = [(t, n) for t, n in sent if t + WINDOW > at]
    day = next_pacific_midnight(at + WALL)
    today = [t for t, _ in sent if next_pacific_midnight(t + WALL) == day]
    return ((limit.rpm is None or len(window) + 1 <= limit.rpm)
            and (limit.tpm is None or sum(n for _, n in window) + tokens <= limit.tpm)
            and (limit.rpd is None or len(today) + 1 <= limit.rpd))


limits = st.builds(Limit, model=st.just("m"), rpm=st.none() | st.integers(2, 3),
                   tpm=st.none() | st.integers(50, 300), rpd=st.none() | st.integers(3, 5))
steps = st.lists(st.tuples(st.sampled_from([0.0, 0.25, 1.0, 7.5, 20.0, 59.999, 60.0, 3_600.0,
                                            20_000.0, -1.0]),
                           st.integers(0, 120)), min_size=1, max_size=40)


@given(limits, steps)
def test_limits_hold_in_every_window(limit: Limit, plan: list[tuple[float, int]]) -> None:
    """Sending whenever `free_at` allows never exceeds RPM/TPM in any 60 s window nor RPD a day."""
    budget = Budget(limit, WALL)
    now = EPOCH
    sent: list[tuple[float, int]] = []
    for step, tokens in plan:
        # A step of -1 jumps straight to the time the budget promised.
        free = budget.free_at(now, tokens)
        if step < 0:
            if math.isinf(free):
                continue
            now = free
        else:
            now += step
        free = budget.free_at(now, tokens)
        assert free >= now
        if not budget.fits(tokens):
            assert math.isinf(free)
            continue
        assert math.isfinite(free)
        if free == now:
            assert _naive_room(sent, limit, now, tokens)
            budget.record(now, tokens)
            sent.append((now, tokens))
        else:
            # Refused now, admitted at the promised time and not a microsecond before.
            assert not _naive_room(sent, limit, now, tokens)
            assert not _naive_room(sent, limit, free - 1e-6, tokens)
            assert _naive_room(sent, limit, free, tokens)
    for t, _ in sent:
        window = [(s, n) for s, n in sent if t - WINDOW < s <= t]
        assert limit.rpm is None or len(window) <= limit.rpm
        assert limit.tpm is None or sum(n for _, n in window) <= limit.tpm
        day = next_pacific_midnight(t + WALL)
        assert limit.rpd is None or sum(
            1 for s, _ in sent if next_pacific_midnight(s + WALL) == day) <= limit.rpd


def test_usage_reports_the_window_and_the_day() -> None:
    """`usage` counts the last minute's requests and tokens and today's requests."""
    budget = Budget(Limit(model="m", rpm=3, tpm=100, rpd=5), WALL)
    budget.record(EPOCH, 10)
    budget.record(EPOCH + 30, 20)
    assert budget.usage(EPOCH + 30) == (2, 30, 2)
    assert budget.usage(EPOCH + 60) == (1, 20, 2)
    assert budget.usage(EPOCH + 90) == (0, 0, 2)


def test_day_count_resets_exactly_at_pacific_midnight() -> None:
    """The per-day count is full until midnight Pacific and empty at it."""
    budget = Budget(Limit(model="m", rpd=3), WALL)
    for i in range(3):
        budget.record(EPOCH + i, 0)
    midnight = budget.free_at(EPOCH + 3, 0)
    assert midnight + WALL >= next_pacific_midnight(EPOCH + WALL)
    assert budget.free_at(math.nextafter(midnight, -math.inf), 0) == midnight
    assert budget.free_at(midnight, 0) == midnight
    for _ in range(3):
        budget.record(midnight, 0)
    assert budget.free_at(midnight, 0) > midnight


def test_oversized_request_never_fits() -> None:
    """A request larger than the TPM limit can never be sent: `free_at` is infinite."""
    budget = Budget(Limit(model="m", tpm=100), WALL)
    assert not budget.fits(101)
    assert budget.free_at(EPOCH, 101) == math.inf
    assert budget.free_at(EPOCH, 100) == EPOCH


def test_a_request_sent_within_the_margin_of_midnight_counts_on_both_days() -> None:
    """The server may count a request sent just before midnight (by our clock) on the new day:
    with a 1 s margin, it counts on both, so the new day's budget is never overdrawn."""

    wall = 1_718_000_000.0
    midnight = next_pacific_midnight(wall) - wall  # core time of the next midnight
    budget = Budget(Limit(model="m", rpd=3), wall, margin=1.0)
    budget.record(midnight - 10.0, 0)
    budget.record(midnight - 0.5, 0)  # within the margin: both days
    budget.record(midnight + 0.5, 0)  # within the margin: both days
    assert budget.free_at(midnight + 0.9, 0) == midnight + 1.0  # day one is full until then
    assert budget.usage(midnight + 1.0)[2] == 2  # day two already holds two
    assert budget.free_at(midnight + 1.0, 0) == midnight + 1.0  # one more fits ...
    budget.record(midnight + 1.0, 0)
    assert budget.free_at(midnight + 1.0, 0) > midnight + 3600  # ... and no more
