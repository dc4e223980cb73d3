"""The seam between shared facts and the pure core: what the core learned, and what it is told.

Theory of operation
-------------------
A process's core learns facts (a key disabled, a group, model or lane cooled, a limit learned)
and reports them as `PoolEvent`s.  `CoreFacts` turns those events into `SharedFact`s for the
store (wall-clock times, labels), and feeds facts that other processes learned back into the
core as plain inputs: cool a group, model or lane until t (never shortening a cooldown),
disable a key by label, learn a limit.  Nothing here does I/O or reads a clock: `now` is core
time and ``wall_epoch`` converts (wall = core + epoch), so the simulator drives it as well.

This is the only module outside the core that knows the core's internals.  The renovation
issue gives the core a `Pool` object with exactly these input methods; when it lands, the
bodies of `apply` and `limits` call it instead (the rest of the sharing code does not change).

Decisions where the issue was silent:

- A fact that comes back from the store is not published again (an "echo"): applying it makes
  the core emit the same event, which `facts_from_events` then skips.
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

from keysched._budget import Budget
from keysched._core import _TIMER_WAKE, Scheduler
from keysched._decisions import Dispatch
from keysched._errors import UsageError
from keysched._outcomes import OutcomeKind, QuotaDimension
from keysched._snapshot import PoolEvent
from keysched._store import FOREVER, SCOPES, Claim, Grant, SharedFact

__all__ = ["CoreFacts"]

CAP_RECHECK = 0.05
"""Seconds a lane waits after the store refused it for the key's in-flight cap (the other
processes' attempts end without telling this one)."""
REFUNDED = frozenset({OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.RATE_LIMITED_DAY,
                      OutcomeKind.SPEND_LIMITED, OutcomeKind.QUOTA_ZERO,
                      OutcomeKind.SHARED_CAPACITY, OutcomeKind.TOO_LARGE_FOR_QUOTA})
"""Outcomes of attempts the server did not count: their units go back to the shared budget."""
_DIMENSIONS = {dimension.value: dimension for dimension in QuotaDimension}
_RPM, _TPM, _RPD = (QuotaDimension.REQUESTS_PER_MINUTE, QuotaDimension.TOKENS_PER_MINUTE,
                    QuotaDimension.REQUESTS_PER_DAY)


