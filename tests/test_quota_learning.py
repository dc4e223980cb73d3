"""Quota intelligence in the core: 429s teach limits, unknown groups are probed, not flooded.

Each test drives the pure `Scheduler` by hand in core time; the simulator-level property and the
loopback run live in `test_quota_learning_sim.py` and `test_quota_learning_e2e.py`.
"""

from __future__ import annotations

import random

import pytest

from keysched import (
    FailReason,
    Key,
    Limit,
    Outcome,
    OutcomeKind,
    PoolConfig,
    QuotaDimension,
    RetryPolicy,
    Scheduler,
    Violation,
)
from keysched._decisions import Decision, Dispatch, Fail

T0 = 1_000_000.0
RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
RPD_ID = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
TPM_ID = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
RETRY = RetryPolicy(max_attempts=3, jitter=0.0, deadline=1000.0, quota_margin=0.0,
                    relearn_after=None)


def rpm_429(value: int | None, retry_after: float = 10.0) -> Outcome:
    return Outcome(kind=OutcomeKind.RATE_LIMITED_MINUTE, retry_after=retry_after,
                   violations=(Violation(QuotaDimension.REQUESTS_PER_MINUTE, value, RPM_ID),))


def core_of(keys: list[Key], *, models: tuple[str, ...] = ("m",), limits: tuple[Limit, ...] = (),
            retry: RetryPolicy = RETRY) -> Scheduler:
    config = PoolConfig(keys=keys, models=models, limits=limits, retry=retry)
    core = Scheduler(config, rng=random.Random(0))
    core.poll(T0)
    return core


def one_key(**kwargs: object) -> Scheduler:
    return core_of([Key(secret="s1", label="k1", project="p1")], **kwargs)  # type: ignore[arg-type]


def dispatches(decisions: list[Decision]) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


def send(core: Scheduler, now: float, count: int = 1) -> list[Dispatch]:
    for _ in range(count):
        core.submit(now)
    return dispatches(core.poll(now))


def answer(core: Scheduler, attempts: list[Dispatch], now: float) -> None:
    for d in attempts:
        core.complete(d.attempt, Outcome(kind=OutcomeKind.SUCCESS), now)


def group_limits(core: Scheduler, now: float) -> dict[str, tuple[int, str]]:
    [group] = core.snapshot(now).groups
    return {limit.dimension.value: (limit.value, limit.source) for limit in group.limits}


def test_a_429_teaches_its_limit_and_the_budget_holds_it_from_then_on() -> None:
    """After one 429 saying "5 per minute", the group never sends a sixth inside a minute."""
    core = one_key()
    answer(core, send(core, T0, 5), T0)  # five answered: the window is full at the server
    [sixth] = send(core, T0 + 1)
    core.complete(sixth.attempt, rpm_429(5, retry_after=59.0), T0 + 1)
    assert group_limits(core, T0 + 1) == {"rpm": (5, "learned")}
    [event] = [e for e in core.take_events() if e.kind == "limit_learned"]
    assert (event.project, event.model, event.reason) == ("p1", "m", f"rpm=5 from {RPM_ID}")
    # The cooldown ends at T0 + 60, exactly when the first five leave the window: one retry goes.
    assert core.poll(T0 + 59.9) == []
    [retry] = dispatches(core.poll(T0 + 60))
    assert retry.number == 2
    # The refused attempt was not counted: four more fit before T0 + 120 ... and no fifth.
    answer(core, [retry], T0 + 60)
    assert len(send(core, T0 + 61, 5)) == 4
    assert core.next_deadline() == T0 + 120


def test_a_configured_limit_wins_over_a_learned_one() -> None:
    core = one_key(limits=(Limit(model="m", rpm=3),))
    [first] = send(core, T0)
    core.complete(first.attempt, rpm_429(100), T0)
    assert group_limits(core, T0) == {"rpm": (3, "configured")}
    assert not [e for e in core.take_events() if e.kind == "limit_learned"]


def test_a_later_429_with_another_value_updates_the_learned_limit() -> None:
    core = one_key()
    [first] = send(core, T0)
    core.complete(first.attempt, rpm_429(10, retry_after=1.0), T0)
    [again] = dispatches(core.poll(T0 + 1))
    core.complete(again.attempt, rpm_429(4, retry_after=1.0), T0 + 1)
    assert group_limits(core, T0 + 1) == {"rpm": (4, "learned")}
    learned = [e.reason for e in core.take_events() if e.kind == "limit_learned"]
    assert learned == [f"rpm=10 from {RPM_ID}", f"rpm=4 from {RPM_ID}"]


