"""One (project, model) quota group: its cooldown, its budget, and how carefully it is used.

Theory of operation
-------------------
Keys of one Google Cloud project share its quotas, counted per model, so the pool keeps one
`QuotaGroup` per (project, model).  The group owns what it knows and how far it trusts it; the
pool asks it questions (`full`, `may_test_learned_limit`) and tells it what happened
(`sent`, `released`, `answered`, `refused`, `bare_429`).  The group answers with values: the
limits it learned, whether its parked lanes may come back.  It never reaches back into the
scheduler; the model-wide *priors* (limits learned on sibling groups) are handed in.

The rules (see also `keysched._core`'s docstring and `keysched._budget`):

- **Half-open.**  After a 429 whose limit is still unknown, the group admits one attempt in
  flight, twice as many after each answer, until `HALF_OPEN_CLOSED`; a 429 starts over.
- **Presumed limits.**  For a dimension it does not know, the group presumes the priors (or,
  after a test showed a learned limit was too low, that old value).  Past a presumed limit it
  admits `beyond` attempts in flight: one, plus one per answer past it; a 429 resets it.
- **Tests of learned limits.**  ``relearn_after`` seconds after a limit was learned, one attempt
  may go past it (`may_test_learned_limit`); an answer drops the learned limits (they become
  presumed), a 429 doubles the wait, anything else tries again after the same wait.
- **Bare 429s** that persist double the group's cooldown; only an attempt sent after the current
  bench began escalates it (a burst of concurrent 429s is one piece of evidence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from keysched._breaker import escalated
from keysched._budget import Budget
from keysched._outcomes import QuotaDimension, Violation

__all__ = ["HALF_OPEN_CLOSED", "QuotaGroup"]

HALF_OPEN_CLOSED = 16
"""A half-open group is trusted again once this many attempts may be in flight on it."""


class QuotaGroup:
    """One (project, model) quota group (see the module docstring).

    Attributes:
        project: the project's index.
        model: the model's index.
        cool_until: when its cooldown ends (``-inf``: not cooling).
        reason: why it cools or is unavailable.
        unavailable: ``limit: 0``: the model is not in the project's tier.
        budget: its budget; None until its first dispatch (most groups of a big pool stay
            small), and for policies that budget nothing.
        in_flight: attempts in flight on it.
        parked: its lanes were parked until one of its attempts ends.
        half_open: while half-open, the attempts it admits in flight (None: closed).
    """

    __slots__ = ("_bare_429s", "_bare_since", "_beyond", "_presumed", "_relearn_wait", "budget",
                 "cool_until", "half_open", "in_flight", "model", "parked", "project", "reason",
                 "relearn_at", "unavailable")

    def __init__(self, project: int, model: int, budget: Budget | None) -> None:
        self.project = project
        self.model = model
        self.cool_until = -math.inf
        self.reason: str | None = None
        self.unavailable = False
        self.budget = budget
        self.in_flight = 0
        self.parked = False
        self.half_open: int | None = None
        # Limits presumed for dimensions it does not know; None: its model's priors.
        self._presumed: dict[QuotaDimension, int] | None = None
        self._beyond = 1  # attempts admitted in flight past a presumed limit
        self.relearn_at = math.inf  # when a learned limit holding requests back is tested
        self._relearn_wait = math.inf  # how long after learning (doubles after a failed test)
        self._bare_429s = 0  # bare 429s since it last answered
        self._bare_since = -math.inf  # when its current bare-429 bench began

    # -- questions ------------------------------------------------------------------------

    def presumed(self, priors: Mapping[QuotaDimension, int]) -> Mapping[QuotaDimension, int]:
        """The limits it presumes for what it does not know."""
        return priors if self._presumed is None else self._presumed

    def past_presumed(self, priors: Mapping[QuotaDimension, int], tokens: int, now: float, *,
                      answered: bool = False) -> bool:
        """Whether one more request of `tokens` would take it past a presumed limit of a
        dimension it does not know (`answered`: whether what it sent already is past one)."""
        budget = self.budget
        if budget is None:
            return False
        for dimension, value in self.presumed(priors).items():
            if not budget.knows(dimension):
                extra = 0 if answered else (
                    tokens if dimension is QuotaDimension.TOKENS_PER_MINUTE else 1)
                if budget.used(dimension, now) + extra > value:
                    return True
        return False

    def full(self, priors: Mapping[QuotaDimension, int], tokens: int, now: float) -> bool:
        """Whether it admits no more attempts in flight now (half-open at its allowance, or
        past a presumed limit at its allowance there)."""
        if not self.in_flight:
            return False
        if self.half_open is not None and self.in_flight >= self.half_open:
            return True
        return (self.in_flight >= self._beyond and bool(self.presumed(priors))
                and self.past_presumed(priors, tokens, now))

    def may_test_learned_limit(self, now: float, tokens: int, free: float) -> bool:
        """Whether a request of `tokens`, held back by its budget until `free`, may go now as
        the test of a learned limit: the test is due, nothing else is in flight, the server's
        window is full too (inside the margin an answer would prove nothing), and no
        configured limit holds the request back."""
        budget = self.budget
        return (budget is not None and now >= self.relearn_at and not self.in_flight
                and math.isfinite(free) and free - budget.margin > now
                and budget.free_at(now, tokens, learned=False) <= now)

    # -- what happened --------------------------------------------------------------------

    def sent(self, *, test: bool) -> None:
        """An attempt was dispatched on it (`test`: past a learned limit, as its test)."""
        self.in_flight += 1
        if test:
            self.relearn_at = math.inf  # one test at a time

    def released(self, now: float, *, test: bool) -> None:
        """An attempt ended or was taken back (before `answered` or `refused`, if either)."""
        self.in_flight -= 1
        if test and math.isfinite(self._relearn_wait):
            self.relearn_at = now + self._relearn_wait  # unless an answer or a 429 says more

    def answered(self, priors: Mapping[QuotaDimension, int], now: float, *,
                 test: bool) -> bool:
        """It answered (`test`: the test of a learned limit).  Returns whether the learned
        limits were dropped (the quota grew)."""
        self._bare_429s = 0
        if self.half_open is not None:
            self.half_open *= 2
            if self.half_open >= HALF_OPEN_CLOSED:
                self.half_open = None
        if test:
            budget = self.budget
            assert budget is not None
            # Past the old limits, carefully, until a 429 teaches the new ones.
            self._presumed = {limit.dimension: limit.value for limit in budget.limits
                              if limit.source == "learned"}
            self._beyond = 1
            budget.forget_learned()
            self.relearn_at = self._relearn_wait = math.inf
            return True
        if self.presumed(priors) and self.past_presumed(priors, 0, now, answered=True):
            self._beyond += 1  # it has more than it presumed: one more in flight past it
        return False

    def refused(self, violations: tuple[Violation, ...], now: float, *, test: bool,
                relearn_after: float | None, probe: bool) -> list[Violation]:
        """A 429 on a quota (`violations`: what it named).  Learns each usable value; reopens
        half-open (`probe`) when a named limit is still unknown.  Returns what it learned."""
        budget = self.budget
        assert budget is not None
        if test:  # the learned limit held: test it again, twice as late
            self._relearn_wait *= 2
            self.relearn_at = now + self._relearn_wait
        self._beyond = 1
        learned = []
        for violation in violations:
            if violation.value is None or violation.value < 1:
                continue
            if budget.learn(violation.dimension, violation.value, now, violation.quota_id):
                learned.append(violation)
                if relearn_after is not None and not test:
                    self._relearn_wait = relearn_after
                    self.relearn_at = now + relearn_after
        unknown = not violations or any(not budget.knows(v.dimension) for v in violations)
        if probe and (unknown or self.half_open is not None):
            self.half_open = 1  # one attempt at a time when the cooldown ends
        return learned

    def bare_429(self, sent: float, now: float, base: float, cap: float) -> float:
        """A 429 without details (shared capacity) to an attempt `sent` then: the cooldown."""
        if sent >= self._bare_since:
            self._bare_429s += 1
            self._bare_since = now
        return escalated(base, cap, self._bare_429s - 1)
