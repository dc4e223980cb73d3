"""The store's Lua scripts against a real Redis, held equal to `SharedPool`'s Python rules.

Each test runs on its own pool (key prefix) of the machine's Redis.  Times inside the scripts
are Redis's own clock; the comparisons use windows and leases long enough that nothing expires
during a test, and the expiry tests wait past a short expiry (a generous bound, never a
measurement).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_support import STORE_TIMEOUT

from keysched import ConfigurationError, RedisStore
from keysched._store import FOREVER, Claim, Settlement, SharedPool, StoredFact

DAY = 4_000_000_000.0


def claim(n: int, *, key: str = "k1", project: str = "p", model: str = "m", tokens: int = 10,
          rpm: int = 0, tpm: int = 0, rpd: int = 0, cap: int = 0, ttl: float = 600.0,
          window: float = 600.0, owner: str = "o") -> Claim:
    return Claim(owner, str(n), key, project, model, tokens, True, rpm, tpm, rpd, window, DAY,
                 ttl, cap, time.time())


@pytest.fixture
async def store(shared_redis: str, pool_name: str) -> AsyncIterator[RedisStore]:
    redis_store = RedisStore(shared_redis, pool_name=pool_name, timeout=STORE_TIMEOUT)
    yield redis_store
    await redis_store.aclose()


async def test_last_unit_is_taken_once(store: RedisStore) -> None:
    """A limit of 3 requests grants exactly 3 of 10 concurrent claims, and says which limit."""
    grants = await asyncio.gather(*(store.admit(claim(i, rpm=3), 0) for i in range(10)))
    assert sum(g.granted for g in grants) == 3
    assert {g.why for g in grants if not g.granted} == {"rpm"}


async def test_tokens_and_day_limits_refuse(store: RedisStore) -> None:
    """The token budget and the day's count refuse what would exceed them; the day's refusal
    says the day's end."""
    assert (await store.admit(claim(1, tokens=60, tpm=100), 0)).granted
    refused = await store.admit(claim(2, tokens=60, tpm=100), 0)
    assert (refused.granted, refused.why) == (False, "tpm")
    assert (await store.admit(claim(3, model="d", rpd=1), 0)).granted
    day = claim(4, model="d", rpd=1)
    refused_day = await store.admit(day, 0)
    assert (refused_day.granted, refused_day.why) == (False, "rpd")
    assert refused_day.retry_after == pytest.approx(DAY - day.wall)


async def test_refund_gives_the_unit_back(store: RedisStore) -> None:
    """A refunded settlement frees its unit; a plain one frees only the lease."""
    first = claim(1, rpm=1)
    assert (await store.admit(first, 0)).granted
    await store.settle([Settlement(first)], [])
    assert not (await store.admit(claim(2, rpm=1), 0)).granted
    await store.settle([Settlement(first, refund=True)], [])
    assert (await store.admit(claim(3, rpm=1), 0)).granted


async def test_cooldowns_merge_by_the_later_end(store: RedisStore) -> None:
    """A cooldown is never shortened; a later one extends it and bumps the version once."""
    later = time.time() + 500
    await store.settle([], [StoredFact("group", "p", "m", until=later, reason="a")])
    await store.settle([], [StoredFact("group", "p", "m", until=later - 100, reason="b")])
    version, facts = await store.facts()
    assert (version, [(f.until, f.reason) for f in facts]) == (1, [(later, "a")])
    await store.settle([], [StoredFact("group", "p", "m", until=later + 1, reason="c")])
    assert (await store.facts())[0] == 2


async def test_a_cooled_group_or_disabled_key_refuses_and_brings_the_facts(
        store: RedisStore) -> None:
    """An attempt on a group another process cooled, or on a disabled key, is refused, and
    the reply carries the facts when the caller's version is old."""
    until = time.time() + 500
    await store.settle([], [StoredFact("group", "p", "m", until=until, reason="429")])
    asked = claim(1)
    grant = await store.admit(asked, 0)
    assert (grant.granted, grant.why) == (False, "group")
    assert grant.retry_after == pytest.approx(until - asked.wall)
    assert grant.facts is not None
    assert grant.facts[0].until == until
    await store.settle([], [StoredFact("key", key="k2", until=FOREVER, reason="invalid")])
    assert (await store.admit(claim(2, key="k2", model="other"), 2)).why == "key"
    assert (await store.admit(claim(3, key="k3", model="other"), 2)).facts is None


async def test_leases_cap_and_expire(store: RedisStore) -> None:
    """A per-key cap counts leases across owners; an unreleased lease frees itself after its
    TTL, on Redis's clock."""
    assert (await store.admit(claim(1, cap=1, ttl=0.3, owner="dead"), 0)).granted
    refused = await store.admit(claim(2, cap=1, owner="alive"), 0)
    assert (refused.granted, refused.why) == (False, "in_flight")
    guard = time.monotonic() + 30  # hang guard only
    while not (await store.admit(claim(3, cap=1, owner="alive"), 0)).granted:
        assert time.monotonic() < guard
        await asyncio.sleep(0.05)


