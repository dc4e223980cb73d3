"""The seam between a core and a shared store (`keysched._core_facts`): one conversion between
the core's records of facts (core time) and the store's (wall-clock time), and the rules for
what goes in and what comes out.

Each test drives a pure `Scheduler` through `CoreFacts` by hand, in core time.
"""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from keysched import Key, PoolConfig, RetryPolicy, Scheduler
from keysched._core_facts import CoreFacts, from_stored, to_stored
from keysched._decisions import Dispatch
from keysched._facts import Cooldown, DisabledKey, LearnedLimit, SharedFact
from keysched._outcomes import QuotaDimension
from keysched._store import FOREVER, Grant, StoredFact

T0 = 1_000.0
EPOCH = 1_765_000_000.0  # a Unix time of the 2020s: wall-clock ends carry its rounding
KEYS = [Key(secret="AIzaSecretA", label="a", project="P"),
        Key(secret="AIzaSecretB", label="b", project="Q")]

ends = st.floats(0.0, 10**7, allow_nan=False) | st.just(math.inf)
cooldowns = st.builds(
    lambda scope, until: Cooldown(model="m", until=until, reason="rate_limited_minute",
                                  project=None if scope == "model" else "P",
                                  key="a" if scope == "lane" else None),
    st.sampled_from(["group", "lane", "model"]), ends)
limits = st.builds(lambda dimension, value: LearnedLimit(
    project="P", model="m", dimension=dimension, value=value, quota_id="shared", learned_at=T0),
    st.sampled_from([QuotaDimension.REQUESTS_PER_MINUTE, QuotaDimension.TOKENS_PER_MINUTE,
                     QuotaDimension.REQUESTS_PER_DAY]), st.integers(1, 10**9))
facts = cooldowns | limits | st.just(DisabledKey(key="a", reason="key_invalid"))


def facts_of() -> CoreFacts:
    config = PoolConfig(keys=KEYS, models=["m", "n"], retry=RetryPolicy(jitter=0.0))
    return CoreFacts(Scheduler(config, rng=random.Random(0), wall_epoch=EPOCH), EPOCH)


@given(facts)
def test_a_fact_reads_back_from_its_stored_form(fact: SharedFact) -> None:
    """`from_stored` undoes `to_stored` (an end up to the wall clock's rounding), and the stored
    form survives the trip exactly: what decides whether an event is an echo of a fact."""
    stored = to_stored(fact, EPOCH)
    back = from_stored(stored, EPOCH, T0)
    assert back is not None
    assert type(back) is type(fact)
    if isinstance(fact, Cooldown):
        assert isinstance(back, Cooldown)
        assert back.until == fact.until or abs(back.until - fact.until) < 1e-6
        assert (back.project, back.key, back.model, back.reason) == (
            fact.project, fact.key, fact.model, fact.reason)
    else:
        assert back == fact
    assert to_stored(back, EPOCH) == stored


def test_the_stored_form_is_wall_clock_time_and_forever() -> None:
    """Ends are Unix times in the store; one that never comes is `FOREVER` (Lua carries it)."""
    group = to_stored(Cooldown(model="m", project="P", until=T0, reason="x"), EPOCH)
    assert (group.scope, group.until) == ("group", T0 + EPOCH)
    forever = to_stored(Cooldown(model="m", until=math.inf, reason="x"), EPOCH)
    assert (forever.scope, forever.until) == ("model", FOREVER)
    assert to_stored(DisabledKey(key="a", reason="x"), EPOCH).until == FOREVER


def test_stored_facts_the_core_does_not_take_are_none() -> None:
    """A spend limit, a limit below one and an unknown scope are not the core's to learn."""
    for fact in (StoredFact("limit", "P", "m", "", "spend", value=5),
                 StoredFact("limit", "P", "m", "", "rpm", value=0),
                 StoredFact("planet", "P", "m")):
        assert from_stored(fact, EPOCH, T0) is None


