"""The seam between shared facts and the core: what the core learned, and what it is told.

Theory of operation
-------------------
A process's core learns facts (a key disabled, a group, model or lane cooled, a limit learned)
and reports them as `PoolEvent`s.  `CoreFacts` turns those events into the core's records of
them (`keysched._facts`: core time) and those into the store's (`keysched._store.StoredFact`:
wall-clock times, labels), and feeds facts that other processes learned back through the
scheduler's input for them (`Scheduler.learn`), which merges them as local facts: a cooldown by
the later end, never shortened.  `to_stored` and `from_stored` are the one conversion between
the two forms.  Nothing here does I/O or reads a clock: `now` is core time and ``wall_epoch``
converts (wall = core + epoch), so the simulator drives it as well.

It uses the scheduler's public inputs and its events only: the limits a group is held to in the
shared budget are followed from the configuration and the ``limit_learned`` and
``limit_unlearned`` events, the cooldowns a refusal taught are remembered here, and whether a
dispatch's key was disabled meanwhile is the core's to say (`Scheduler.withdraw`).

Decisions where the issue was silent:

- A fact that comes back from the store is not published again (an "echo"): applying it makes
  the core announce the same event, which `facts_from_events` then skips.
- ``group_unavailable`` and ``model_unavailable`` (a 404, ``limit: 0``) are not shared: each
  process learns them from its own first answer, which costs one attempt, and a wrong one
  shared would take a model away from the whole pool for good.
- A learned limit shared by another process is learned with the quota id ``shared``.
- A group that knows no limit of its own is held, in the shared budget, to the limit it
  presumes (learned on another group of its model).  Alone, a process lets such a group go
  past its presumed limit one attempt at a time, to learn its own; several processes would
  each send that one attempt, and a pool of free-tier projects would collect a 429 per
  process and group.  The cost: a group whose real limit is higher (another tier) is held to
  its siblings' limit in a shared pool until a 429 teaches it its own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import ClassVar

from keysched._core import Scheduler
from keysched._decisions import Dispatch
from keysched._errors import UsageError
from keysched._facts import Cooldown, DisabledKey, LearnedLimit, SharedFact
from keysched._outcomes import OutcomeKind, QuotaDimension
from keysched._snapshot import PoolEvent, learned_limit_reason, parse_learned_limit
from keysched._store import FOREVER, Claim, Grant, StoredFact

__all__ = ["CAP_RECHECK", "MIN_WAIT", "REFUNDED", "CoreFacts", "from_stored", "to_stored"]

MIN_WAIT = 0.001
"""The shortest wait a refusal teaches (see `CoreFacts.answer`)."""
CAP_RECHECK = 0.05
"""Seconds a lane waits after the store refused it for the key's in-flight cap (the other
processes' attempts end without telling this one)."""
REFUNDED = frozenset({OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.RATE_LIMITED_DAY,
                      OutcomeKind.SPEND_LIMITED, OutcomeKind.QUOTA_ZERO,
                      OutcomeKind.SHARED_CAPACITY, OutcomeKind.TOO_LARGE_FOR_QUOTA})
"""Outcomes of attempts the server did not count: their units go back to the shared budget."""
_DIMENSIONS = {dimension.value: dimension for dimension in QuotaDimension}
_BUDGETED = ("rpm", "tpm", "rpd")


def to_stored(fact: SharedFact, wall_epoch: float) -> StoredFact:
    """The store's form of the core's record `fact`: its end a wall-clock time (`FOREVER` for
    one that never comes), a learned limit's reason the one its ``limit_learned`` event gives."""
    if isinstance(fact, DisabledKey):
        return StoredFact("key", key=fact.key, until=FOREVER, reason=fact.reason)
    if isinstance(fact, LearnedLimit):
        dimension = fact.dimension.value
        return StoredFact("limit", fact.project, fact.model, "", dimension, value=fact.value,
                          reason=learned_limit_reason(dimension, fact.value, fact.quota_id))
    scope = "lane" if fact.key is not None else "group" if fact.project is not None else "model"
    return StoredFact(scope, fact.project or "", fact.model, fact.key or "",
                      until=FOREVER if math.isinf(fact.until) else fact.until + wall_epoch,
                      reason=fact.reason)


def from_stored(fact: StoredFact, wall_epoch: float, now: float) -> SharedFact | None:
    """The core's record of the stored `fact`, learned at core time `now` (None: a scope or a
    limit the core does not take).  A learned limit's quota id is ``shared``."""
    scope = fact.scope
    if scope == "key":
        return DisabledKey(key=fact.key, reason=fact.reason or "disabled elsewhere")
    if scope == "limit":
        if fact.dimension not in _BUDGETED or fact.value < 1:
            return None
        return LearnedLimit(project=fact.project, model=fact.model,
                            dimension=_DIMENSIONS[fact.dimension], value=fact.value,
                            quota_id="shared", learned_at=now)
    if scope not in ("group", "lane", "model"):
        return None
    return Cooldown(model=fact.model, project=fact.project if scope != "model" else None,
                    key=fact.key if scope == "lane" else None, reason=fact.reason,
                    until=math.inf if fact.until >= FOREVER else fact.until - wall_epoch)


