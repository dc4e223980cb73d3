"""The core's timer heap stays bounded under steady load, even behind a parked lane's timer."""

from __future__ import annotations

import random

from keysched import Dispatch, Key, Outcome, OutcomeKind, PoolConfig, Scheduler

T0 = 4_000_000.0


def test_timers_of_ended_requests_do_not_pile_up() -> None:
    """A long cooldown's timer at the top of the heap does not keep ended requests' timers."""
    keys = [Key(secret="AIzaA", label="a", project="P"), Key(secret="AIzaB", label="b",
                                                            project="Q")]
    core = Scheduler(PoolConfig(keys=keys, models=["m"]), rng=random.Random(0))
    core.submit(T0)
    core.submit(T0)
    first, second = [d for d in core.poll(T0) if isinstance(d, Dispatch)]
    # Project P is benched for 30 s, less than a request's deadline (120 s): the timer that
    # brings its parked lane back sits at the top of the heap for the whole run below.
    core.complete(first.attempt, Outcome(kind=OutcomeKind.RATE_LIMITED_MINUTE,
                                         retry_after=30.0), T0)
    core.complete(second.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0)
    now = T0
    for _ in range(2_500):  # 25 s of steady requests, all served by project Q at once
        now += 0.01
        core.submit(now)
        for decision in core.poll(now):
            if isinstance(decision, Dispatch):
                core.complete(decision.attempt, Outcome(kind=OutcomeKind.SUCCESS), now)
        core.poll(now)
        core.next_deadline()
    assert core.open_requests == 0
    assert len(core._timers) <= 64  # 2,500 deadline timers came and went
    # The parked lane still comes back when its cooldown ends.
    later = T0 + 30.0
    core.poll(later)
    assert core.snapshot(later).lane("a", "m").state.value == "available"