def test_facts_about_what_this_pool_lacks_change_nothing() -> None:
    """A fact naming a key, project or model this pool does not have, or a cooldown already
    over, is dropped without an error: another process's pool may be larger."""
    facts = facts_of()
    core = facts.core
    core.poll(T0)
    before = core.snapshot(T0)
    for fact in (StoredFact("key", key="nobody", until=FOREVER, reason="key_invalid"),
                 StoredFact("group", "Nope", "m", until=EPOCH + T0 + 60, reason="x"),
                 StoredFact("model", model="nope", until=EPOCH + T0 + 60, reason="x"),
                 StoredFact("lane", "P", "m", "nobody", until=EPOCH + T0 + 60, reason="x"),
                 StoredFact("limit", "P", "nope", "", "rpm", value=3),
                 StoredFact("group", "P", "m", until=EPOCH + T0 - 1, reason="over")):
        facts.apply(fact, T0)
    assert core.snapshot(T0) == before
    assert core.take_events() == []


def test_a_fact_from_the_store_is_not_published_back_but_news_is() -> None:
    """Applying a stored fact makes the core announce it; that event is an echo and is not
    published again, while a later, longer cooldown of the same group is news."""
    facts = facts_of()
    core = facts.core
    core.poll(T0)
    stored = StoredFact("group", "P", "m", until=EPOCH + T0 + 30, reason="rate_limited_minute")
    facts.apply(stored, T0)
    events = core.take_events()
    assert [event.kind for event in events] == ["group_cooled"]
    assert facts.facts_from_events(events) == []
    facts.apply(stored._replace(until=stored.until + 30), T0 + 1)
    facts.apply(StoredFact("key", key="b", until=FOREVER, reason="key_invalid"), T0 + 1)
    assert facts.facts_from_events(core.take_events()) == []
    core.learn(T0 + 2, Cooldown(model="m", project="P", until=T0 + 90, reason="local"))
    published = facts.facts_from_events(core.take_events())
    assert [(f.scope, f.until, f.reason) for f in published] == [
        ("group", T0 + 90 + EPOCH, "local")]


def test_a_refusal_teaches_the_core_and_holds_back_the_next_attempt() -> None:
    """A full shared budget cools the group until room returns; another dispatch already
    decided on that group is withdrawn without asking the store again."""
    config = PoolConfig(keys=[Key(secret="AIzaSecretA", label="a", project="P"),
                              Key(secret="AIzaSecretC", label="c", project="P")],
                        models=["m"], retry=RetryPolicy(jitter=0.0))
    facts = CoreFacts(Scheduler(config, rng=random.Random(0), wall_epoch=EPOCH), EPOCH)
    core = facts.core
    for _ in range(2):
        core.submit(T0)
    first, second = (d for d in core.poll(T0) if isinstance(d, Dispatch))
    claim = facts.claim("me", "1", first, 10, True, now=T0, day_end=FOREVER, lease_ttl=60.0,
                        key_cap=0)
    assert not facts.answer(Grant(False, 12.0, "rpm"), claim, first.attempt, T0)
    (group,) = core.snapshot(T0).groups
    assert group.reason == "shared budget: rpm full"
    assert group.cooldown_until is not None
    assert abs(group.cooldown_until - (T0 + 12)) < 1e-6
    assert facts.held_back(second, T0)
    assert core.in_flight == 0
    # The store said so itself: the cooldown is not published back to it.
    assert facts.facts_from_events(core.take_events()) == []


def test_a_dispatch_on_a_key_disabled_since_is_held_back() -> None:
    """A fact from the store that disables a key withdraws the dispatches already decided on
    it, without a store call; the others go ahead."""
    facts = facts_of()
    core = facts.core
    for _ in range(2):
        core.submit(T0, models=["m"])
    decided = {d.key.label: d for d in core.poll(T0) if isinstance(d, Dispatch)}
    facts.apply(StoredFact("key", key="a", until=FOREVER, reason="key_invalid"), T0)
    assert facts.held_back(decided["a"], T0)
    assert not facts.held_back(decided["b"], T0)
    assert core.in_flight == 1
