"""Where the facts shared by several processes of one pool live: the `Store` protocol.

Theory of operation
-------------------
Each process runs its own pure core.  What one process learns that another should know is a
*fact*: a plain record that merges without coordination (`StoredFact`):

- a key disabled, and why (a key fact lasts for good: its end is `FOREVER`);
- a cooldown of a quota group, a model or a lane, until a wall-clock time (Unix seconds, as the
  processes' monotonic clocks do not agree), merged by taking the later end: a fact never
  shortens a cooldown another process set;
- a limit learned from a 429 (the last value learned wins: tiers change).

Two things cannot merge after the fact and are decided by the store at dispatch, atomically:

- **budgets**: every attempt that spends quota takes one request and its tokens from its
  group's sliding minute window and one request from its Pacific day, if the known limits
  (configured, or learned and passed in by the driver) leave room.  Two processes can never
  both take the last unit.  The store records usage even while no limit is known, so a limit
  learned later starts from what the whole pool sent.  A refusal says when room returns.
- **in-flight leases**: each attempt holds a lease on its key that expires after a TTL, so a
  worker that dies holding leases frees them within the TTL.  With a per-key cap, the store
  refuses an attempt that would exceed it across processes.
- **the line**: the order in which waiting requests get a group's room back.  Alone, a process
  serves its queue oldest first; N processes each wait for the same room, and the first to
  ask after it returns would win it, whatever the age of its request.  With one process
  winning every race (the first one woken, or the one whose clock runs ahead), its young
  requests are answered while the others' old ones expire, and when the overload ends the
  requests left to use the room that returns are fewer: the pool answered about 5-9% fewer
  calls than one process (`sim processes`, `benchmarks.bench_shared`).  So a claim refused for
  a full minute budget takes its place in its group's line (its process, and its request's
  ``start_by``: the latest it may start), and when room returns a claim is refused while the
  room left is held for requests of other processes that must start sooner (``why`` is
  ``line``; it asks again within `LINE_RECHECK`).  A process keeps one place per group,
  updated by each of its refusals there, given up when it is granted; a place whose process
  does not come back within `LINE_GRACE` of the room returning (its request was answered
  elsewhere, or ended) lapses.

The driver makes one call per attempt at dispatch (`Store.admit`: the check-and-take, the lease,
and the facts changed since the version it knows) and one batched, fire-and-forget call for what
ended (`Store.settle`: leases released, units of attempts the server refused given back, and
new facts).  `SharedPool` holds the rules as plain Python, with time passed in: `MemoryStore`
wraps it for the clients of one process (tests, several clients on one loop), the simulator
drives it in virtual time, and `keysched._redis_store.RedisStore` runs the same rules as Lua
scripts (a test holds them equal).

Decisions where the issue was silent:

- A key is named in the store by its label, never by its secret (nor a hash of it): every
  process of a pool must give its keys the same labels (the default ``key#N`` labels agree when
  the processes list the same keys in the same order).
- The sliding minute window is ``60 s + quota_margin``, as the core's own budget.  The day ends
  at the next midnight Pacific, which the driver computes and passes in.
- Budgets are checked only for limits the driver knows; usage is recorded always.
- A 429 that refused an attempt on quota gives its units back (the server did not count it
  either), as the core's own budget does.
- Cooldowns that have ended are dropped lazily: a reader ignores facts whose end has passed.
- The line holds places by requests (the budget's one unit each), not by tokens: with only a
  token limit known, waiting requests are not ordered (their sizes differ, so the room one
  needs is not the room another needs).  A claim without a ``start_by`` (0) takes no place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

__all__ = [
    "FOREVER",
    "Claim",
    "Grant",
    "MemoryStore",
    "Settlement",
    "SharedPool",
    "Store",
    "StoredFact",
    "fact_field",
]

FOREVER = 1e300
"""The end of a fact that lasts for good (a disabled key); finite, so Lua and JSON carry it."""
SEP = "\x1f"
"""Separates the parts of a fact's field: labels, projects and models hold no control
characters (the config refuses them), so it never occurs inside one."""
LINE_GRACE = 0.5
"""Seconds after room returns that a place in a group's line is kept for its process: enough
for a process woken then to ask (an event-loop turn and a round trip, on a loaded host)."""
LINE_RECHECK = 0.05
"""The longest a claim refused for the line waits before asking again (the request ahead of it
normally takes its room at once; if it does not, the room is not left idle for long)."""


def fact_field(scope: str, project: str = "", model: str = "", key: str = "",
               dimension: str = "") -> str:
    """The field a fact is stored under (`StoredFact.field`): what it is about."""
    return SEP.join((scope, project, model, key, dimension))


class StoredFact(NamedTuple):
    """One fact worth sharing, as a store keeps it.  Wall-clock times (Unix seconds), labels
    only, flat strings (the Lua scripts read them).  The core's own records of the same facts
    (core time) are `keysched._facts.SharedFact`; `keysched._core_facts` converts between them.

    Attributes:
        scope: ``group`` (project, model), ``model``, ``lane`` (key, model), ``key`` (disabled)
            or ``limit`` (project, model, dimension: a learned limit and its value).
        until: the end of a cooldown (`FOREVER` for a disabled key; 0 for a limit).
        reason: why (an `OutcomeKind` value or a short phrase).
    """

    scope: str
    project: str = ""
    model: str = ""
    key: str = ""
    dimension: str = ""
    until: float = 0.0
    value: int = 0
    reason: str = ""

    @property
    def field(self) -> str:
        """What the fact is about: facts with one field merge."""
        return fact_field(self.scope, self.project, self.model, self.key, self.dimension)

    def encode(self) -> str:
        """The fact's value as stored (its field names the rest)."""
        return SEP.join((repr(float(self.until)), str(self.value), self.reason))

    @classmethod
    def decode(cls, field: str, value: str) -> StoredFact:
        """The fact stored as `value` under `field`."""
        scope, project, model, key, dimension = field.split(SEP)
        until, number, reason = value.split(SEP, 2)
        return cls(scope, project, model, key, dimension, float(until), int(number), reason)