def test_bad_pool_name_is_refused() -> None:
    """A pool name with a brace would break the hash tag: a clear error names the field."""
    with pytest.raises(ConfigurationError, match="pool_name"):
        RedisStore("redis://127.0.0.1:6379/0", pool_name="a{b}")


OPS = st.lists(st.one_of(
    st.tuples(st.just("admit"), st.sampled_from(["k1", "k2"]), st.sampled_from(["m1", "m2"]),
              st.integers(0, 50), st.integers(0, 3), st.integers(0, 100), st.integers(0, 2),
              st.integers(0, 2), st.sampled_from(["o1", "o2", "o3"]), st.integers(0, 3)),
    st.tuples(st.just("settle"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("fact"), st.sampled_from(["group", "limit", "key"]),
              st.integers(1, 40), st.integers(1, 5)),
    st.tuples(st.just("wait"), st.floats(0.0, 15.0)),
), max_size=30)


# Several processes waiting in one group's line: one limit of 2 requests, no other limit to
# refuse first, and waits that land where room returns and places are kept.
LINE_OPS = st.lists(st.one_of(
    st.tuples(st.just("admit"), st.sampled_from(["k1", "k2"]), st.just("m1"),
              st.integers(0, 50), st.just(2), st.just(0), st.just(0), st.just(0),
              st.sampled_from(["o1", "o2", "o3"]), st.integers(1, 3)),
    st.tuples(st.just("wait"), st.sampled_from([0.01, 0.1, 0.3, 30.0])),
), min_size=10, max_size=30)


@settings(max_examples=30, deadline=None)
@given(ops=OPS)
def test_lua_equals_python(shared_redis: str, ops: list[tuple[object, ...]]) -> None:
    """Any sequence of admits, settlements, facts and waits gets the same answers from the Lua
    scripts as from `SharedPool`, expiries included (both on the caller's clock here:
    ``server_clock=False``)."""
    same_answers(shared_redis, ops)


@settings(max_examples=100, deadline=None)  # a line refusal needs a few steps to line up
@given(ops=LINE_OPS)
def test_lua_equals_python_in_the_line(shared_redis: str, ops: list[tuple[object, ...]]) -> None:
    """Processes waiting in a group's line get the same answers from the Lua scripts as from
    `SharedPool`: places taken, held, given up and lapsed alike."""
    same_answers(shared_redis, ops)


def same_answers(shared_redis: str, ops: list[tuple[object, ...]]) -> None:
    """Run `ops` on the Lua scripts and on `SharedPool`; assert each answer is the same."""
    import uuid

    async def run() -> None:
        name = f"test-lua-{uuid.uuid4().hex[:10]}"
        redis_store = RedisStore(shared_redis, pool_name=name, server_clock=False, timeout=STORE_TIMEOUT)
        python = SharedPool()
        now = 1_800_000_000.0
        granted: list[Claim] = []
        try:
            for n, op in enumerate(ops):
                if op[0] == "admit":
                    _, key, model, tokens, rpm, tpm, rpd, cap, owner, start = op
                    c = Claim(str(owner), str(n), str(key), "p", str(model), int(tokens), True,
                              int(rpm), int(tpm), int(rpd), 30.0, now + 1000.0, 20.0, int(cap),
                              now, 0.0 if start == 0 else 1_800_000_100.0 + int(start))
                    got = await redis_store.admit(c, python.version)
                    want = python.admit(c, python.version, now)
                    assert (got.granted, got.why, got.version) == (want.granted, want.why,
                                                                  want.version)
                    assert got.retry_after == pytest.approx(want.retry_after)
                    assert (got.facts is None) == (want.facts is None)
                    if got.granted:
                        granted.append(c)
                elif op[0] == "settle":
                    _, index, refund = op
                    if granted:
                        s = [Settlement(granted[int(index) % len(granted)], bool(refund))]
                        await redis_store.settle(s, [])
                        python.settle(s, [])
                elif op[0] == "wait":
                    now += float(op[1])
                else:
                    _, scope, at, value = op
                    fact = StoredFact(str(scope), "p", "m1" if scope != "key" else "",
                                      "k1" if scope == "key" else "",
                                      "rpm" if scope == "limit" else "",
                                      0.0 if scope == "limit" else now + int(at),
                                      int(value) if scope == "limit" else 0, "r")
                    await redis_store.settle([], [fact])
                    python.settle([], [fact])
            version, facts = await redis_store.facts()
            assert version == python.version
            assert sorted(facts) == sorted(python.facts()[1])
        finally:
            keys = [k async for k in redis_store.redis.scan_iter(match=f"{{{name}}}*")]
            if keys:
                await redis_store.redis.delete(*keys)
            await redis_store.aclose()

    asyncio.run(run())
