"""An exhaustive walk: every OutcomeKind has the effect the DEFAULT_ACTIONS table promises."""

from __future__ import annotations

import datetime
import math
import random

import pytest

from keysched import (
    DEFAULT_ACTIONS,
    Effect,
    Fail,
    FailReason,
    Finish,
    Key,
    LaneState,
    Limit,
    Next,
    Outcome,
    OutcomeKind,
    Policy,
    PoolConfig,
    RetryPolicy,
    Scheduler,
    UsageError,
    next_pacific_midnight,
)
from keysched._decisions import Decision, Dispatch

T0 = 1_000_000.0
WALL = 1_718_000_000.0 - T0  # a June day: Pacific daylight time
RETRY = RetryPolicy(max_attempts=6, backoff_base=1.0, backoff_cap=4.0, jitter=0.0,
                    deadline=600.0, minute_cooldown=30.0, overload_cooldown=5.0,
                    overload_cooldown_cap=20.0, empty_retries=1, server_errors_per_model=2,
                    quota_margin=0.0)  # budgets here end on the clock: exact arithmetic


def _core(wall: float = WALL, policy: Policy | None = None) -> Scheduler:
    keys = [Key(secret="s1", label="k1", project="p1"), Key(secret="s2", label="k2", project="p1"),
            Key(secret="s3", label="k3", project="p2")]
    config = PoolConfig(keys=keys, models=["m1", "m2"], retry=RETRY)
    return Scheduler(config, rng=random.Random(1), wall_epoch=wall, policy=policy)


def _dispatches(decisions: list[Decision]) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


def _first(core: Scheduler, now: float = T0) -> Dispatch:
    core.submit(now)
    [dispatch] = _dispatches(core.poll(now))
    assert (dispatch.key.label, dispatch.model) == ("k1", "m1")
    return dispatch


def _check_effect(core: Scheduler, kind: OutcomeKind, effect: Effect, now: float,
                  retry_after: float | None) -> None:
    snap = core.snapshot(now)
    group = next(g for g in snap.groups if (g.project, g.model) == ("p1", "m1"))
    other = snap.lane("k3", "m1")
    if effect is Effect.NONE:
        assert all(lane.state is LaneState.AVAILABLE for lane in snap.lanes if lane.key != "k1")
        assert not group.unavailable
        assert group.cooldown_until is None
    elif effect is Effect.COOL_GROUP:
        until = now + (retry_after if retry_after is not None else RETRY.minute_cooldown)
        assert group.cooldown_until == until
        assert group.reason == kind.value
        for key in ("k1", "k2"):
            lane = snap.lane(key, "m1")
            assert (lane.state, lane.cooldown_until) == (LaneState.COOLING, until)
            assert snap.lane(key, "m2").state is LaneState.AVAILABLE
        assert other.state is LaneState.AVAILABLE
        assert core.snapshot(until).lane("k2", "m1").state is LaneState.AVAILABLE
    elif effect is Effect.COOL_GROUP_BRIEFLY:
        until = now + RETRY.shared_capacity_cooldown
        assert (group.cooldown_until, group.reason) == (until, kind.value)
        assert snap.lane("k2", "m1").state is LaneState.COOLING
        assert other.state is LaneState.AVAILABLE
    elif effect is Effect.COOL_GROUP_UNTIL_MIDNIGHT:
        until = next_pacific_midnight(now + WALL) - WALL
        assert group.cooldown_until == until
        assert snap.lane("k2", "m1").state is LaneState.COOLING
        assert other.state is LaneState.AVAILABLE
    elif effect is Effect.COOL_BILLING_ACCOUNT:  # p1 is billed alone: its every model is benched
        until = now + (retry_after if retry_after is not None else RETRY.minute_cooldown)
        for key in ("k1", "k2"):
            for model in ("m1", "m2"):
                lane = snap.lane(key, model)
                assert (lane.state, lane.cooldown_until, lane.reason) == (
                    LaneState.COOLING, until, kind.value)
        assert other.state is LaneState.AVAILABLE
    elif effect is Effect.GROUP_UNAVAILABLE:
        assert group.unavailable
        assert snap.lane("k2", "m1").state is LaneState.UNAVAILABLE
        assert snap.lane("k2", "m2").state is LaneState.AVAILABLE
        assert other.state is LaneState.AVAILABLE
    elif effect is Effect.COOL_MODEL:
        # One 503 is evidence, not proof: no model cools (the breaker's own tests trip it);
        # the failed lane honours the server's retry delay, if it gave one.
        for key in ("k2", "k3"):
            assert snap.lane(key, "m1").state is LaneState.AVAILABLE
        failed = snap.lane("k1", "m1")
        if retry_after is None:
            assert failed.state is LaneState.AVAILABLE
        else:
            assert (failed.state, failed.cooldown_until) == (LaneState.COOLING, now + retry_after)
    elif effect is Effect.MODEL_UNAVAILABLE:
        assert {lane.state for lane in snap.lanes if lane.model == "m1"} == {LaneState.UNAVAILABLE}
        assert {lane.state for lane in snap.lanes if lane.model == "m2"} == {LaneState.AVAILABLE}
    elif effect is Effect.COOL_LANE:  # a proxy's bare 401/403: this lane only, not the key
        until = now + DEFAULT_ACTIONS[kind].seconds
        lane = snap.lane("k1", "m1")
        assert (lane.state, lane.cooldown_until) == (LaneState.COOLING, until)
        assert snap.lane("k1", "m2").state is LaneState.AVAILABLE
        assert snap.lane("k2", "m1").state is LaneState.AVAILABLE
        assert core.snapshot(until).lane("k1", "m1").state is LaneState.AVAILABLE
    elif effect is Effect.DISABLE_KEY:
        assert {snap.lane("k1", m).state for m in ("m1", "m2")} == {LaneState.DISABLED}
        assert snap.lane("k2", "m1").state is LaneState.AVAILABLE
    elif effect is Effect.DISABLE_PROJECT:
        assert {lane.state for lane in snap.lanes if lane.project == "p1"} == {LaneState.DISABLED}
        assert {lane.state for lane in snap.lanes if lane.project == "p2"} == {LaneState.AVAILABLE}
    else:  # pragma: no cover - the default table uses no baseline effect
        pytest.fail(f"unexpected effect {effect}")


