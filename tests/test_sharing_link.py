"""`StoreLink`, the client's side of a shared store, driven directly with a scheduler and a
store of our own (no I/O): what it asks of the store, and when."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from keysched import Key, PoolConfig
from keysched._sharing import StoreLink
from keysched._store import Claim, Grant, Settlement, StoredFact
from keysched.driver import Dispatch, Scheduler

FLASH = "gemini-2.5-flash"
EPOCH = 1_800_000_000.0


class FullStore:
    """A store whose group is full: every claim is refused for 30 s.  Each call lets other
    tasks run before it answers, as a round trip to Redis does."""

    def __init__(self) -> None:
        self.asked: list[Claim] = []
        self.asking = 0
        self.most_at_once = 0

    async def admit(self, claim: Claim, known_version: int) -> Grant:
        self.asked.append(claim)
        self.asking += 1
        self.most_at_once = max(self.most_at_once, self.asking)
        await asyncio.sleep(0)
        self.asking -= 1
        return Grant(False, 30.0, "rpm", 0, None)

    async def settle(self, settlements: Sequence[Settlement],
                     facts: Sequence[StoredFact]) -> None:
        pass

    async def facts(self) -> tuple[int, tuple[StoredFact, ...]]:
        return 0, ()

    async def aclose(self) -> None:
        pass


async def test_claims_of_one_group_ask_the_store_one_at_a_time() -> None:
    """The core decides three attempts on its one group at once (its own budget has room);
    the store is asked for the first (the oldest request, its place in the line), and once
    that is refused the other two are withdrawn without a call."""
    core = Scheduler(PoolConfig(keys=[Key(secret="secret-1", label="k1", project="p")],
                                models=[FLASH]), rng=random.Random(1))
    store = FullStore()
    link = StoreLink(store, core, clock=lambda: 0.0, wall_clock=lambda: EPOCH,
                     wall_epoch=EPOCH, timeout=5.0, lease_ttl=60.0)
    for _ in range(3):
        core.submit(0.0, deadline=60.0)
    dispatches = [d for d in core.poll(0.0) if isinstance(d, Dispatch)]
    assert len(dispatches) == 3
    answers = await asyncio.gather(*(link.admit(d, 10, True, 60.0 + n)
                                     for n, d in enumerate(dispatches)))
    assert answers == [False, False, False]
    assert len(store.asked) == 1
    assert store.most_at_once == 1
    assert store.asked[0].start_by == EPOCH + 60.0  # the oldest request's
    assert core.in_flight == 0  # all three withdrawn: they wait in the queue
    assert core.open_requests == 3
