"""The model breaker: it trips on evidence, not on one 503; then its cooldown escalates per failed
probe, not per 503 that was already in flight; a cooling model is probed at a bounded rate when
nothing else can serve; the lane breaker; persistent bare 429s."""

from __future__ import annotations

import random

from keysched import Dispatch, Key, Outcome, OutcomeKind, Policy, PoolConfig, RetryPolicy, Scheduler

T0 = 2_000_000.0
RETRY = RetryPolicy(overload_cooldown=2.0, overload_cooldown_cap=20.0, jitter=0.0)


def _dispatches(core: Scheduler, now: float) -> list[Dispatch]:
    return [d for d in core.poll(now) if isinstance(d, Dispatch)]


def _model_cooldown(core: Scheduler, now: float, model: str = "m1") -> float | None:
    return core.snapshot(now).lane("key#1", model).cooldown_until


def test_concurrent_503s_cool_the_model_once_then_probes_escalate() -> None:
    """Three 503s in flight together (a breaker that trips at three) give one base cooldown;
    each failed probe then doubles it."""
    core = Scheduler(PoolConfig(keys=["a", "b", "c"], models=["m1", "m2"], retry=RETRY),
                     rng=random.Random(1), policy=Policy(overload_trip=3))
    for _ in range(3):
        core.submit(T0)
    sent = _dispatches(core, T0)
    assert {d.model for d in sent} == {"m1"}
    for i, dispatch in enumerate(sent):
        core.complete(dispatch.attempt, Outcome(kind=OutcomeKind.OVERLOADED), T0 + 1 + i * 0.1)
    # The last 503 came back at T0 + 1.2: one base cooldown from there, not 2 * 2 * 2.
    assert _model_cooldown(core, T0 + 1.2) == T0 + 1.2 + 2.0
    retries = _dispatches(core, T0 + 1.2)
    assert {d.model for d in retries} == {"m2"}  # fell back a tier at once
    for dispatch in retries:
        core.complete(dispatch.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0 + 1.5)
    core.poll(T0 + 1.5)

    probe_at = T0 + 3.2  # the cooldown is over: the next request probes m1
    core.submit(probe_at)
    [probe] = _dispatches(core, probe_at)
    assert probe.model == "m1"
    core.complete(probe.attempt, Outcome(kind=OutcomeKind.OVERLOADED), probe_at + 1)
    assert _model_cooldown(core, probe_at + 1) == probe_at + 1 + 4.0  # the probe failed: doubled


OVERLOADED = Outcome(kind=OutcomeKind.OVERLOADED)
SUCCESS = Outcome(kind=OutcomeKind.SUCCESS)


def _pool(keys: int = 4, models: tuple[str, ...] = ("m1", "m2"), **policy: object) -> Scheduler:
    core = Scheduler(PoolConfig(keys=[f"k{i}" for i in range(keys)], models=models,
                                retry=RETRY), rng=random.Random(1), policy=Policy(**policy))  # type: ignore[arg-type]
    core.poll(T0)
    return core


def test_a_lone_503_retries_on_another_key_of_the_same_model_and_cools_nothing() -> None:
    core = _pool()
    core.submit(T0)
    [first] = _dispatches(core, T0)
    core.complete(first.attempt, OVERLOADED, T0 + 0.1)
    [retry] = _dispatches(core, T0 + 0.1)
    assert (retry.model, retry.number) == ("m1", 2)
    assert retry.key.label != first.key.label
    assert all(g.cooldown_until is None for g in core.snapshot(T0 + 0.1).groups)
    assert _model_cooldown(core, T0 + 0.1) is None
    assert [e.kind for e in core.take_events()] == []


def test_a_request_moves_to_the_next_model_after_two_503s_on_one() -> None:
    core = _pool()
    core.submit(T0)
    [first] = _dispatches(core, T0)
    core.complete(first.attempt, OVERLOADED, T0)
    [second] = _dispatches(core, T0)
    core.complete(second.attempt, OVERLOADED, T0)
    [third] = _dispatches(core, T0)
    assert (second.model, third.model) == ("m1", "m2")


