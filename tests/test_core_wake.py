"""A waiting queue is asked again only when something moved (issue 18 item 4), and that skip
changes no decision.

`Scheduler` skips a queue whose head could not be served until an input or a timer moved its
change count (or the head's start_by passed); `recheck_all` turns the skip off and asks every
queue on every poll, the reference.  The property drives two cores, one each way, through the
same generated run (submissions of mixed sizes and model lists, outcomes of every kind with
and without retry delays and 429 quota values, cancellations, facts from another process,
polls at arbitrary times and at the cores' own deadlines) and holds their decisions and
deadlines equal, poll by poll.  A skip that hid a head which would have been served fails it.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from keysched import (
    Key,
    Limit,
    Outcome,
    OutcomeKind,
    PoolConfig,
    QuotaDimension,
    RetryPolicy,
    Scheduler,
    UsageError,
)
from keysched._decisions import Dispatch
from keysched._facts import Cooldown
from keysched._outcomes import Violation
from keysched._timers import TimerHeap, TimerKind

T0 = 1_000.0
MODELS = ["best", "cheap"]
MODEL_LISTS = [None, ("best",), ("cheap",), ("cheap", "best")]
KINDS = [OutcomeKind.SUCCESS] * 4 + [
    OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.SHARED_CAPACITY, OutcomeKind.OVERLOADED,
    OutcomeKind.SERVER_ERROR, OutcomeKind.TIMEOUT, OutcomeKind.TOO_LARGE_FOR_QUOTA,
    OutcomeKind.RATE_LIMITED_DAY, OutcomeKind.BLOCKED]

_step = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(MODEL_LISTS), st.sampled_from([0, 30, 90, 400]),
              st.sampled_from([None, 5.0, 40.0])),
    st.tuples(st.just("complete"), st.integers(0, 50), st.sampled_from(KINDS),
              st.sampled_from([None, 0.5, 7.0]), st.sampled_from([None, 2, 5])),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.1, 0.7, 3.0, 20.0, 61.0])),
    st.tuples(st.just("until_due"),),
    st.tuples(st.just("learn"), st.sampled_from(MODELS), st.sampled_from([2.0, 30.0])),
)


def _core(limits: tuple[Limit, ...], seed: int, recheck_all: bool) -> Scheduler:
    keys = [Key(secret=f"secret-{i}", label=f"k{i}", project=f"p{i % 2}") for i in range(3)]
    config = PoolConfig(keys=keys, models=MODELS, limits=limits, max_in_flight_per_key=1,
                        retry=RetryPolicy(quota_margin=0.5))
    core = Scheduler(config, rng=random.Random(seed), record_events=False)
    assert core.recheck_all is False  # the default policy skips: the property is about the skip
    core.recheck_all = recheck_all
    return core


def _outcome(kind: OutcomeKind, retry_after: float | None, value: int | None) -> Outcome:
    violations = ()
    if kind is OutcomeKind.RATE_LIMITED_MINUTE and value is not None:
        violations = (Violation(QuotaDimension.REQUESTS_PER_MINUTE, value, "rpm"),)
    return Outcome(kind=kind, retry_after=retry_after, violations=violations)


@settings(max_examples=150, deadline=None)
@given(limits=st.sampled_from([(), (Limit(model="best", rpm=3),),
                               (Limit(model="best", rpm=2, tpm=200), Limit(model="cheap", rpm=4))]),
       seed=st.integers(0, 3), steps=st.lists(_step, min_size=5, max_size=60))
def test_skipping_unmoved_queues_changes_no_decision(limits: tuple[Limit, ...], seed: int,
                                                     steps: list[tuple[object, ...]]) -> None:
    cores = [_core(limits, seed, recheck_all=False), _core(limits, seed, recheck_all=True)]
    now = T0
    dispatched: list[int] = []
    submitted: list[int] = []
    for step in steps:
        match step:
            case ("submit", models, tokens, deadline):
                ids = {core.submit(now, models=models, input_tokens=tokens, deadline=deadline)
                       for core in cores}
                submitted.append(ids.pop())
            case ("complete", index, kind, retry_after, value) if dispatched:
                attempt = dispatched[index % len(dispatched)]  # perhaps ended: both refuse
                outcome = _outcome(kind, retry_after, value)
                assert len({_completes(core, attempt, outcome, now) for core in cores}) == 1
            case ("cancel", index) if submitted:
                request = submitted[index % len(submitted)]
                assert len({core.cancel(request, now) for core in cores}) == 1
            case ("wait", seconds):
                now += seconds
            case ("until_due",):
                due = {core.next_deadline() for core in cores}
                assert len(due) == 1
                now = max(now, min(due.pop(), now + 120.0))
            case ("learn", model, seconds):
                fact = Cooldown(model=model, until=now + seconds, reason="overloaded")
                for core in cores:
                    core.learn(now, fact)
        skipping, reference = (core.poll(now) for core in cores)
        assert skipping == reference
        assert cores[0].next_deadline() == cores[1].next_deadline()
        dispatched.extend(d.attempt for d in skipping if isinstance(d, Dispatch))


def _completes(core: Scheduler, attempt: int, outcome: Outcome, now: float) -> bool:
    try:
        core.complete(attempt, outcome, now)
    except UsageError:  # completed or cancelled already
        return False
    return True


def test_a_lane_parked_until_the_same_time_is_armed_once() -> None:
    """The million-request run's heap grew by one timer per dispatch: each released key's lane
    of a model out of its day was parked until midnight again.  A second LANE timer with the same
    key, model and time is dropped; another time, or the same after it fired, is armed."""
    heap = TimerHeap()
    for _ in range(3):
        heap.push(50.0, TimerKind.LANE, 4, 1)
    heap.push(50.0, TimerKind.LANE, 4, 0)  # another model
    heap.push(60.0, TimerKind.LANE, 4, 1)  # another time
    heap.push(50.0, TimerKind.WAKE)
    heap.push(50.0, TimerKind.WAKE)  # only lanes are deduplicated
    assert len(heap) == 5
    fired = [heap.pop_due(50.0) for _ in range(4)]
    assert [(t.kind, t.ref, t.extra) for t in fired if t is not None] == [
        (TimerKind.LANE, 4, 1), (TimerKind.LANE, 4, 0), (TimerKind.WAKE, 0, 0),
        (TimerKind.WAKE, 0, 0)]
    heap.push(50.0, TimerKind.LANE, 4, 1)  # fired: parking it again arms it again
    assert len(heap) == 2
    heap.compact(lambda timer: timer.at > 55.0)  # a compaction that drops it forgets it
    heap.push(50.0, TimerKind.LANE, 4, 1)
    assert len(heap) == 2
