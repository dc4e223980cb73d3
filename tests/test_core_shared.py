"""The pool's seam for shared state: facts from other processes go in, facts worth sharing come out.

Each test drives the pure `Scheduler` (and its `Pool`) by hand in core time.  The facts merge as
local ones do: a cooldown by the later end, never shortened; a disabled key stays disabled; a
learned limit never replaces a configured one.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keysched import (
    Dispatch,
    Key,
    Limit,
    Outcome,
    OutcomeKind,
    PoolConfig,
    QuotaDimension,
    RetryPolicy,
    Scheduler,
    UsageError,
    Violation,
)
from keysched._facts import Cooldown, DisabledKey, LearnedLimit, SharedFact
from keysched._pool import Pool
from keysched._selection import Policy

T0 = 2_000_000.0
RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
RETRY = RetryPolicy(jitter=0.0, quota_margin=0.0, relearn_after=None)
KEYS = [Key(secret="AIzaSecretA", label="a", project="P"),
        Key(secret="AIzaSecretB", label="b", project="Q")]


def core_of(limits: tuple[Limit, ...] = (), models: tuple[str, ...] = ("m", "n")) -> Scheduler:
    return Scheduler(PoolConfig(keys=KEYS, models=list(models), limits=limits, retry=RETRY),
                     rng=random.Random(0))


def dispatched(core: Scheduler, now: float) -> list[Dispatch]:
    return [d for d in core.poll(now) if isinstance(d, Dispatch)]


def test_a_group_cooldown_merges_by_the_later_end() -> None:
    """A group benched elsewhere is benched here; a shorter bench never shortens it."""
    core = core_of()
    core.learn(T0, Cooldown(project="P", model="m", until=T0 + 30, reason="rate_limited_minute"))
    core.learn(T0, Cooldown(project="P", model="m", until=T0 + 10, reason="shared_capacity"))
    group = next(g for g in core.snapshot(T0).groups if (g.project, g.model) == ("P", "m"))
    assert (group.cooldown_until, group.reason) == (T0 + 30, "rate_limited_minute")
    assert [(e.kind, e.until) for e in core.take_events()] == [("group_cooled", T0 + 30)]
    core.learn(T0, Cooldown(project="P", model="m", until=T0 + 60, reason="rate_limited_day"))
    assert core.snapshot(T0).lane("a", "m").cooldown_until == T0 + 60
    assert core.next_deadline() == T0 + 30  # its wake-ups are armed


def test_a_benched_group_is_not_used_until_its_cooldown_ends() -> None:
    """Requests avoid a group another process benched, and use it again once the bench ends."""
    core = core_of(models=("m",))
    core.learn(T0, Cooldown(project="Q", model="m", until=T0 + 5, reason="rate_limited_minute"))
    for _ in range(3):
        core.submit(T0)
    assert [d.key.label for d in dispatched(core, T0)] == ["a", "a", "a"]
    core.submit(T0 + 5)
    assert [d.key.label for d in dispatched(core, T0 + 5)] == ["b"]


def test_a_lane_cooldown_idles_just_that_lane() -> None:
    """A lane cooled elsewhere idles; the same key serves other models, and it returns on time."""
    core = core_of()
    core.learn(T0, Cooldown(project="P", key="a", model="m", until=T0 + 2, reason="timeout"))
    core.learn(T0, Cooldown(project="P", key="a", model="m", until=T0 + 1, reason="timeout"))
    assert core.snapshot(T0).lane("a", "m").cooldown_until == T0 + 2
    assert core.snapshot(T0).lane("a", "n").state.value == "available"
    core.submit(T0)
    core.submit(T0)
    assert [(d.key.label, d.model) for d in dispatched(core, T0)] == [("b", "m"), ("b", "m")]
    assert core.snapshot(T0 + 2).lane("a", "m").state.value == "available"


def test_a_cooled_model_sends_requests_to_the_next_tier() -> None:
    """A model another process saw overloaded is out of rotation here too, until its end."""
    core = core_of()
    core.learn(T0, Cooldown(model="m", until=T0 + 20, reason="overloaded"))
    core.learn(T0, Cooldown(model="m", until=T0 + 5, reason="overloaded"))
    core.submit(T0)
    assert [d.model for d in dispatched(core, T0)] == ["n"]
    kinds = [e.kind for e in core.take_events()]
    assert kinds == ["model_cooled", "fallback"]
    assert core.snapshot(T0 + 1).lane("a", "m").cooldown_until == T0 + 20


def test_a_disabled_key_is_never_used_and_disabling_twice_is_one_event() -> None:
    """A key disabled elsewhere is disabled here, once; requests go to the others."""
    core = core_of()
    core.learn(T0, DisabledKey(key="a", reason="key_invalid"))
    core.learn(T0, DisabledKey(key="a", reason="key_leaked"))
    assert core.snapshot(T0).lane("a", "m").reason == "key_invalid"
    assert [e.kind for e in core.take_events()] == ["key_disabled"]
    for _ in range(4):
        core.submit(T0)
    assert {d.key.label for d in dispatched(core, T0)} == {"b"}


def test_a_learned_limit_budgets_the_group() -> None:
    """A limit learned elsewhere is budgeted here: the group sends no more than it per minute."""
    core = core_of(models=("m",))
    core.learn(T0, DisabledKey(key="b", reason="key_invalid"))  # one group left: P/m
    core.learn(T0, LearnedLimit(project="P", model="m", dimension=QuotaDimension.REQUESTS_PER_MINUTE,
                                value=2, quota_id=RPM_ID, learned_at=T0))
    group = next(g for g in core.snapshot(T0).groups if (g.project, g.model) == ("P", "m"))
    assert [(limit.value, limit.source) for limit in group.limits] == [(2, "learned")]
    for _ in range(3):
        core.submit(T0)
    sent = dispatched(core, T0)
    assert len(sent) == 2
    for decision in sent:
        core.complete(decision.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0)
    assert dispatched(core, T0 + 59) == []
    assert len(dispatched(core, T0 + 60)) == 1


def test_a_configured_limit_wins_over_one_learned_elsewhere() -> None:
    """A learned limit never replaces a configured one."""
    core = core_of(limits=(Limit(model="m", rpm=5),))
    core.learn(T0, LearnedLimit(project="P", model="m", dimension=QuotaDimension.REQUESTS_PER_MINUTE,
                                value=2, quota_id=RPM_ID, learned_at=T0))
    group = next(g for g in core.snapshot(T0).groups if (g.project, g.model) == ("P", "m"))
    assert [(limit.value, limit.source) for limit in group.limits] == [(5, "configured")]


def test_shared_facts_round_trip_to_another_core() -> None:
    """What one core learned from its outcomes, given to another, reads back the same there."""
    first, second = core_of(), core_of()
    for _ in range(2):
        first.submit(T0)
    attempts = dispatched(first, T0)
    rpm_429 = Outcome(kind=OutcomeKind.RATE_LIMITED_MINUTE, retry_after=30.0,
                      violations=(Violation(QuotaDimension.REQUESTS_PER_MINUTE, 7, RPM_ID),))
    by_key = {d.key.label: d for d in attempts}
    first.complete(by_key["a"].attempt, rpm_429, T0)
    first.complete(by_key["b"].attempt, Outcome(kind=OutcomeKind.KEY_INVALID), T0)
    facts = first.shared_facts(T0)
    assert {type(fact) for fact in facts} == {Cooldown, DisabledKey, LearnedLimit}
    for fact in facts:
        second.learn(T0, fact)
    assert second.shared_facts(T0) == facts
    assert all("AIza" not in repr(fact) for fact in facts)  # labels, never secrets


def test_facts_in_force_only() -> None:
    """A cooldown that ended is no longer a fact worth sharing."""
    core = core_of()
    core.learn(T0, Cooldown(project="P", model="m", until=T0 + 3, reason="rate_limited_minute"))
    assert core.shared_facts(T0 + 2) != []
    assert core.shared_facts(T0 + 3) == []


@pytest.mark.parametrize("fact", [
    Cooldown(project="Nope", model="m", until=T0 + 1, reason="x"),
    Cooldown(model="nope", until=T0 + 1, reason="x"),
    Cooldown(project="P", key="nobody", model="m", until=T0 + 1, reason="x"),
    DisabledKey(key="nobody", reason="x"),
    LearnedLimit(project="P", model="nope", dimension=QuotaDimension.REQUESTS_PER_MINUTE,
                 value=3, quota_id=RPM_ID, learned_at=T0),
    "not a fact",
])
def test_bad_facts_raise_and_change_nothing(fact: SharedFact) -> None:
    """A fact naming what this pool does not have raises UsageError; the pool is unchanged."""
    core = core_of()
    before = core.snapshot(T0)
    with pytest.raises(UsageError):
        core.learn(T0, fact)
    assert core.snapshot(T0) == before
    assert core.take_events() == []
    assert core.next_deadline() == float("inf")


def test_records_check_their_values() -> None:
    """A record with a bad value fails at construction with an error naming the field."""
    with pytest.raises(UsageError, match=r"LearnedLimit\.value"):
        LearnedLimit(project="P", model="m", dimension=QuotaDimension.REQUESTS_PER_MINUTE,
                     value=0, quota_id=RPM_ID, learned_at=T0)
    with pytest.raises(UsageError, match=r"Cooldown\.until"):
        Cooldown(model="m", until=float("nan"), reason="x")


def test_time_must_not_run_backwards_for_facts() -> None:
    """Facts come with the current time, which must not run backwards."""
    core = core_of()
    core.poll(T0)
    with pytest.raises(UsageError, match="backwards"):
        core.learn(T0 - 1, DisabledKey(key="a", reason="key_invalid"))
    assert core.snapshot(T0).lane("a", "m").state.value == "available"


def test_pool_inputs_return_wakeups_and_events() -> None:
    """The pool's inputs answer with values: the wake-up times and the events, in order."""
    config = PoolConfig(keys=KEYS, models=["m", "n"], retry=RETRY)
    pool = Pool(config, Policy(), random.Random(0), wall_epoch=0.0, record_events=True)
    changes = pool.cool_group("P", "m", T0 + 9, "rate_limited_minute", T0)
    assert changes.wakeups == [T0 + 9]
    assert [(e.kind, e.project, e.model) for e in changes.events] == [("group_cooled", "P", "m")]
    assert pool.cool_group("P", "m", T0 + 8, "x", T0).wakeups == []  # earlier: nothing changes
    changes = pool.cool_model("n", T0 + 4, "overloaded", T0)
    assert changes.wakeups == [T0 + 4, T0 + Policy().probe_interval]
    assert pool.cool_lane("b", "m", T0 + 2, "timeout", T0).wakeups == [T0 + 2]
    assert [e.kind for e in pool.disable_key("a", "key_leaked", T0).events] == ["key_disabled"]
    assert pool.disable_key("a", "key_leaked", T0).events == []
    changes = pool.learn_limit("Q", "m", QuotaDimension.TOKENS_PER_MINUTE, 1000, T0, "tpm")
    assert [e.kind for e in changes.events] == ["limit_learned"]


@given(st.sampled_from(["rpm", "tpm", "rpd"]), st.integers(1, 10**9),
       st.text(max_size=40))
def test_a_learned_limits_reason_reads_back(dimension: str, value: int, quota_id: str) -> None:
    """The shared store reads learned limits from the ``limit_learned`` reason the pool writes:
    the two ends of that format are one pair of functions, held together here."""
    from keysched._snapshot import learned_limit_reason, parse_learned_limit

    assert parse_learned_limit(learned_limit_reason(dimension, value, quota_id)) == (
        dimension, value, quota_id)
    assert parse_learned_limit("shared_capacity") is None