class Claim(NamedTuple):
    """What an attempt asks of the store at dispatch.

    Attributes:
        owner: the process (a random token), so leases name their holder.
        attempt: a token unique to the attempt.
        key: the key's label.
        project, model: its quota group.
        tokens: the request's estimated input tokens.
        spends_quota: whether it counts against the budgets (countTokens does not).
        rpm, tpm, rpd: the group's known limits (0: not known; usage is recorded anyway).
        window: the sliding minute window, in seconds.
        day_end: when the current Pacific day ends (Unix seconds).
        lease_ttl: seconds after which the attempt's lease expires if not released.
        key_cap: the most attempts in flight on the key, across processes (0: no cap).
        wall: the caller's Unix time, for the facts (their ends are the processes' wall
            times; budgets and leases run on the store's own clock).
        start_by: the Unix time after which the attempt's request may not start (its place
            in its group's line; 0: it takes none).
    """

    owner: str
    attempt: str
    key: str
    project: str
    model: str
    tokens: int = 0
    spends_quota: bool = True
    rpm: int = 0
    tpm: int = 0
    rpd: int = 0
    window: float = 61.0
    day_end: float = FOREVER
    lease_ttl: float = 120.0
    key_cap: int = 0
    wall: float = 0.0
    start_by: float = 0.0

    @property
    def blockers(self) -> tuple[str, str, str]:
        """The fields of the facts that would hold this attempt back: its key disabled, its
        group or lane cooling (in the order the store checks them).  Not a model's cooldown:
        a cooling model is probed now and then (the breaker's half-open state), and whether
        an attempt is such a probe is for the core to say."""
        return (fact_field("key", key=self.key), fact_field("group", self.project, self.model),
                fact_field("lane", self.project, self.model, self.key))

    @property
    def member(self) -> str:
        """The attempt's entry in its lease set and its group's minute window."""
        return f"{self.owner}:{self.attempt}:{self.tokens}"


