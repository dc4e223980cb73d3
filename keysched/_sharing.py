"""`StoreLink`: how `KeyedClient` talks to a shared `Store`, and what it does when it cannot.

Theory of operation
-------------------
The driver calls the link at two points of an attempt's life, and nowhere else:

- **dispatch** (`admit`, awaited before the attempt is sent): one store call takes the
  attempt's budget units and lease and brings back the facts other processes learned since the
  last call, which `CoreFacts` feeds to the core.  If the store refuses (a shared budget is
  full, or the key's cap of attempts in flight across processes), the link cools the group (or
  the lane) in the core until the store says room returns, and withdraws the attempt, which
  was not sent: the request waits in the queue without spending an attempt.
- **end** (`settle`, not awaited): the lease is released, the units of an attempt a quota 429
  refused are given back, and the facts the core learned since (from its pool events, `note`)
  are published.  These are batched and sent by one background task, one call per batch.

The store failing never fails a call.  A store call that raises or takes longer than the
store's timeout counts as the store being away: the attempt goes on as if granted (the core's
own budgets still hold), the degradation is logged (a WARNING the first time, INFO after: a
flapping store must not flood the log), and the store is tried again
at most once per `RETRY_AFTER` seconds (in the meantime, nothing waits on it).  When a call
succeeds again, the link logs the recovery once, fetches every fact (the store's version is
forgotten) and publishes again every fact its core holds, so nothing learned meanwhile is lost.
No key is ever disabled because the store failed: a store error never becomes an `Outcome`.

Decisions where the issue was silent:

- A lease lives the client's ``timeout`` plus `LEASE_SLACK` seconds (a worker that dies frees
  its share then).  A stream may outlive its lease; the cap then undercounts it, which is the safe
  side for liveness.
- An attempt cancelled while its `admit` is in flight is settled as refunded: it was never
  sent.
- A refusal for the in-flight cap cools the lane for `keysched._core_facts.CAP_RECHECK` seconds
  (other processes' attempts end without telling this one).
- A process asks the store for one quota group one claim at a time.  A poll decides attempts
  on every lane the core believes free, and when a group's room returns, the core (whose own
  budget counts only its own attempts) sends several requests at it.  Asked all at once, each
  would be refused in turn (a round trip apiece), one of the younger ones could take the room
  its older one waited for, and the process's place in the store's line would be that of
  whichever refusal came last.  Asked in turn, the oldest (decided first) asks first, and the
  others are withdrawn without a call once it is refused (`CoreFacts.held_back`).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from keysched._core_facts import REFUNDED, CoreFacts
from keysched._decisions import Dispatch
from keysched._errors import ConfigurationError
from keysched._outcomes import OutcomeKind
from keysched._pacific import next_pacific_midnight
from keysched._snapshot import PoolEvent
from keysched._store import Claim, Settlement, Store, StoredFact

if TYPE_CHECKING:
    import asyncio

    from keysched._core import Scheduler

__all__ = ["StoreLink"]

logger = logging.getLogger("keysched")

RETRY_AFTER = 1.0
"""Seconds between tries of a store that failed."""
LEASE_SLACK = 1.0
"""Seconds a lease outlives its attempt's timeout."""
STORE_TIMEOUT = 0.25
"""Seconds a store's call may take before the client goes on without it (a `RedisStore`
carries its own ``timeout``)."""


def open_store(store: str | Store, pool_name: str) -> Store:
    """The `Store` that `KeyedClient`'s ``store`` argument names.

    Raises:
        ConfigurationError: neither a redis URL nor a store object, or a bad pool name.
    """
    from keysched._redis_store import RedisStore, check_pool_name

    check_pool_name(pool_name)
    if isinstance(store, str):
        if not store.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("store", "expected a redis:// URL or a Store object (the "
                                     "value is not shown: it may hold a password)")
        return RedisStore(store, pool_name=pool_name, timeout=STORE_TIMEOUT)
    if not all(callable(getattr(store, name, None))
               for name in ("admit", "settle", "facts", "aclose")):
        raise ConfigurationError("store", f"expected a redis:// URL or a Store object, got "
                                 f"{type(store).__name__}")
    return store


