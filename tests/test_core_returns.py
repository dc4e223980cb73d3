"""When capacity returns: the early stop and the witness answer as the whole walk does.

`CapacityReturns.too_late` stops walking the quota groups at the first one back by the
request's deadline, asking first the group that was back last time (the witness);
`CapacityReturns.earliest` walks them all (the reference).  The property drives a core with
day and minute limits through generated dispatches, answers (429s with quota values among them)
and waits, and at each step asks both, for deadlines before, at and after the earliest return:
they must agree on "too late", and where the walk was whole it must give the earliest time.  A
witness trusted after its group ran out, or a stop that skipped a group back in time, fails it.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from keysched import Key, Limit, Outcome, OutcomeKind, PoolConfig, RetryPolicy, Scheduler
from keysched._decisions import Dispatch
from keysched._outcomes import QuotaDimension, Violation
from keysched._returns import CapacityReturns

T0 = 1_000.0
MODELS = ["best", "cheap"]

_step = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from([None, ("best",), ("cheap", "best")]),
              st.sampled_from([0, 50, 300]), st.booleans()),
    st.tuples(st.just("answer"), st.integers(0, 20),
              st.sampled_from([OutcomeKind.SUCCESS, OutcomeKind.SUCCESS,
                               OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.RATE_LIMITED_DAY])),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 7.0, 30.0, 61.0])),
)


def _core(seed: int) -> Scheduler:
    keys = [Key(secret=f"secret-{i}", label=f"k{i}", project=f"p{i % 3}") for i in range(6)]
    limits = (Limit(model="best", rpd=2, rpm=2), Limit(model="cheap", rpm=1, tpm=400))
    config = PoolConfig(keys=keys, models=MODELS, limits=limits,
                        retry=RetryPolicy(quota_margin=0.5))
    return Scheduler(config, rng=random.Random(seed), record_events=False)


def _outcome(kind: OutcomeKind) -> Outcome:
    if kind is OutcomeKind.RATE_LIMITED_MINUTE:
        return Outcome(kind=kind, retry_after=20.0, violations=(
            Violation(QuotaDimension.REQUESTS_PER_MINUTE, 1, "rpm"),))
    return Outcome(kind=kind)


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 3), steps=st.lists(_step, min_size=3, max_size=50),
       offsets=st.lists(st.sampled_from([-1.0, 0.0, 1.0, 45.0, 1e6]), min_size=1, max_size=3))
def test_the_early_stop_answers_as_the_whole_walk(seed: int, steps: list[tuple[object, ...]],
                                                  offsets: list[float]) -> None:
    core = _core(seed)
    now = T0
    in_flight: list[int] = []
    returns: CapacityReturns = core._returns
    stamp = (0, 0)
    for step in steps:
        if step[0] == "submit":
            core.submit(now, models=step[1], input_tokens=step[2], deadline=600.0,
                        spends_quota=step[3])
        elif step[0] == "answer" and in_flight:
            core.complete(in_flight.pop(step[1] % len(in_flight)), _outcome(step[2]), now)
        elif step[0] == "wait":
            now += step[1]
        in_flight += [d.attempt for d in core.poll(now) if isinstance(d, Dispatch)]
        stamp = (stamp[0] + 1, 0)  # a fresh stamp: nothing remembered stands
        for request in list(core._requests.open.values()):
            reference = returns.earliest(request, now)
            for offset in offsets:
                deadline = (reference if reference is not None else now) + offset
                found = returns._first_back_by(request, now, deadline, stamp)
                assert (found is not None and found > deadline) == (
                    reference is not None and reference > deadline)
                if found is None or found > deadline:  # a whole walk: the earliest time
                    assert found == reference
                else:
                    assert reference is not None
                    assert reference <= found <= deadline