class Grant(NamedTuple):
    """The store's answer to a `Claim`.

    Attributes:
        granted: the units and the lease were taken; send the attempt.
        retry_after: if refused, in how many seconds room returns (a delay, not a time: the
            store's clock and the caller's need not agree).
        why: if refused, the limit that is full (``rpm``, ``tpm``, ``rpd``, ``in_flight``),
            ``line`` (the room left is held for requests of other processes that must start
            sooner), or the scope of a fact that holds the attempt back (``key``, ``group``,
            ``lane``: another process disabled or cooled it since this one last looked).
        version: the version of the shared facts.
        facts: every shared fact, if the version differs from the one the caller knew.
    """

    granted: bool
    retry_after: float = 0.0
    why: str = ""
    version: int = 0
    facts: tuple[StoredFact, ...] | None = None


class Settlement(NamedTuple):
    """An attempt that ended: its lease is released; `refund` gives its units back."""

    claim: Claim
    refund: bool = False


class Store(Protocol):
    """What the driver asks of the shared state (see the module docstring)."""

    async def admit(self, claim: Claim, known_version: int) -> Grant:
        """Check-and-take the claim's budget units and lease; the facts if they changed."""
        ...

    async def settle(self, settlements: Sequence[Settlement],
                     facts: Sequence[StoredFact]) -> None:
        """Release leases, give refused units back, merge new facts (fire-and-forget)."""
        ...

    async def facts(self) -> tuple[int, tuple[StoredFact, ...]]:
        """The version and every shared fact."""
        ...

    async def aclose(self) -> None:
        """Let go of connections."""
        ...


class _Window:
    """A group's sliding minute window: entries by time, and their token total."""

    __slots__ = ("entries", "tokens")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, int]] = {}  # member -> (time, tokens)
        self.tokens = 0

    def trim(self, now: float, window: float) -> None:
        for member, (at, tokens) in list(self.entries.items()):
            if at <= now - window:
                del self.entries[member]
                self.tokens -= tokens


