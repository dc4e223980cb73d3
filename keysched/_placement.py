"""Placing one request: which lanes can serve it now, and which one does.

Theory of operation
-------------------
A `Placement` is made for each attempt to place a request, with the request's demand (its
tokens, whether it spends quota).  It is the `keysched._selection.LaneOracle` the selector
asks lane by lane (`verdict`), so the answer no longer depends on state the scheduler set
beforehand.  `find` walks the request's models best first, asking the selector on each model
in rotation; if none can serve, it probes a cooling model whose probe is due (the last model
never goes dark).  What the placement learned comes back as values on it: the lanes the
selector parked (the scheduler arms a timer for each), `probe_at` (when a probe was made: the
next probe is due then) and `wake_at` (when a token budget too full for this request frees up).

A lane serves a request iff its key is enabled and under its in-flight cap, its group is
available and not cooling, the lane itself is not cooling, the group admits another attempt
(half-open or past a presumed limit: `QuotaGroup.full`), and the group's budget has room for
the request (or the request may go past a learned limit as its test).
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

from keysched._selection import BLOCKED, SERVES, SKIPS, Verdict

if TYPE_CHECKING:
    from keysched._pool import Pool

__all__ = ["Placement"]


class Placement:
    """One attempt to place a request (see the module docstring).

    Attributes:
        tokens: the request's estimated input tokens.
        quota: whether it spends quota (is budgeted).
        parked: (key, model, until) of each lane the selector parked meanwhile.
        wake_at: when a token budget too full for this request frees up (`math.inf`: none).
        probe_at: when `find` probed a cooling model: when its next probe is due.
    """

    __slots__ = ("_pool", "parked", "probe_at", "quota", "tokens", "wake_at")

    def __init__(self, pool: Pool, tokens: int, quota: bool) -> None:
        self._pool = pool
        self.tokens = tokens
        self.quota = quota
        self.parked: list[tuple[int, int, float]] = []
        self.wake_at = math.inf
        self.probe_at: float | None = None

    def find(self, models: Sequence[int], avoid: Container[int],
             now: float) -> tuple[int, int] | None:
        """The (key, model) to serve the request now, if any: the best model in rotation
        that has a lane, else a cooling model due for a probe."""
        pool = self._pool
        for model in models:
            state = pool.models[model]
            if state.unavailable or state.cool_until > now:
                continue
            key = pool.selector.select(self, model, now, avoid)
            if key is not None:
                return key, model
        for model in models:  # nothing else can serve: probe a cooling model, if one is due
            state = pool.models[model]
            if state.unavailable or state.cool_until <= now or state.probe_at > now:
                continue
            key = pool.selector.select(self, model, now, avoid)
            if key is not None:
                state.probe_at = self.probe_at = now + pool.policy.probe_interval
                return key, model
        return None

    def verdict(self, key: int, model: int, now: float) -> Verdict:
        """See `keysched._selection.LaneOracle.verdict`."""
        pool = self._pool
        state = pool.keys.states[key]
        if state.disabled is not None or state.in_flight >= pool.cap:
            return BLOCKED
        group = pool.groups[state.project][model]
        if group.unavailable:
            return BLOCKED
        until = group.cool_until
        lane_until = pool.lanes.cool_ends.get((key, model), -math.inf)
        if lane_until > until:
            until = lane_until
        if until > now:
            return Verdict.blocked_until(until)
        if group.in_flight and group.full(pool.priors[model], self.tokens, now):
            group.parked = True  # `Pool.release` offers the lanes again when an attempt ends
            return BLOCKED
        budget = group.budget
        if budget is None or not budget.limited or not self.quota:
            return SERVES
        free = budget.free_at(now, self.tokens)
        if free <= now or group.may_test_learned_limit(now, self.tokens, free):
            return SERVES  # (past its limit only as the test of a learned one: `Pool.acquire`)
        if math.isinf(free):
            return SKIPS  # this request can never fit this group's token limit
        anyone = budget.free_at(now, 0)
        if anyone <= now:
            # Too large for what is left of the token budget: only this request waits, and it
            # must be woken when enough tokens have left the window.
            self.wake_at = min(self.wake_at, free)
            return SKIPS
        # Blocked for everyone, but only until a request of no tokens could pass: a smaller
        # request may use the lane then, before this one's tokens fit.  Or until its learned
        # limit is due to be tested.
        return Verdict.blocked_until(anyone if group.relearn_at <= now
                                     else min(anyone, group.relearn_at))

    def park(self, key: int, model: int, until: float) -> None:
        """See `keysched._selection.LaneOracle.park`: the scheduler arms the timer."""
        if math.isfinite(until):
            self.parked.append((key, model, until))
