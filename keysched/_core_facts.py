"""The seam between shared facts and the core: what the core learned, and what it is told.

Theory of operation
-------------------
A process's core learns facts (a key disabled, a group, model or lane cooled, a limit learned)
and reports them as `PoolEvent`s.  `CoreFacts` turns those events into the store's records
(`keysched._store.SharedFact`: wall-clock times, labels), and feeds facts that other processes
learned back through the scheduler's input for them (`Scheduler.learn`, with the records of
`keysched._facts`), which merges them as local facts: a cooldown by the later end, never
shortened.  Nothing here does I/O or reads a clock: `now` is core time and
``wall_epoch`` converts (wall = core + epoch), so the simulator drives it as well.

It uses the scheduler's public inputs and its events only: the limits a group is held to in the
shared budget are followed from the configuration and the ``limit_learned`` and
``limit_unlearned`` events, and the cooldowns a refusal taught are remembered here.

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
from keysched._facts import Cooldown, DisabledKey, LearnedLimit
from keysched._outcomes import OutcomeKind, QuotaDimension
from keysched._snapshot import PoolEvent, parse_learned_limit
from keysched._store import FOREVER, SCOPES, Claim, Grant, SharedFact

__all__ = ["CAP_RECHECK", "MIN_WAIT", "REFUNDED", "CoreFacts"]

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
        self._labels = frozenset(key.label for key in config.keys)
        self._projects = frozenset(config.projects)
        self._model_names = frozenset(config.models)
        self._margin = config.retry.quota_margin
        # The limits each group is held to: configured, then learned (from events).
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
        self._disabled: set[str] = set()
        # What refusals of the store taught, by (project, model) or (key, model): until when.
        self._refused: dict[tuple[str, str], float] = {}
        # Facts applied whose event the core will announce, by field: their end or value.
        self._echo: dict[str, float] = {}

    # -- out: what this core learned ------------------------------------------------------------

    def facts_from_events(self, events: Iterable[PoolEvent]) -> list[SharedFact]:
        """The shareable facts among `events` (echoes of applied facts left out)."""
        facts = []
        epoch = self.wall_epoch
        for event in events:
            kind = event.kind
            until = FOREVER if event.until is None or math.isinf(event.until) else (
                event.until + epoch)
            project, model, key = event.project or "", event.model or "", event.key or ""
            if kind == "key_disabled":
                self._disabled.add(key)
                fact = SharedFact("key", key=key, until=FOREVER, reason=event.reason)
            elif kind == "group_cooled":
                fact = SharedFact("group", project, model, until=until, reason=event.reason)
            elif kind == "model_cooled":
                fact = SharedFact("model", model=model, until=until, reason=event.reason)
            elif kind == "lane_cooled":
                fact = SharedFact("lane", project, model, key, until=until, reason=event.reason)
            elif kind == "limit_unlearned":
                self._learned.pop((project, model), None)
                continue
            elif kind == "limit_learned":
                learned = parse_learned_limit(event.reason)
                if learned is None or learned[0] not in _BUDGETED:
                    continue
                name, value = learned
                self._learned.setdefault((project, model), {})[name] = value
                self._priors.setdefault(model, {})[name] = value
                fact = SharedFact("limit", project, model, "", name, value=value,
                                  reason=event.reason)
            else:
                continue
            echo = self._echo.pop(fact.field, None)
            mark = fact.value if fact.scope == "limit" else fact.until
            if echo is not None and abs(echo - mark) < 1e-3:
                continue
            facts.append(fact)
        return facts

    def current(self, now: float) -> list[SharedFact]:
        """Every fact this core holds at `now` (to publish again after the store was away)."""
        epoch = self.wall_epoch
        facts = []
        for record in self.core.shared_facts(now):
            if isinstance(record, DisabledKey):
                facts.append(SharedFact("key", key=record.key, until=FOREVER,
                                        reason=record.reason))
            elif isinstance(record, LearnedLimit):
                facts.append(SharedFact("limit", record.project, record.model, "",
                                        record.dimension.value, value=record.value,
                                        reason="learned"))
            elif isinstance(record, Cooldown) and math.isfinite(record.until):
                scope = ("lane" if record.key is not None else
                         "group" if record.project is not None else "model")
                facts.append(SharedFact(scope, record.project or "", record.model,
                                        record.key or "", until=record.until + epoch,
                                        reason=record.reason))
        return facts

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
              key_cap: int) -> Claim:
        """What `dispatch` asks of the store at core time `now` (limits filled in)."""
        key = dispatch.key
        project = key.project or ""
        rpm, tpm, rpd, window = self.limits(project, dispatch.model)
        return Claim(owner, attempt, key.label or "", project, dispatch.model, tokens,
                     spends_quota, rpm, tpm, rpd, window, day_end, lease_ttl, key_cap,
                     now + self.wall_epoch)

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
        blocked = label in self._disabled or (refused and (
            refused.get((key.project or "", model), -math.inf) > now
            or refused.get((label, model), -math.inf) > now))
        if blocked:
            with contextlib.suppress(UsageError):  # cancelled meanwhile (`aclose`)
                self.core.withdraw(dispatch.attempt, now, unsent=True)
        return bool(blocked)

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
        # At least a millisecond: a wall-clock time of 1.8e9 s carries a fraction of a
        # microsecond, and a wait shorter than that could round to no wait at all.
        # The same rounding as the core's: what `held_back` compares must be what `apply`
        # gives the core (through a wall-clock time and back).
        until = (now + max(grant.retry_after, MIN_WAIT) + self.wall_epoch) - self.wall_epoch
        if grant.why in SCOPES:  # another process disabled or cooled it
            scope = grant.why
            if scope in ("group", "lane"):
                self._refused[(claim.key if scope == "lane" else claim.project), claim.model] = (
                    until)
            self.apply(SharedFact(
                scope, claim.project if scope in ("group", "lane") else "",
                claim.model if scope != "key" else "",
                claim.key if scope in ("key", "lane") else "",
                until=until + self.wall_epoch, reason="shared"), now)
        elif grant.why == "in_flight":
            until = min(until, (now + CAP_RECHECK + self.wall_epoch) - self.wall_epoch)
            self._refused[claim.key, claim.model] = until
            self.apply(SharedFact("lane", claim.project, claim.model, claim.key,
                                  until=until + self.wall_epoch, reason="in_flight"), now)
        else:  # a shared budget is full: every process finds the same when it asks
            self._refused[claim.project, claim.model] = until
            self.apply(SharedFact("group", claim.project, claim.model,
                                  until=until + self.wall_epoch,
                                  reason=f"shared budget: {grant.why} full"), now)
        if len(self._refused) > 1024:  # forget what has ended
            self._refused = {k: v for k, v in self._refused.items() if v > now}
        # The request may have been cancelled meanwhile (`aclose`): then there is nothing left.
        with contextlib.suppress(UsageError):
            self.core.withdraw(attempt, now, unsent=True)
        return False

    # -- in: what other processes learned ------------------------------------------------------

    def apply(self, fact: SharedFact, now: float) -> None:
        """Feed one fact to the core at core time `now`.

        A cooldown that has already ended, and a key, project or model the pool does not have,
        change nothing; the core merges the rest (a cooldown by the later end).
        """
        core = self.core
        until = math.inf if fact.until >= FOREVER else fact.until - self.wall_epoch
        scope = fact.scope
        if fact.model and fact.model not in self._model_names:
            return
        if scope == "key":
            if fact.key in self._labels and fact.key not in self._disabled:
                self._disabled.add(fact.key)
                self._echo[fact.field] = FOREVER
                core.learn(now, DisabledKey(key=fact.key,
                                            reason=fact.reason or "disabled elsewhere"))
        elif scope == "limit":
            dimension = _DIMENSIONS.get(fact.dimension)
            if (fact.project in self._projects and dimension is not None
                    and fact.dimension in _BUDGETED and fact.value >= 1):
                self._echo[fact.field] = float(fact.value)
                core.learn(now, LearnedLimit(project=fact.project, model=fact.model,
                                             dimension=dimension, value=fact.value,
                                             quota_id="shared", learned_at=now))
        elif until <= now:
            return
        elif scope == "model":
            self._echo[fact.field] = fact.until
            core.learn(now, Cooldown(model=fact.model, until=until, reason=fact.reason))
        elif scope == "lane":
            if fact.key in self._labels:
                self._echo[fact.field] = fact.until
                core.learn(now, Cooldown(model=fact.model, key=fact.key, until=until,
                                         reason=fact.reason))
        elif scope == "group" and fact.project in self._projects:
            self._echo[fact.field] = fact.until
            core.learn(now, Cooldown(model=fact.model, project=fact.project, until=until,
                                     reason=fact.reason))