class SharedPool:
    """The store's rules as plain Python, with time passed in (Unix seconds, or virtual).

    `RedisStore` runs the same rules in Lua; `tests/test_store_lua.py` holds them equal.
    """

    def __init__(self) -> None:
        self.version = 0
        self._facts: dict[str, StoredFact] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._days: dict[tuple[str, str, int], int] = {}
        self._leases: dict[str, dict[str, float]] = {}  # key label -> member -> expiry
        # (project, model) -> owner -> (its request's start_by, until when the place is kept)
        self._lines: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}

    def admit(self, claim: Claim, known_version: int, now: float) -> Grant:
        """See `Store.admit`; `now` is the store's clock (the claim carries the caller's)."""
        leases = self._leases.setdefault(claim.key, {})
        for member, expiry in list(leases.items()):
            if expiry <= now:
                del leases[member]
        refused = self._refusal(claim, leases, now)
        if refused is not None:
            why, retry_after = refused
            if why in ("rpm", "tpm", "line") and claim.start_by:
                # Its place in the line, kept until a grace after room returns.
                line = self._lines.setdefault((claim.project, claim.model), {})
                line[claim.owner] = (claim.start_by, now + retry_after + LINE_GRACE)
            return Grant(False, retry_after, why, self.version, self._changed(known_version))
        leases[claim.member] = now + claim.lease_ttl
        if claim.spends_quota:
            window = self._windows[claim.project, claim.model]
            window.entries[claim.member] = (now, claim.tokens)
            window.tokens += claim.tokens
            day = (claim.project, claim.model, int(claim.day_end))
            self._days[day] = self._days.get(day, 0) + 1
            self._lines.get((claim.project, claim.model), {}).pop(claim.owner, None)
        return Grant(True, 0.0, "", self.version, self._changed(known_version))

    def _refusal(self, claim: Claim, leases: dict[str, float],
                 now: float) -> tuple[str, float] | None:
        for field in claim.blockers:
            fact = self._facts.get(field)
            if fact is not None and fact.until > claim.wall:
                return fact.scope, fact.until - claim.wall
        if claim.key_cap and len(leases) >= claim.key_cap:
            return "in_flight", min(leases.values()) - now
        if not claim.spends_quota:
            return None
        return self._budget_refusal(claim, now)

    def _budget_refusal(self, claim: Claim, now: float) -> tuple[str, float] | None:
        window = self._windows.setdefault((claim.project, claim.model), _Window())
        window.trim(now, claim.window)
        room = min((at for at, _ in window.entries.values()), default=now) + claim.window - now
        if claim.rpm and len(window.entries) + 1 > claim.rpm:
            return "rpm", room
        if claim.tpm and window.entries and window.tokens + claim.tokens > claim.tpm:
            return "tpm", room
        day = (claim.project, claim.model, int(claim.day_end))
        if claim.rpd and self._days.get(day, 0) >= claim.rpd:
            return "rpd", claim.day_end - claim.wall
        if claim.rpm and claim.start_by:
            ahead = self._ahead(claim, now)
            if ahead and len(window.entries) + len(ahead) + 1 > claim.rpm:
                return "line", min(LINE_RECHECK, min(ahead) - now)
        return None

    def _ahead(self, claim: Claim, now: float) -> list[float]:
        """The ends of the places in the claim's line of other processes' requests that must
        start sooner (lapsed places are dropped)."""
        line = self._lines.get((claim.project, claim.model), {})
        for owner, (_, until) in list(line.items()):
            if until <= now:
                del line[owner]
        return [until for owner, (start_by, until) in line.items()
                if owner != claim.owner and start_by < claim.start_by]

    def settle(self, settlements: Iterable[Settlement], facts: Iterable[StoredFact]) -> None:
        """See `Store.settle`."""
        for settlement in settlements:
            claim = settlement.claim
            self._leases.get(claim.key, {}).pop(claim.member, None)
            if settlement.refund and claim.spends_quota:
                window = self._windows.get((claim.project, claim.model))
                if window is not None and window.entries.pop(claim.member, None) is not None:
                    window.tokens -= claim.tokens
                    day = (claim.project, claim.model, int(claim.day_end))
                    if self._days.get(day, 0) > 0:
                        self._days[day] -= 1
        for fact in facts:
            self.merge(fact)

    def merge(self, fact: StoredFact) -> bool:
        """Merge one fact: a cooldown only by a later end, a limit always.  Returns whether
        it changed anything (and then bumps the version)."""
        old = self._facts.get(fact.field)
        if old is not None and (old.until >= fact.until if fact.scope != "limit"
                                else old.value == fact.value):
            return False
        self._facts[fact.field] = fact
        self.version += 1
        return True

    def facts(self) -> tuple[int, tuple[StoredFact, ...]]:
        """See `Store.facts`."""
        return self.version, tuple(self._facts.values())

    def in_flight(self, key: str, now: float) -> int:
        """Leases held on `key` at `now` (expired ones do not count)."""
        return sum(1 for expiry in self._leases.get(key, {}).values() if expiry > now)

    def _changed(self, known_version: int) -> tuple[StoredFact, ...] | None:
        return None if known_version == self.version else tuple(self._facts.values())


class MemoryStore:
    """A `Store` in this process's memory: several clients of one event loop share it.

    Args:
        clock: Unix seconds (injectable for tests).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.pool = SharedPool()
        self._clock = clock

    def __repr__(self) -> str:
        return f"MemoryStore(version={self.pool.version})"

    async def admit(self, claim: Claim, known_version: int) -> Grant:
        """See `Store.admit`."""
        return self.pool.admit(claim, known_version, self._clock())

    async def settle(self, settlements: Sequence[Settlement],
                     facts: Sequence[StoredFact]) -> None:
        """See `Store.settle`."""
        self.pool.settle(settlements, facts)

    async def facts(self) -> tuple[int, tuple[StoredFact, ...]]:
        """See `Store.facts`."""
        return self.pool.facts()

    async def aclose(self) -> None:
        """Nothing to let go of."""