@pytest.mark.parametrize("retry_after", [None, 7.0])
@pytest.mark.parametrize("kind", list(OutcomeKind))
def test_every_outcome_has_its_tabled_effect(kind: OutcomeKind, retry_after: float | None) -> None:
    """Each outcome kind changes the pool and moves its request exactly as its table row says."""
    core = _core()
    first = _first(core)
    now = T0 + 1.0
    core.complete(first.attempt, Outcome(kind=kind, retry_after=retry_after), now)
    action = DEFAULT_ACTIONS[kind]
    _check_effect(core, kind, action.effect, now, retry_after)
    if (retry_after is not None and action.effect in (Effect.NONE, Effect.COOL_MODEL)
            and action.next in (Next.RETRY_NOW, Next.RETRY_LATER)):
        # A retry delay that blames no quota group idles just the failed lane until t + d.
        lane = core.snapshot(now).lane("k1", "m1")
        assert (lane.state, lane.cooldown_until) == (LaneState.COOLING, now + retry_after)
        assert core.snapshot(now + retry_after).lane("k1", "m1").state is LaneState.AVAILABLE
    decisions = core.poll(now)
    sent = _dispatches(decisions)
    if action.next is Next.RETURN:
        assert decisions == [Finish(request=first.request, attempt=first.attempt)]
    elif action.next is Next.FAIL:
        assert decisions == [Fail(request=first.request, reason=FailReason.REQUEST_ERROR,
                                  attempt=first.attempt)]
    elif action.next is Next.RETRY_OTHER_MODEL:
        assert [(d.number, d.model) for d in sent] == [(2, "m2")]
    elif action.next is Next.RETRY_NOW:
        [retry] = sent
        assert retry.number == 2
        assert retry.key.label != "k1"  # a retry prefers a key that did not fail it
        if action.effect is Effect.COOL_MODEL:
            assert retry.model == "m1"  # another key of the same model, at once
        elif action.effect in (Effect.COOL_GROUP, Effect.COOL_GROUP_BRIEFLY,
                               Effect.COOL_GROUP_UNTIL_MIDNIGHT, Effect.COOL_BILLING_ACCOUNT,
                               Effect.GROUP_UNAVAILABLE, Effect.DISABLE_PROJECT):
            assert (retry.key.label, retry.model) == ("k3", "m1")
        else:
            assert retry.model == "m1"
    else:
        assert action.next is Next.RETRY_LATER
        assert decisions == []
        ready = now + RETRY.backoff_base  # jitter 0: exactly the base for the first retry
        assert core.next_deadline() <= ready
        assert core.poll(math.nextafter(ready, 0)) == []
        [retry] = _dispatches(core.poll(ready))
        assert retry.number == 2
        assert retry.key.label != "k1"
    assert core.snapshot().requests_submitted == 1


