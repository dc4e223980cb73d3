"""`Scheduler.withdraw`: a dispatch whose key was disabled before it was sent is taken back."""

from __future__ import annotations

import random

import pytest

from keysched import Dispatch, Finish, Outcome, OutcomeKind, PoolConfig, Scheduler, UsageError
from keysched._config import Key, RetryPolicy

T0 = 5_000.0


def core() -> Scheduler:
    keys = [Key(secret="s1", label="k1", project="p1"), Key(secret="s2", label="k2", project="p2")]
    return Scheduler(PoolConfig(keys=keys, models=["m"], retry=RetryPolicy(max_attempts=3)),
                     rng=random.Random(1))


def dispatches(decisions: list[object]) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


def test_withdraw_changes_nothing_while_the_key_is_usable() -> None:
    """A dispatch on a usable key is not withdrawn; an unknown attempt is a UsageError."""
    s = core()
    s.submit(T0)
    [a] = dispatches(s.poll(T0))
    assert s.withdraw(a.attempt, T0) is False
    assert s.in_flight == 1
    with pytest.raises(UsageError):
        s.withdraw(a.attempt + 1, T0)
    with pytest.raises(UsageError):
        s.withdraw(a.attempt, T0 - 1)  # time ran backwards
    assert s.in_flight == 1


def test_withdraw_on_a_disabled_key_requeues_at_the_head() -> None:
    """A dispatch raced by its key's refusal is withdrawn and placed again, same number."""
    s = core()
    r1 = s.submit(T0)
    [a] = dispatches(s.poll(T0))  # k1
    r2 = s.submit(T0)
    [b] = dispatches(s.poll(T0))  # k2
    s.complete(b.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0)
    s.poll(T0)
    r3 = s.submit(T0)
    [c] = dispatches(s.poll(T0))
    assert (a.key.label, c.key.label) == ("k1", "k2")
    r4 = s.submit(T0)
    [d] = dispatches(s.poll(T0))  # both keys carry one: k1 by the tie-break
    assert d.key.label == "k1"
    # `d` is decided but not sent; `a`'s refusal arrives and disables k1.
    s.complete(a.attempt, Outcome(kind=OutcomeKind.KEY_INVALID), T0 + 1)
    assert s.withdraw(d.attempt, T0 + 1) is True
    snap = s.snapshot(T0 + 1)
    assert snap.lane("k1", "m").dispatched == 1  # only `a` was ever sent on k1
    assert snap.lane("k1", "m").in_flight == 0
    decisions = s.poll(T0 + 1)
    placed = {x.request: x for x in dispatches(decisions)}
    assert placed[r4].key.label == "k2"
    assert placed[r4].number == 1  # the withdrawn attempt did not count
    assert placed[r1].key.label == "k2"  # a's retry
    with pytest.raises(UsageError):
        s.withdraw(d.attempt, T0 + 1)  # no longer in flight
    for x in (c, placed[r4], placed[r1]):
        s.complete(x.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0 + 2)
    finished = {x.request for x in s.poll(T0 + 2) if isinstance(x, Finish)}
    assert finished == {r1, r3, r4}
    snap = s.snapshot(T0 + 2)
    assert (snap.in_flight, snap.waiting, snap.requests_finished) == (0, 0, 4)
    assert r2