class CoreFacts:
    """Facts in and out of one `Scheduler` (see the module docstring).

    Args:
        core: the scheduler.
        wall_epoch: the Unix time at core time 0.
    """

    def __init__(self, core: Scheduler, wall_epoch: float) -> None:
        self.core = core
        self.wall_epoch = wall_epoch
        self._keys = {state.key.label: state for state in core._keys}
        self._projects = {name: index for index, name in enumerate(core._project_names)}
        self._models = core._model_index
        # Facts applied whose event the core will emit, by field: their end (core time).
        self._echo: dict[str, float] = {}
        self.version = -1  # the version of the store's facts this core has seen (-1: none)

    # -- out: what this core learned ------------------------------------------------------------

    def facts_from_events(self, events: Iterable[PoolEvent]) -> list[SharedFact]:
        """The shareable facts among `events` (echoes of applied facts left out)."""
        facts = []
        epoch = self.wall_epoch
        for event in events:
            kind = event.kind
            until = FOREVER if event.until is None or math.isinf(event.until) else (
                event.until + epoch)
            if kind == "key_disabled":
                fact = SharedFact("key", key=event.key or "", until=FOREVER, reason=event.reason)
            elif kind == "group_cooled":
                fact = SharedFact("group", event.project or "", event.model or "", until=until,
                                  reason=event.reason)
            elif kind == "model_cooled":
                fact = SharedFact("model", model=event.model or "", until=until,
                                  reason=event.reason)
            elif kind == "lane_cooled":
                fact = SharedFact("lane", event.project or "", event.model or "",
                                  event.key or "", until=until, reason=event.reason)
            elif kind == "limit_learned":
                name, _, rest = event.reason.partition("=")
                value = rest.split(" ", 1)[0]
                if name not in _DIMENSIONS or not value.isdigit():
                    continue
                fact = SharedFact("limit", event.project or "", event.model or "", "", name,
                                  value=int(value), reason=event.reason)
            else:
                continue
            echo = self._echo.pop(fact.field, None)
            if echo is not None and abs(echo - fact.until) < 1e-3:
                continue
            facts.append(fact)
        return facts

    def current(self, now: float) -> list[SharedFact]:
        """Every fact this core holds at `now` (to publish again after the store was away)."""
        core = self.core
        epoch = self.wall_epoch
        facts = [SharedFact("key", key=state.key.label or "", until=FOREVER,
                            reason=state.disabled)
                 for state in core._keys if state.disabled is not None]
        for project, row in zip(core._project_names, core._groups, strict=True):
            for model, group in zip(core.config.models, row, strict=True):
                if group.cool_until > now:
                    facts.append(SharedFact("group", project, model,
                                            until=group.cool_until + epoch,
                                            reason=group.reason or ""))
                for known in () if group.budget is None else group.budget.limits:
                    if known.source == "learned":
                        facts.append(SharedFact("limit", project, model, "",
                                                known.dimension.value, value=known.value,
                                                reason="learned"))
        for state in core._models:
            if now < state.cool_until < math.inf:
                facts.append(SharedFact("model", model=state.name,
                                        until=state.cool_until + epoch, reason=state.reason or ""))
        for (key, lane_model), until in core._lane_cool.items():
            if until > now:
                label = core._keys[key].key.label or ""
                facts.append(SharedFact("lane", core._project_names[core._keys[key].project],
                                        core.config.models[lane_model], label,
                                        until=until + epoch,
                                        reason="shared"))
        return facts

    def limits(self, project: str, model: str) -> tuple[int, int, int, float]:
        """The limits a group's shared budget holds to (0: none) and its minute window, in
        seconds: those it knows, else those it presumes (learned on another group of the
        model; see the module docstring)."""
        window = 60.0 + self.core.config.retry.quota_margin
        p, m = self._projects.get(project), self._models.get(model)
        if p is None or m is None:
            return 0, 0, 0, window
        budget = self.core._groups[p][m].budget
        presumed = self.core._priors[m]
        if budget is None:
            return (presumed.get(_RPM, 0), presumed.get(_TPM, 0), presumed.get(_RPD, 0),
                    window)
        return (budget.rpm or presumed.get(_RPM, 0), budget.tpm or presumed.get(_TPM, 0),
                budget.rpd or presumed.get(_RPD, 0), budget.window)

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
        """Whether the core has learned, since it decided `dispatch`, that its lane cannot
        serve (a refusal of an attempt decided in the same poll cooled its group, a fact from
        another process disabled its key): then it is withdrawn without asking the store.

        A poll decides many attempts at once, on the lanes the core believed free; under a
        full shared budget, each would be refused in turn, a store round trip apiece.
        """
        core = self.core
        key = self._keys.get(dispatch.key.label)
        model = self._models.get(dispatch.model)
        if key is None or model is None:
            return False
        blocked = (key.disabled is not None
                   or core._groups[key.project][model].cool_until > now
                   or core._models[model].cool_until > now
                   or core._lane_cool.get((key.index, model), -math.inf) > now)
        if blocked:
            with contextlib.suppress(UsageError):
                core.withdraw(dispatch.attempt, now, unsent=True)
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
        until = now + grant.retry_after
        if grant.why in SCOPES:  # another process disabled or cooled it
            self.apply(SharedFact(grant.why, claim.project, claim.model, claim.key,
                                  until=until + self.wall_epoch, reason="shared"), now)
        elif grant.why == "in_flight":
            self.apply(SharedFact("lane", claim.project, claim.model, claim.key,
                                  until=min(until, now + CAP_RECHECK) + self.wall_epoch,
                                  reason="in_flight"), now)
        else:  # a shared budget is full: every process finds the same when it asks
            self.apply(SharedFact("group", claim.project, claim.model,
                                  until=max(until, now + 0.001) + self.wall_epoch,
                                  reason=f"shared budget: {grant.why} full"), now)
        # The request may have been cancelled meanwhile (`aclose`): then there is nothing left.
        with contextlib.suppress(UsageError):
            self.core.withdraw(attempt, now, unsent=True)
        return False

    # -- in: what other processes learned ------------------------------------------------------

    def apply(self, fact: SharedFact, now: float) -> bool:
        """Feed one fact to the core at core time `now`.  Returns whether it changed anything.

        A cooldown that has already ended, a key or group the pool does not have, and a fact
        no later than what the core knows change nothing.
        """
        core = self.core
        until = math.inf if fact.until >= FOREVER else fact.until - self.wall_epoch
        scope = fact.scope
        if scope == "key":
            state = self._keys.get(fact.key)
            if state is None or state.disabled is not None:
                return False
            self._echo[fact.field] = FOREVER
            core._disable(state, fact.reason or "disabled by another process", now)
            return True
        if scope == "limit":
            return self._learn(fact, now)
        if until <= now:
            return False
        model = self._models.get(fact.model)
        if model is None:
            return False
        if scope == "model":
            breaker = core._models[model]
            if until <= breaker.cool_until or breaker.unavailable:
                return False
            breaker.cool_until = until
            breaker.reason = fact.reason
            core._benched += 1
            core._timer(until, _TIMER_WAKE, 0, 0)
            return True
        if scope == "lane":
            key = self._keys.get(fact.key)
            if key is None or until <= core._lane_cool.get((key.index, model), -math.inf):
                return False
            core._lane_cool[key.index, model] = until
            core._benched += 1
            core._timer(until, _TIMER_WAKE, 0, 0)
            return True
        if scope == "group":
            project = self._projects.get(fact.project)
            if project is None:
                return False
            group = core._groups[project][model]
            if until <= group.cool_until:
                return False
            self._echo[fact.field] = fact.until
            core._cool_group(group, until, fact.reason, fact.project, fact.model, now)
            return True
        return False

    def _learn(self, fact: SharedFact, now: float) -> bool:
        core = self.core
        project, model = self._projects.get(fact.project), self._models.get(fact.model)
        dimension = _DIMENSIONS.get(fact.dimension)
        if project is None or model is None or dimension is None or fact.value < 1:
            return False
        group = core._groups[project][model]
        if group.budget is None:
            if not core.policy.budgets_limits:
                return False
            group.budget = Budget(None, core._wall_epoch, core.config.retry.quota_margin)
        if not group.budget.learn(dimension, fact.value, now, "shared"):
            return False
        core._benched += 1
        if dimension is not QuotaDimension.SPEND:
            core._priors[model][dimension] = fact.value
        return True
