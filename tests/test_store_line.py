"""The line of a shared group: room that returns goes to the request that must start soonest,
whichever process asks first (`keysched._store`'s docstring).

Each scenario runs on `SharedPool` (the rules in plain Python) and on `RedisStore` against a
real Redis, both on the caller's clock (``server_clock=False``: the claim's ``wall`` is the
store's time), so the times are exact and nothing depends on how fast the machine is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis_support import STORE_TIMEOUT

from keysched import RedisStore
from keysched._store import LINE_GRACE, LINE_RECHECK, Claim, Grant, SharedPool

DAY = 4_000_000_000.0
T0 = 1_800_000_000.0  # Unix seconds: the store's clock in these tests
WINDOW = 60.0

Ask = Callable[[Claim], Awaitable[Grant]]


def claim(owner: str, n: int, at: float, start_by: float, *, rpm: int = 2) -> Claim:
    """Process `owner`'s attempt `n` at `at` seconds, of a request to start by `start_by`."""
    return Claim(owner, str(n), "k1", "p", "m", 10, True, rpm, 0, 0, WINDOW, DAY, 600.0, 0,
                 T0 + at, 0.0 if start_by == 0 else T0 + start_by)


@pytest.fixture(params=["python", "redis"])
async def ask(request: pytest.FixtureRequest) -> AsyncIterator[Ask]:
    if request.param == "python":
        pool = SharedPool()

        async def python(c: Claim) -> Grant:
            return pool.admit(c, pool.version, c.wall)

        yield python
        return
    url = request.getfixturevalue("shared_redis")
    store = RedisStore(url, pool_name=request.getfixturevalue("pool_name"), server_clock=False,
                       timeout=STORE_TIMEOUT)

    async def redis(c: Claim) -> Grant:
        return await store.admit(c, 0)

    try:
        yield redis
    finally:
        await store.aclose()


async def fill(ask: Ask) -> None:
    """Process ``a`` takes both units of the group, at 0 and 0.2 s."""
    assert (await ask(claim("a", 1, 0.0, 500.0))).granted
    assert (await ask(claim("a", 2, 0.2, 500.0))).granted


async def test_room_that_returns_goes_to_the_older_request_not_the_first_to_ask(
        ask: Ask) -> None:
    """Processes b (a request to start by 100 s) and c (by 300 s) wait for a full group.  When
    a unit returns, c asks first: it is refused for the line, briefly, and b's request takes
    the unit; the next unit goes to c, though b's old place would still have been kept."""
    await fill(ask)
    b = await ask(claim("b", 1, 2.0, 100.0))
    c = await ask(claim("c", 1, 3.0, 300.0))
    assert (b.granted, b.why, c.granted, c.why) == (False, "rpm", False, "rpm")
    assert b.retry_after == pytest.approx(WINDOW - 2.0)
    first = await ask(claim("c", 2, WINDOW, 300.0))
    assert (first.granted, first.why) == (False, "line")
    assert 0 < first.retry_after <= LINE_RECHECK
    assert (await ask(claim("b", 2, WINDOW, 100.0))).granted
    again = await ask(claim("c", 3, WINDOW + LINE_RECHECK, 300.0))
    assert (again.granted, again.why) == (False, "rpm")  # b took the unit: full again
    # The second unit returns at 60.2 s, before b's old place would have lapsed (60.5 s):
    # b gave it up when it was granted.
    assert LINE_GRACE > 0.2
    assert (await ask(claim("c", 4, WINDOW + 0.2, 300.0))).granted


async def test_a_place_whose_process_does_not_come_back_lapses(ask: Ask) -> None:
    """b waits with an old request and never asks again (it was answered elsewhere): the room
    is held for it only until a grace after it returns, then c gets it."""
    await fill(ask)
    assert (await ask(claim("b", 1, 2.0, 100.0))).why == "rpm"
    assert (await ask(claim("c", 1, 3.0, 300.0))).why == "rpm"
    held = await ask(claim("c", 2, WINDOW, 300.0))
    assert held.why == "line"
    assert (await ask(claim("c", 3, WINDOW + LINE_GRACE + 0.001, 300.0))).granted


async def test_a_younger_request_of_the_same_process_takes_its_place(ask: Ask) -> None:
    """A process keeps one place per group, that of its latest refusal: once b asks with a
    request younger than c's, c goes first."""
    await fill(ask)
    assert (await ask(claim("b", 1, 2.0, 100.0))).why == "rpm"
    assert (await ask(claim("c", 1, 3.0, 300.0))).why == "rpm"
    assert (await ask(claim("c", 2, WINDOW, 300.0))).why == "line"
    assert (await ask(claim("b", 2, WINDOW, 400.0))).why == "line"  # b's old one was answered
    assert (await ask(claim("c", 3, WINDOW + LINE_RECHECK, 300.0))).granted


async def test_room_enough_for_everyone_waiting_holds_nobody_back(ask: Ask) -> None:
    """With room for the older request and this one too, nothing is held (rpm 3, one used)."""
    assert (await ask(claim("a", 1, 0.0, 500.0, rpm=1))).granted
    assert (await ask(claim("b", 1, 1.0, 100.0, rpm=1))).why == "rpm"
    assert (await ask(claim("c", 1, 2.0, 300.0, rpm=3))).granted


async def test_a_claim_without_start_by_takes_no_place_and_is_never_held(ask: Ask) -> None:
    """``start_by`` 0 (a driver that does not say): no place is taken, and such a claim is
    not ordered (the store's rules before the line)."""
    await fill(ask)
    assert (await ask(claim("b", 1, 2.0, 0.0))).why == "rpm"
    assert (await ask(claim("c", 1, 3.0, 300.0))).why == "rpm"
    assert (await ask(claim("b", 2, WINDOW, 0.0))).granted  # c's younger place holds nothing
    assert (await ask(claim("c", 2, WINDOW + 0.2, 300.0))).granted  # b left no place