def test_empty_is_retried_once_then_fails() -> None:
    """A 200 without content is retried once on another key, then fails with EMPTY_RESPONSE."""
    core = _core()
    first = _first(core)
    core.complete(first.attempt, Outcome(kind=OutcomeKind.EMPTY), T0)
    [second] = _dispatches(core.poll(T0))
    assert second.key.label != "k1"
    core.complete(second.attempt, Outcome(kind=OutcomeKind.EMPTY), T0)
    assert core.poll(T0) == [Fail(request=first.request, reason=FailReason.EMPTY_RESPONSE,
                                  attempt=second.attempt)]
    assert core.in_flight == 0
    assert core.open_requests == 0


def test_two_server_errors_on_a_model_move_to_the_next_model() -> None:
    """500 twice on m1 sends the third attempt to m2."""
    core = _core()
    attempt = _first(core)
    now = T0
    models = []
    for _ in range(2):
        core.complete(attempt.attempt, Outcome(kind=OutcomeKind.SERVER_ERROR), now)
        now = core.next_deadline()
        [attempt] = _dispatches(core.poll(now))
        models.append(attempt.model)
    assert models == ["m1", "m2"]


def test_attempts_are_bounded() -> None:
    """A request that keeps timing out fails with ATTEMPTS_EXHAUSTED after max_attempts."""
    core = _core()
    attempt = _first(core)
    now = T0
    for number in range(1, RETRY.max_attempts + 1):
        assert attempt.number == number
        core.complete(attempt.attempt, Outcome(kind=OutcomeKind.TIMEOUT), now)
        now = core.next_deadline()
        decisions = core.poll(now)
        if number == RETRY.max_attempts:
            assert decisions == [Fail(request=attempt.request,
                                      reason=FailReason.ATTEMPTS_EXHAUSTED,
                                      attempt=attempt.attempt)]
        else:
            [attempt] = _dispatches(decisions)


def _pacific(year: int, month: int, day: int, hour: int, minute: int, offset: int) -> float:
    zone = datetime.timezone(datetime.timedelta(hours=offset))
    return datetime.datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


@pytest.mark.parametrize(("wall", "midnight"), [
    # 01:59 PST on the day DST starts: the next midnight is 00:00 PDT, 23 h after the last.
    (_pacific(2024, 3, 10, 1, 59, -8), _pacific(2024, 3, 11, 0, 0, -7)),
    # 23:59 PST the evening before: midnight is still PST.
    (_pacific(2024, 3, 9, 23, 59, -8), _pacific(2024, 3, 10, 0, 0, -8)),
    # 01:30 PDT (the first one) on the day DST ends: midnight is 00:00 PST, 25 h after the last.
    (_pacific(2024, 11, 3, 1, 30, -7), _pacific(2024, 11, 4, 0, 0, -8)),
    (_pacific(2024, 11, 2, 23, 30, -7), _pacific(2024, 11, 3, 0, 0, -7)),
])
def test_per_day_cooldown_ends_at_the_right_pacific_midnight(wall: float, midnight: float) -> None:
    """A RATE_LIMITED_DAY just before a DST change benches its group until that day's midnight."""
    now = T0 + 12.5
    core = _core(wall - now)
    first = _first(core, now)
    core.complete(first.attempt, Outcome(kind=OutcomeKind.RATE_LIMITED_DAY, retry_after=3.0), now)
    until = midnight - (wall - now)
    group = next(g for g in core.snapshot(now).groups if (g.project, g.model) == ("p1", "m1"))
    assert group.cooldown_until == until
    [retry] = _dispatches(core.poll(now))
    assert retry.key.label == "k3"
    assert core.snapshot(math.nextafter(until, 0)).lane("k2", "m1").state is LaneState.COOLING
    assert core.snapshot(until).lane("k2", "m1").state is LaneState.AVAILABLE


def test_cooling_group_serves_again_at_exactly_t_plus_d() -> None:
    """A per-minute 429 with retry delay d idles its group until t + d and it serves at t + d."""
    config = PoolConfig(keys=[Key(secret="a", project="p"), Key(secret="b", project="p")],
                        models=["m"], retry=RETRY)
    core = Scheduler(config, rng=random.Random(0))
    core.submit(T0)
    [first] = _dispatches(core.poll(T0))
    now = T0 + 0.3
    core.complete(first.attempt, Outcome(kind=OutcomeKind.RATE_LIMITED_MINUTE, retry_after=2.7),
                  now)
    assert core.poll(now) == []
    assert core.next_deadline() == now + 2.7
    assert core.poll(math.nextafter(now + 2.7, 0)) == []
    [retry] = _dispatches(core.poll(now + 2.7))
    assert retry.key.label == "key#2"