@pytest.mark.parametrize("value", [None])
def test_a_429_without_a_value_probes_the_group_after_its_cooldown(value: int | None) -> None:
    """Limit still unknown: when the cooldown ends, one attempt goes; more follow answers."""
    core = core_of([Key(secret=f"s{i}", label=f"k{i}", project="p1") for i in range(4)])
    [first] = send(core, T0)
    core.complete(first.attempt, rpm_429(value, retry_after=30.0), T0)
    for _ in range(7):
        core.submit(T0 + 1)
    assert dispatches(core.poll(T0 + 1)) == []  # benched
    [probe] = dispatches(core.poll(T0 + 30))  # eight wait; one probe goes
    assert core.snapshot(T0 + 30).groups[0].probing
    answer(core, [probe], T0 + 31)
    assert len(dispatches(core.poll(T0 + 31))) == 2  # slow start: twice as many
    assert core.in_flight == 2


def test_a_bare_429_also_reopens_the_group_probing() -> None:
    core = core_of([Key(secret=f"s{i}", label=f"k{i}", project="p1") for i in range(3)])
    [first] = send(core, T0)
    core.complete(first.attempt, Outcome(kind=OutcomeKind.SHARED_CAPACITY), T0)
    for _ in range(5):
        core.submit(T0)
    core.poll(T0)
    assert len(dispatches(core.poll(T0 + RETRY.shared_capacity_cooldown))) == 1


def test_quota_429s_do_not_spend_the_request_s_attempts() -> None:
    """A request refused on quota five times with max_attempts=3 still gets its answer."""
    core = core_of([Key(secret=f"s{i}", label=f"k{i}", project=f"p{i}") for i in range(6)])
    [attempt] = send(core, T0)
    for n in range(5):
        core.complete(attempt.attempt, rpm_429(None, retry_after=50.0), T0 + n)
        [attempt] = dispatches(core.poll(T0 + n))
    core.complete(attempt.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0 + 5)
    assert core.snapshot().requests_finished == 1


def test_quota_429s_still_end_a_request_at_four_times_max_attempts() -> None:
    """A server that refuses for ever does not keep a request open for ever."""
    core = core_of([Key(secret=f"s{i}", label=f"k{i}", project=f"p{i}") for i in range(20)])
    [attempt] = send(core, T0)
    for n in range(4 * RETRY.max_attempts - 1):
        core.complete(attempt.attempt, rpm_429(None, retry_after=500.0), T0)
        [attempt] = dispatches(core.poll(T0))
        assert attempt.number == n + 2
    core.complete(attempt.attempt, rpm_429(None, retry_after=500.0), T0)
    [fail] = core.poll(T0)
    assert isinstance(fail, Fail)
    assert fail.reason is FailReason.ATTEMPTS_EXHAUSTED


def test_a_limit_learned_on_one_group_gates_its_full_siblings_to_one_attempt() -> None:
    """Ten free projects fill together: once one says "5", the others past 5 go one at a time."""
    keys = [Key(secret=f"s{i}", label=f"k{i}", project=f"p{i}") for i in range(3)]
    core = core_of(keys)
    answer(core, send(core, T0, 15), T0)  # five each, least-loaded
    [a, b, _] = send(core, T0 + 1, 3)  # one more each: all past the (unknown) limit
    core.complete(a.attempt, rpm_429(5, retry_after=59.0), T0 + 1)
    for _ in range(4):
        core.submit(T0 + 1)
    # b and c are still in flight: their groups are past p's 5 and take no second attempt.
    assert dispatches(core.poll(T0 + 1)) == []
    core.complete(b.attempt, rpm_429(5, retry_after=59.0), T0 + 2)
    assert dispatches(core.poll(T0 + 2)) == []


def test_answers_past_a_sibling_s_limit_let_more_through_until_a_429_teaches() -> None:
    """A project on a better tier is not held to its sibling's limit: each answer past it allows
    one more attempt in flight (1, 2, 4 ... per round trip), until its own 429 teaches it its
    own limit."""
    keys = [Key(secret="s0", label="k0", project="free")] + [
        Key(secret=f"p{i}", label=f"paid{i}", project="paid") for i in range(6)]
    core = core_of(keys)
    answer(core, send(core, T0, 12), T0)  # "free" sent 5 or so; "paid" the rest
    for _ in range(6):  # one more each, until "free" is refused
        [d] = send(core, T0 + 1)
        if d.key.label == "k0":
            core.complete(d.attempt, rpm_429(5, retry_after=59.0), T0 + 1)  # "free" learns 5
            break
        answer(core, [d], T0 + 1)
    for _ in range(20):
        core.submit(T0 + 1)
    waves = []
    at = T0 + 1
    for _ in range(3):  # "paid" is past 5: one in flight, then two, then four
        wave = dispatches(core.poll(at))
        waves.append(len(wave))
        assert {d.key.label.startswith("paid") for d in wave} == {True}
        at += 1
        answer(core, wave, at)
    assert waves == [1, 2, 4]
    # Its own 429 teaches it 50, and starts the count over.
    [d] = dispatches(core.poll(at))[:1] or [None]  # type: ignore[list-item]
    assert d is not None
    core.complete(d.attempt, rpm_429(50, retry_after=1.0), at)
    limits = {g.project: g.limits for g in core.snapshot(at).groups}
    assert [(k.value, k.source) for k in limits["paid"]] == [(50, "learned")]


