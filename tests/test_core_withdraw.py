"""`Scheduler.withdraw` gives back what an unsent dispatch took; server delays are capped."""

from __future__ import annotations

import random

from keysched import (
    Dispatch,
    Fail,
    FailReason,
    Key,
    Limit,
    Outcome,
    OutcomeKind,
    PoolConfig,
    Scheduler,
)

T0 = 3_000_000.0


def _dispatches(core: Scheduler, now: float) -> list[Dispatch]:
    return [d for d in core.poll(now) if isinstance(d, Dispatch)]


def test_withdraw_gives_the_quota_back() -> None:
    """A dispatch withdrawn before it was sent no longer counts against the group's RPM."""
    keys = [Key(secret="AIzaA", label="k1", project="P"), Key(secret="AIzaB", label="k2",
                                                             project="P")]
    core = Scheduler(PoolConfig(keys=keys, models=["m"], limits=[Limit(model="m", rpm=3)]),
                     rng=random.Random(0))
    for _ in range(3):
        core.submit(T0)
    first, second, third = _dispatches(core, T0)
    assert [d.key.label for d in (first, second, third)] == ["k1", "k2", "k1"]
    core.complete(first.attempt, Outcome(kind=OutcomeKind.KEY_INVALID), T0 + 0.1)
    assert core.withdraw(third.attempt, T0 + 0.1)  # it was on k1, now disabled: never sent
    retries = _dispatches(core, T0 + 0.1)
    # Sent: first, second, and now one retry: 3 in the minute. The withdrawn one is not counted,
    # so the pool had room for that retry at once instead of waiting for the window.
    assert [(d.key.label, d.number) for d in retries] == [("k2", 2)]
    group = core.snapshot(T0 + 0.1).groups[0]
    assert group.requests_last_minute == 3
    assert group.requests_today == 3


def test_withdraw_after_the_deadline_fails_the_request() -> None:
    """A request whose deadline passed while its dispatch waited is failed, not re-queued."""
    keys = [Key(secret="AIzaA", label="k1", project="P"), Key(secret="AIzaB", label="k2",
                                                             project="Q")]
    core = Scheduler(PoolConfig(keys=keys, models=["m"]), rng=random.Random(0))
    core.submit(T0)
    core.submit(T0)
    first, _ = _dispatches(core, T0)
    rid = core.submit(T0, deadline=1.0)
    [late] = _dispatches(core, T0)  # its caller has not sent it yet
    assert late.key.label == first.key.label == "k1"
    # The first call's refusal disables k1 after the late request's deadline has passed.
    core.complete(first.attempt, Outcome(kind=OutcomeKind.KEY_INVALID), T0 + 2.0)
    assert core.withdraw(late.attempt, T0 + 2.0)
    failed = [d for d in core.poll(T0 + 2.0) if isinstance(d, Fail) and d.request == rid]
    assert [f.reason for f in failed] == [FailReason.DEADLINE]
    assert core.open_requests == 2  # the second call (on k2) and the first call's retry


def test_a_huge_server_delay_is_capped_at_an_hour() -> None:
    """A retry delay of days benches the group for an hour, not for days."""
    core = Scheduler(PoolConfig(keys=["AIzaA"], models=["m"]), rng=random.Random(0))
    core.submit(T0)
    [dispatch] = _dispatches(core, T0)
    core.complete(dispatch.attempt,
                  Outcome(kind=OutcomeKind.RATE_LIMITED_MINUTE, retry_after=5 * 86_400.0), T0)
    assert core.snapshot(T0).groups[0].cooldown_until == T0 + 3600.0