def test_five_503s_making_half_the_recent_outcomes_trip_the_breaker() -> None:
    core = _pool(keys=8)
    for i in range(20):  # 20 answers, then 503s: the fifth 503 is 5 of 25, no trip
        core.submit(T0 + i * 0.1)
        [d] = _dispatches(core, T0 + i * 0.1)
        core.complete(d.attempt, SUCCESS, T0 + i * 0.1)
    at = T0 + 2.0
    for _ in range(5):
        core.submit(at, models=["m1"])
        [d] = _dispatches(core, at)
        core.complete(d.attempt, OVERLOADED, at)
        core.cancel(d.request, at)
    assert _model_cooldown(core, at) is None  # 5 of 25 in the last 10 s: noise
    later = T0 + 12.5  # the answers have left the 10 s window; the 503s have not
    for _ in range(5):
        core.submit(later, models=["m1"])
        [d] = _dispatches(core, later)
        core.complete(d.attempt, OVERLOADED, later)
        core.cancel(d.request, later)
    assert _model_cooldown(core, later) == later + RETRY.overload_cooldown


def test_the_last_model_is_probed_at_a_bounded_rate_while_it_cools() -> None:
    """One model, tripped: waiting requests are not parked for the whole cooldown; one probes
    it per probe_interval, and an answer ends the cooldown for everyone."""
    core = _pool(keys=6, models=("m1",), overload_trip=2, probe_interval=0.5)
    for _ in range(2):
        core.submit(T0)
    for d in _dispatches(core, T0):
        core.complete(d.attempt, OVERLOADED, T0)
    cooled_until = _model_cooldown(core, T0)
    assert cooled_until == T0 + RETRY.overload_cooldown
    for d in _dispatches(core, T0):  # the two requests retry; nothing may serve them yet
        raise AssertionError(f"dispatched {d} while the model cools")
    assert core.next_deadline() == T0 + 0.5
    [probe] = _dispatches(core, T0 + 0.5)
    assert _dispatches(core, T0 + 0.6) == []  # one probe per interval
    core.complete(probe.attempt, SUCCESS, T0 + 0.7)
    assert _model_cooldown(core, T0 + 0.7) is None
    assert len(_dispatches(core, T0 + 0.7)) == 1  # the other request goes at once


def test_a_lane_that_keeps_answering_500_cools_and_is_probed_back() -> None:
    core = Scheduler(PoolConfig(keys=[Key(secret="s1", label="bad"), Key(secret="s2", label="ok")],
                                models=["m1"], retry=RETRY), rng=random.Random(1))
    server_error = Outcome(kind=OutcomeKind.SERVER_ERROR)
    at = T0
    for n in range(3):  # three 500s in a row on "bad" (each request cancelled, "ok" kept idle)
        core.submit(at, models=["m1"])
        [d] = _dispatches(core, at)
        if d.key.label == "ok":  # the least recently used key: answer there, and try again
            core.complete(d.attempt, SUCCESS, at)
            core.submit(at, models=["m1"])
            [d] = _dispatches(core, at)
        assert d.key.label == "bad"
        core.complete(d.attempt, server_error, at)
        core.cancel(d.request, at)
        lane = core.snapshot(at).lane("bad", "m1")
        assert (lane.cooldown_until is None) is (n < 2)
    assert (lane.cooldown_until, lane.reason) == (at + RETRY.overload_cooldown, "lane")
    assert core.snapshot(at).lane("ok", "m1").cooldown_until is None
    # When the cooldown ends, the next attempt on "bad" is a probe; its failure doubles it.
    probe_at = at + RETRY.overload_cooldown
    core.submit(probe_at)
    core.submit(probe_at)
    [probe] = [d for d in _dispatches(core, probe_at) if d.key.label == "bad"]
    core.complete(probe.attempt, server_error, probe_at)
    assert core.snapshot(probe_at).lane("bad", "m1").cooldown_until == probe_at + 2 * 2.0


def test_bare_429s_that_persist_double_the_group_cooldown_until_an_answer() -> None:
    core = _pool(keys=1, models=("m1",))
    bare = Outcome(kind=OutcomeKind.SHARED_CAPACITY)
    cooldowns = []
    at = T0
    core.submit(at)
    [d] = _dispatches(core, at)
    for _ in range(4):
        core.complete(d.attempt, bare, at)
        [group] = core.snapshot(at).groups
        assert group.cooldown_until is not None
        cooldowns.append(group.cooldown_until - at)
        at = group.cooldown_until
        [d] = _dispatches(core, at)
    assert cooldowns == [2.0, 4.0, 8.0, 16.0]
    core.complete(d.attempt, SUCCESS, at)
    core.submit(at)
    [d] = _dispatches(core, at)
    core.complete(d.attempt, bare, at)
    assert core.snapshot(at).groups[0].cooldown_until == at + 2.0  # an answer reset it