class StoreLink:
    """The driver's side of a shared store (see the module docstring).

    Args:
        store: the shared store.
        core: the client's scheduler.
        clock: the client's monotonic clock (core time).
        wall_clock: Unix seconds.
        wall_epoch: Unix time at core time 0.
        timeout: the longest a store call may take before it counts as failed.
        lease_ttl: how long an attempt's lease lives if it is never released.
        key_cap: the most attempts in flight per key across processes (0: no cap).
    """

    def __init__(self, store: Store, core: Scheduler, *, clock: Callable[[], float],
                 wall_clock: Callable[[], float], wall_epoch: float, timeout: float,
                 lease_ttl: float, key_cap: int = 0) -> None:
        self.store = store
        self.facts = CoreFacts(core, wall_epoch)
        self.core = core
        self.owner = secrets.token_hex(8)
        self._clock = clock
        self._wall_clock = wall_clock
        self._timeout = timeout
        self._key_cap = key_cap
        self._lease_ttl = lease_ttl
        self.degraded = False
        self.degradations = 0  # times the store went away (for tests and dashboards)
        self._retry_at = -math.inf
        self._settlements: list[Settlement] = []
        self._outgoing: list[StoredFact] = []
        self._flusher: asyncio.Task[None] | None = None
        self._next_attempt = 0
        self._day_end = -math.inf
        self._asking: dict[tuple[str, str], asyncio.Lock] = {}  # per group (module docstring)

    @classmethod
    def open(cls, store: str | Store, pool_name: str, core: Scheduler,
             clock: Callable[[], float], wall_clock: Callable[[], float],
             attempt_timeout: float, key_cap: int | None) -> StoreLink:
        """The link `KeyedClient` makes for its ``store`` argument (see `open_store`)."""
        shared = open_store(store, pool_name)
        return cls(shared, core, clock=clock, wall_clock=wall_clock,
                   wall_epoch=wall_clock() - clock(),
                   timeout=getattr(shared, "timeout", STORE_TIMEOUT),  # a RedisStore's own
                   lease_ttl=attempt_timeout + LEASE_SLACK, key_cap=key_cap or 0)

    # -- dispatch ------------------------------------------------------------------------------

    async def admit(self, dispatch: Dispatch, tokens: int, spends_quota: bool,
                    start_by: float | None = None) -> Claim | bool | None:
        """Ask the store for the attempt's units and lease (`start_by`: the core time after
        which its request may not start, its place in the store's line if it is refused).

        Returns:
            The `Claim` to settle when the attempt ends; None to send without one (the store
            is away); False if the store refused and the attempt was withdrawn (the caller
            pumps the core and waits for the request's next decision).
        """
        import asyncio

        if self.degraded and self._clock() < self._retry_at:
            return None
        group = (dispatch.key.project or "", dispatch.model)
        asking = self._asking.get(group)
        if asking is None:
            asking = self._asking[group] = asyncio.Lock()
        async with asking:  # one at a time per group (module docstring)
            return await self._ask(dispatch, tokens, spends_quota, start_by)

    async def _ask(self, dispatch: Dispatch, tokens: int, spends_quota: bool,
                   start_by: float | None) -> Claim | bool | None:
        """`admit`, once the group's earlier claims of this process have their answers."""
        import asyncio

        now = self._clock()  # core time until the store answers
        if self.degraded and now < self._retry_at:
            return None
        if self.facts.held_back(dispatch, now):
            return False
        wall = self._wall_clock()
        if wall >= self._day_end:
            self._day_end = next_pacific_midnight(wall)
        self._next_attempt += 1
        claim = self.facts.claim(self.owner, str(self._next_attempt), dispatch, tokens,
                                 spends_quota, now=now, day_end=self._day_end,
                                 lease_ttl=self._lease_ttl, key_cap=self._key_cap,
                                 start_by=start_by)
        try:
            async with asyncio.timeout(self._timeout):
                grant = await self.store.admit(claim, self.facts.version)
        except asyncio.CancelledError:
            self._queue(Settlement(claim, refund=True), ())  # it may have been taken
            raise
        except Exception as exc:  # whatever the store raised: go on alone (module docstring)
            self._away(exc)
            return None
        now = self._clock()
        if self.degraded:
            self._back(now)
        return claim if self.facts.answer(grant, claim, dispatch.attempt, now) else False

    # -- end -----------------------------------------------------------------------------------

    def settle(self, claim: Claim | bool | None, kind: OutcomeKind) -> None:
        """The attempt of `claim` (what `admit` returned) ended with `kind`: release its lease
        (in the background)."""
        if isinstance(claim, Claim):
            self._queue(Settlement(claim, refund=kind in REFUNDED), ())

    def note(self, events: Iterable[PoolEvent]) -> None:
        """Publish the facts among the core's new pool events (in the background)."""
        facts = self.facts.facts_from_events(events)
        if facts:
            self._queue(None, facts)

    def _queue(self, settlement: Settlement | None, facts: Iterable[StoredFact]) -> None:
        if settlement is not None:
            self._settlements.append(settlement)
        self._outgoing.extend(facts)
        if self._flusher is None or self._flusher.done():
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a client built outside one): the next call sends
                return
            self._flusher = loop.create_task(self._flush())

    async def _flush(self) -> None:
        import asyncio

        while self._settlements or self._outgoing:
            if self.degraded and self._clock() < self._retry_at:
                # Away: leases expire by themselves; the facts are published again from the
                # core's state on recovery (`_back`).
                self._settlements.clear()
                self._outgoing.clear()
                return
            settlements, self._settlements = self._settlements, []
            facts, self._outgoing = self._outgoing, []
            try:
                async with asyncio.timeout(self._timeout):
                    await self.store.settle(settlements, facts)
            except Exception as exc:  # the store is away (module docstring)
                self._away(exc)
            else:
                if self.degraded:
                    self._back(self._clock())

    async def aclose(self) -> None:
        """Send what is queued (bounded by the timeout), then close the store."""
        import asyncio

        flusher = self._flusher
        if flusher is not None and not flusher.done():
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await asyncio.shield(flusher)
            except (TimeoutError, Exception):
                flusher.cancel()
        await self.store.aclose()

    # -- the store away and back ---------------------------------------------------------------

    def _away(self, exc: BaseException) -> None:
        self._retry_at = self._clock() + RETRY_AFTER
        if not self.degraded:
            self.degraded = True
            self.degradations += 1
            # A WARNING the first time only: a store that comes and goes (a loaded host, a
            # flapping network) must not flood the log; later outages are INFO.
            logger.log(logging.WARNING if self.degradations == 1 else logging.INFO,
                       "the shared store is unreachable (%s); going on with this process's "
                       "own view of the pool until it answers again (outage %d)",
                       type(exc).__name__, self.degradations)

    def _back(self, now: float) -> None:
        self.degraded = False
        self.facts.version = -1  # the store may have lost its facts (a restart): read them all
        logger.info("the shared store answers again; publishing this process's facts")
        self._queue(None, self.facts.current(now))