def test_a_learned_limit_is_tested_after_relearn_after_and_an_answer_drops_it() -> None:
    retry = RetryPolicy(max_attempts=3, jitter=0.0, deadline=2000.0, quota_margin=1.0,
                        relearn_after=300.0)
    core = one_key(retry=retry)
    [first] = send(core, T0)
    core.complete(first.attempt, rpm_429(1, retry_after=60.0), T0)  # learns 1 per minute
    for _ in range(20):
        core.submit(T0)
    sends = []
    at = T0
    while at < T0 + 300:  # the core wakes when it has something to do; one per 61 s, as learned
        at = core.next_deadline()
        sent = dispatches(core.poll(at))
        sends += [at] * len(sent)
        answer(core, sent, at)
    # (The refused attempt left the budget: the first goes when the cooldown ends.)
    assert sends == [T0 + 60, T0 + 121, T0 + 182, T0 + 243, T0 + 300]
    # The last one went at T0 + 300, past the learned limit (the window was full): an answer.
    assert group_limits(core, T0 + 300) == {}
    assert [e.kind for e in core.take_events() if e.kind == "limit_unlearned"] == [
        "limit_unlearned"]
    # Beyond the old limit, one attempt at a time until a 429 teaches the new one.
    assert len(dispatches(core.poll(T0 + 300))) == 1


def test_bad_quota_values_never_make_a_budget() -> None:
    """Absent, zero, absurd values (the wire turns them into None) teach nothing; a learned
    limit of any usable size never blocks for ever."""
    core = one_key()
    [first] = send(core, T0)
    core.complete(first.attempt, rpm_429(None, retry_after=1.0), T0)
    assert group_limits(core, T0) == {}
    [probe] = dispatches(core.poll(T0 + 1))
    core.complete(probe.attempt, Outcome(
        kind=OutcomeKind.RATE_LIMITED_MINUTE, retry_after=1.0,
        violations=(Violation(QuotaDimension.TOKENS_PER_MINUTE, 1, TPM_ID),)), T0 + 1)
    assert group_limits(core, T0 + 1) == {"tpm": (1, "learned")}
    rid = core.submit(T0 + 1, input_tokens=50, deadline=30.0)  # it can never fit the TPM ...
    [retry] = dispatches(core.poll(T0 + 2))
    assert retry.request != rid
    answer(core, [retry], T0 + 2)
    assert dispatches(core.poll(T0 + 2)) == []
    wake = core.next_deadline()
    assert wake <= T0 + 31  # ... and nothing waits for ever: its deadline ends it
    [fail] = core.poll(T0 + 31)
    assert isinstance(fail, Fail)
    assert fail.request == rid


def test_a_spend_429_benches_every_project_of_the_billing_account() -> None:
    keys = [Key(secret="s1", label="k1", project="a", billing_account="acct"),
            Key(secret="s2", label="k2", project="b", billing_account="acct"),
            Key(secret="s3", label="k3", project="c")]
    core = core_of(keys, models=("m", "n"))
    [first] = send(core, T0)
    spend = Outcome(kind=OutcomeKind.SPEND_LIMITED, retry_after=120.0, violations=(
        Violation(QuotaDimension.SPEND, 10, "GenerateContentSpendPerBillingAccountPer10Minutes"),))
    core.complete(first.attempt, spend, T0)
    snap = core.snapshot(T0)
    cooling = {(g.project, g.model) for g in snap.groups if g.cooldown_until == T0 + 120.0}
    assert cooling == {("a", "m"), ("a", "n"), ("b", "m"), ("b", "n")}
    [retry] = dispatches(core.poll(T0))
    assert retry.key.label == "k3"
    assert group_limits_all(core) == {}  # spend is dollars: not a request budget


def group_limits_all(core: Scheduler) -> dict[tuple[str, str], object]:
    return {(g.project, g.model): g.limits for g in core.snapshot().groups if g.limits}


def test_billing_accounts_must_agree_within_a_project() -> None:
    from keysched import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"keys\[1\]\.billing_account"):
        PoolConfig(keys=[Key(secret="s1", project="p", billing_account="x"),
                         Key(secret="s2", project="p", billing_account="y")], models=["m"])