def _fact_of(event: PoolEvent) -> SharedFact | None:
    """The fact a pool event announces, if it is one worth sharing (see the module docstring)."""
    kind, reason = event.kind, event.reason
    project, model, key = event.project or "", event.model or "", event.key or ""
    until = math.inf if event.until is None else event.until
    if kind == "key_disabled":
        return DisabledKey(key=key, reason=reason)
    if kind == "group_cooled":
        return Cooldown(model=model, project=project, until=until, reason=reason)
    if kind == "model_cooled":
        return Cooldown(model=model, until=until, reason=reason)
    if kind == "lane_cooled":
        return Cooldown(model=model, project=project, key=key, until=until, reason=reason)
    learned = parse_learned_limit(reason) if kind == "limit_learned" else None
    if learned is None or learned[0] not in _BUDGETED or learned[1] < 1:
        return None
    dimension, value, quota_id = learned
    return LearnedLimit(project=project, model=model, dimension=_DIMENSIONS[dimension],
                        value=value, quota_id=quota_id, learned_at=event.time)


class CoreFacts:
    """Facts in and out of one `Scheduler` (see the module docstring).

    Args:
        core: the scheduler.
        wall_epoch: the Unix time at core time 0.
    """

    REFUNDED: ClassVar[frozenset[OutcomeKind]] = REFUNDED
    """Outcomes whose attempt's units a settlement gives back (every kind of 429)."""

    def __init__(self, core: Scheduler, wall_epoch: float) -> None:
        self.core = core
        self.wall_epoch = wall_epoch
        self.version = -1  # the version of the store's facts this core has seen (-1: none)
        config = core.config
        self._margin = config.retry.quota_margin
        # The limits each group is held to: configured, then learned (from events).  These
        # follow the core's events, so they lag the core by a poll; the core's own view of its
        # limits, read at each claim, holds a group to a presumed limit sooner, and that lowered
        # what a shared pool answers under a tier change (sim.processes, tier-change): kept
        # until that trade is weighed.
        self._configured: dict[tuple[str, str], dict[str, int]] = {}
        for project in config.projects:
            for model in config.models:
                limit = config.limit_for(project, model)
                if limit is not None:
                    self._configured[project, model] = {
                        name: value for name in _BUDGETED
                        if (value := getattr(limit, name)) is not None}
        self._learned: dict[tuple[str, str], dict[str, int]] = {}
        self._priors: dict[str, dict[str, int]] = {}  # per model: the last limits learned
        # What refusals of the store taught, by (project, model) or (key, model): until when.
        self._refused: dict[tuple[str, str], float] = {}
        # Facts applied whose event the core will announce, by field: their end or value.
        self._echo: dict[str, float] = {}

    # -- out: what this core learned ------------------------------------------------------------

    def facts_from_events(self, events: Iterable[PoolEvent]) -> list[StoredFact]:
        """The shareable facts among `events` (echoes of applied facts left out)."""
        facts = []
        for event in events:
            if event.kind == "limit_unlearned":
                self._learned.pop((event.project or "", event.model or ""), None)
            fact = _fact_of(event)
            if fact is None:
                continue
            if isinstance(fact, LearnedLimit):
                name = fact.dimension.value
                self._learned.setdefault((fact.project, fact.model), {})[name] = fact.value
                self._priors.setdefault(fact.model, {})[name] = fact.value
            stored = to_stored(fact, self.wall_epoch)
            echo = self._echo.pop(stored.field, None)
            if echo is None or abs(echo - _mark(stored)) >= 1e-3:
                facts.append(stored)
        return facts

    def current(self, now: float) -> list[StoredFact]:
        """Every fact this core holds at `now` (to publish again after the store was away)."""
        return [to_stored(fact, self.wall_epoch) for fact in self.core.shared_facts(now)
                if not isinstance(fact, Cooldown) or math.isfinite(fact.until)]

    def limits(self, project: str, model: str) -> tuple[int, int, int, float]:
        """The limits a group's shared budget holds to (0: none) and its minute window, in
        seconds: configured, else learned, else presumed (see the module docstring)."""
        held = {**self._priors.get(model, {}), **self._learned.get((project, model), {}),
                **self._configured.get((project, model), {})}
        return (held.get("rpm", 0), held.get("tpm", 0), held.get("rpd", 0),
                60.0 + self._margin)

    # -- the store's answer at dispatch ---------------------------------------------------------

    def claim(self, owner: str, attempt: str, dispatch: Dispatch, tokens: int,
              spends_quota: bool, *, now: float, day_end: float, lease_ttl: float,
              key_cap: int, start_by: float | None = None) -> Claim:
        """What `dispatch` asks of the store at core time `now` (limits filled in).
        `start_by` is the core time after which its request may not start: its place in the
        group's line if the store refuses it (None: it takes none)."""
        key = dispatch.key
        project = key.project or ""
        rpm, tpm, rpd, window = self.limits(project, dispatch.model)
        return Claim(owner, attempt, key.label or "", project, dispatch.model, tokens,
                     spends_quota, rpm, tpm, rpd, window, day_end, lease_ttl, key_cap,
                     now + self.wall_epoch,
                     0.0 if start_by is None else start_by + self.wall_epoch)

    def held_back(self, dispatch: Dispatch, now: float) -> bool:
        """Whether this core learned, since it decided `dispatch`, that its lane cannot serve
        (a refusal of an attempt decided in the same poll, or its key disabled by a fact from
        another process): then it is withdrawn without asking the store.

        A poll decides many attempts at once, on the lanes the core believed free; under a
        full shared budget, each would be refused in turn, a store round trip apiece.
        """
        key = dispatch.key
        label, model = key.label or "", dispatch.model
        refused = self._refused
        blocked = bool(refused) and (
            refused.get((key.project or "", model), -math.inf) > now
            or refused.get((label, model), -math.inf) > now)
        try:  # the core withdraws it anyway if its key was disabled meanwhile
            return self.core.withdraw(dispatch.attempt, now, unsent=blocked)
        except UsageError:  # cancelled meanwhile (`aclose`)
            return blocked

    def answer(self, grant: Grant, claim: Claim, attempt: int, now: float) -> bool:
        """Take the store's answer to `claim` (attempt `attempt` of the core) at core time `now`.

        The facts it brought are applied.  If it refused, the core learns why (a group cooling
        until the shared budget has room, a lane waiting for the key's cap, or the fact that
        holds the attempt back) and the attempt, not sent, is withdrawn: the caller polls.

        Returns:
            Whether to send the attempt.
        """
        if grant.facts is not None:
            self.version = grant.version
            for fact in grant.facts:
                self.apply(fact, now)
        if grant.granted:
            return True
        self._learn(self._refusal(grant, claim, now), now)
        if len(self._refused) > 1024:  # forget what has ended
            self._refused = {k: v for k, v in self._refused.items() if v > now}
        # The request may have been cancelled meanwhile (`aclose`): then there is nothing left.
        with contextlib.suppress(UsageError):
            self.core.withdraw(attempt, now, unsent=True)
        return False

    def _refusal(self, grant: Grant, claim: Claim, now: float) -> SharedFact:
        """What the store's refusal of `claim` teaches the core (see `answer`), remembered for
        `held_back` until it ends."""
        why = grant.why
        if why == "key":  # another process disabled it
            return DisabledKey(key=claim.key, reason="shared")
        # At least a millisecond: a wall-clock time of 1.8e9 s carries a fraction of a
        # microsecond, and a wait shorter than that could round to no wait at all.  The end is
        # rounded as a wall-clock time (the form every process reads it in from the store).
        wait = max(grant.retry_after, MIN_WAIT)
        if why == "in_flight":  # the key's cap: the others' attempts end without telling us
            wait = min(wait, CAP_RECHECK)
        until = (now + wait + self.wall_epoch) - self.wall_epoch
        lane = why in ("lane", "in_flight")
        self._refused[claim.key if lane else claim.project, claim.model] = until
        if why in ("group", "lane"):  # another process cooled it
            reason = "shared"
        elif why == "in_flight":
            reason = why
        elif why == "line":  # room returned, held for another process's older request
            reason = "shared budget: room held for an older request"
        else:  # a shared budget is full: every process finds the same when it asks
            reason = f"shared budget: {why} full"
        return Cooldown(model=claim.model, project=claim.project,
                        key=claim.key if lane else None, until=until, reason=reason)

    # -- in: what other processes learned ------------------------------------------------------

    def apply(self, fact: StoredFact, now: float) -> None:
        """Feed one fact to the core at core time `now`.

        A cooldown that has already ended, and a key, project or model the pool does not have,
        change nothing; the core merges the rest (a cooldown by the later end).
        """
        record = from_stored(fact, self.wall_epoch, now)
        if record is None or (isinstance(record, Cooldown) and record.until <= now):
            return
        self._learn(record, now)

    def _learn(self, fact: SharedFact, now: float) -> None:
        """Give the core `fact`, and expect the event it will announce: that one is an echo,
        not published again (see `facts_from_events`)."""
        try:
            self.core.learn(now, fact)
        except UsageError:  # a key, project or model this pool does not have: nothing changed
            return
        stored = to_stored(fact, self.wall_epoch)
        self._echo[stored.field] = _mark(stored)


def _mark(fact: StoredFact) -> float:
    """What tells an echo from news: a limit's value, or a fact's end."""
    return float(fact.value) if fact.scope == "limit" else fact.until