@pytest.mark.parametrize("bad", [
    lambda core, done: core.complete(done, Outcome(kind=OutcomeKind.SUCCESS), T0 + 5),
    lambda core, done: core.complete(99, Outcome(kind=OutcomeKind.SUCCESS), T0 + 5),
    lambda core, done: core.poll(T0 + 4),
    lambda core, done: core.submit(T0 + 4),
    lambda core, done: core.cancel(99, T0 + 5),
    lambda core, done: core.submit(T0 + 5, models=["nope"]),
    lambda core, done: core.submit(T0 + 5, deadline=-1.0),
    lambda core, done: core.poll(math.nan),
])
def test_illegal_input_raises_and_changes_nothing(bad: object) -> None:
    """Completing a finished or unknown attempt, or time going backwards, raises UsageError."""
    core = _core()
    first = _first(core)
    core.complete(first.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0 + 5)
    core.submit(T0 + 5)
    before = (core.snapshot(T0 + 5), core.next_deadline())
    with pytest.raises(UsageError):
        bad(core, first.attempt)  # type: ignore[operator]
    assert (core.snapshot(T0 + 5), core.next_deadline()) == before
    assert [type(d) for d in core.poll(T0 + 5)] == [Finish, Dispatch]


def test_budget_parks_a_lane_only_until_it_can_serve_anyone() -> None:
    """A lane whose RPM is spent serves a small request as soon as one request leaves the window,
    even while a bigger request waits longer for its tokens."""
    limits = [Limit(model="m1", rpm=2, tpm=100)]
    config = PoolConfig(keys=[Key(secret="s", label="k", project="p")], models=["m1", "m2"],
                        limits=limits, retry=RETRY)
    core = Scheduler(config, rng=random.Random(0))
    for at in (T0, T0 + 30):
        core.submit(at, models=["m1"], input_tokens=50)
        assert len(_dispatches(core.poll(at))) == 1
    core.submit(T0 + 31, models=["m1"], input_tokens=60)  # needs both to leave: T0 + 90
    assert core.poll(T0 + 31) == []
    small = core.submit(T0 + 31, models=["m2", "m1"], input_tokens=10)
    [first] = _dispatches(core.poll(T0 + 31))
    assert (first.request, first.model) == (small, "m2")
    core.complete(first.attempt, Outcome(kind=OutcomeKind.RATE_LIMITED_MINUTE,
                                         retry_after=100.0), T0 + 31)
    assert core.poll(T0 + 31) == []  # m2 is benched; m1's RPM is spent until T0 + 60
    assert core.next_deadline() <= T0 + 60
    [retry] = _dispatches(core.poll(T0 + 60))
    assert (retry.request, retry.model) == (small, "m1")


def test_cooldown_wake_up_survives_an_idle_next_deadline() -> None:
    """Asking `next_deadline` while nothing waits must not drop a cooldown's wake-up."""
    core = _core(policy=Policy(overload_trip=1, probe_interval=100.0))
    first = _first(core)
    core.complete(first.attempt, Outcome(kind=OutcomeKind.OVERLOADED), T0)
    [retry] = _dispatches(core.poll(T0))
    assert retry.model == "m2"
    core.next_deadline()  # nothing waits at this moment
    waiting = core.submit(T0 + 1, models=["m1"])
    assert core.poll(T0 + 1) == []
    assert core.next_deadline() <= T0 + RETRY.overload_cooldown
    sent = _dispatches(core.poll(T0 + RETRY.overload_cooldown))
    assert waiting in {d.request for d in sent}


def test_a_snapshot_before_any_time_shows_empty_budgets() -> None:
    """A pool with known limits can be pictured before the core has seen any time: every lane
    is available and nothing has been counted against its budget."""
    config = PoolConfig(keys=["AIza-a", "AIza-b"], models=["m"],
                        limits=[Limit(model="m", rpm=5, tpm=1000, rpd=10)])
    snapshot = Scheduler(config, rng=random.Random(0)).snapshot()
    assert all(lane.state is LaneState.AVAILABLE for lane in snapshot.lanes)
    assert {(g.requests_last_minute, g.tokens_last_minute, g.requests_today)
            for g in snapshot.groups} == {(0, 0, 0)}


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_an_outcome_copy_is_checked_like_a_new_one(bad: float) -> None:
    """`Outcome._replace` refuses a bad retry delay, as the constructor does."""
    outcome = Outcome(kind=OutcomeKind.TIMEOUT)
    assert outcome._replace(retry_after=2.5).retry_after == 2.5
    with pytest.raises(ValueError, match="retry_after"):
        outcome._replace(retry_after=bad)
    with pytest.raises(ValueError, match="retry_after"):
        Outcome(kind=OutcomeKind.TIMEOUT, retry_after=bad)
