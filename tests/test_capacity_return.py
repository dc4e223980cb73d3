"""Waiting for capacity that cannot return in time: the call fails at once, saying when it does.

When every lane that could serve a call is benched past the call's deadline (a pool benched
until midnight Pacific, say), the core knows the return time; the call raises `CapacityError`
with `retry_at` at once instead of waiting out its deadline.  When capacity returns before the
deadline, it waits as before.
"""

from __future__ import annotations

import random

from helpers import FLASH, Server, fixture, make_client, secret
from virtual_clock import VirtualClock

from keysched import (
    CapacityError,
    Fail,
    FailReason,
    Finish,
    Key,
    Limit,
    Outcome,
    OutcomeKind,
    PoolConfig,
    Scheduler,
    next_pacific_midnight,
)
from keysched._decisions import Dispatch

T0 = 1_000_000.0
WALL = 1_718_000_000.0 - T0


def test_a_request_fails_at_once_when_every_lane_returns_after_its_deadline() -> None:
    core = Scheduler(PoolConfig(keys=[Key(secret="s", label="k", project="p")], models=["m"]),
                     rng=random.Random(0), wall_epoch=WALL)
    core.submit(T0, deadline=600.0)
    [first] = [d for d in core.poll(T0) if isinstance(d, Dispatch)]
    core.complete(first.attempt, Outcome(kind=OutcomeKind.RATE_LIMITED_DAY, retry_after=30.0), T0)
    midnight = next_pacific_midnight(T0 + WALL) - WALL
    assert midnight > T0 + 600
    [fail] = core.poll(T0)
    assert isinstance(fail, Fail)
    assert (fail.reason, fail.retry_at) == (FailReason.DEADLINE, midnight)
    late = core.submit(T0 + 1, deadline=60.0)  # a new call fails at once too
    [again] = core.poll(T0 + 1)
    assert isinstance(again, Fail)
    assert (again.request, again.retry_at) == (late, midnight)


def test_a_request_waits_when_capacity_returns_before_its_deadline() -> None:
    core = Scheduler(PoolConfig(keys=[Key(secret="s", label="k", project="p")], models=["m"]),
                     rng=random.Random(0), wall_epoch=WALL)
    core.submit(T0, deadline=600.0)
    [first] = [d for d in core.poll(T0) if isinstance(d, Dispatch)]
    core.complete(first.attempt, Outcome(kind=OutcomeKind.RATE_LIMITED_MINUTE, retry_after=40.0),
                  T0)
    assert core.poll(T0) == []
    [retry] = [d for d in core.poll(T0 + 40) if isinstance(d, Dispatch)]
    assert retry.request == first.request


def test_a_request_that_spends_no_quota_waits_for_a_busy_lane_past_a_spent_day() -> None:
    """A countTokens call (spends no quota) is not held back by the day's budget, so it waits
    for the busy lane instead of failing at once with midnight as `retry_at` (a review found
    the budget's next free time counted for it)."""
    config = PoolConfig(keys=[Key(secret="s", label="k", project="p")], models=["m"],
                        limits=[Limit(model="m", rpd=1)], max_in_flight_per_key=1)
    core = Scheduler(config, rng=random.Random(0), wall_epoch=WALL)
    core.submit(T0, deadline=600.0)
    [first] = [d for d in core.poll(T0) if isinstance(d, Dispatch)]  # the day's one request
    counting = core.submit(T0 + 1, deadline=60.0, spends_quota=False)
    assert core.poll(T0 + 1) == []  # waits for the lane
    core.complete(first.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0 + 2)
    decisions = core.poll(T0 + 2)
    assert [(type(d), d.request) for d in decisions if not isinstance(d, Finish)] == [
        (Dispatch, counting)]


async def test_the_client_raises_at_once_with_retry_at_when_the_day_is_spent() -> None:
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(429, "429_daily_cap_2026.json"))
    keys = [Key(secret=secret(1), label="only", project="p")]
    async with make_client(server, vc, keys=keys, models=[FLASH]) as client:
        start = vc.now
        try:
            await client.generate("hi", deadline=120.0)
        except CapacityError as error:
            caught = error
        else:
            raise AssertionError("no CapacityError")
        assert vc.now == start  # no virtual time waited
    assert caught.retry_at is not None
    assert caught.retry_at > start + 120.0
    assert len(server.requests) == 1
