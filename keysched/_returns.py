"""When capacity returns for a request that cannot be placed now.

Theory of operation
-------------------
A request at the head of its queue that no lane can serve now either waits or, when nothing can
serve it before its deadline (say, a pool benched until midnight), fails at once with
`retry_at` instead of waiting its deadline out.  Both questions walk every quota group of the
request's models, asking each when it may serve again (`CapacityReturns.group_returns`: its
cooldown, its model's, its budget's next free slot):

- `CapacityReturns.too_late`: is there no group back by the deadline?  Asked for every waiting
  head, so the walk stops at the first group back in time, and starts with the group that was
  back in time when these models last asked (the *witness*): when the pool's first model has
  run out for the day, that is the one group of the second model found last time, instead of
  200 groups of the first before it.  On `thousand-keys` stretched to 280k requests, the
  stretch where the first model's day runs out cost 400 µs a request walking 400 groups twice
  per request (issue 18 item 4).
- `CapacityReturns.at`: the earliest time (a failed request's `retry_at`), the whole walk,
  remembered while nothing moved: once a pool's day has run out, every request fails at once
  with it.  The answer for a request's models, tokens and quota (or not) stands while the scheduler's change
  count and its attempt count (both in `stamp`) are unchanged and while it is still in the
  future: every term of it is a time that does not depend on `now` until `now` reaches it
  (cooldown ends, probe times, a budget's window or day end).

A `stamp` of None (`Scheduler.recheck_all`) is the reference: every question walks every group
from the first, nothing is remembered.  `tests/test_core_wake.py` holds the two to the same
decisions, and `tests/test_core_returns.py` the early stop to the whole walk.
"""

from __future__ import annotations

import math

from keysched._config import RetryPolicy
from keysched._pool import Pool
from keysched._requests import Request

Stamp = tuple[int, int] | None
"""What moved since: the scheduler's change count and attempt count (None: the reference)."""


class _Remembered:
    """An earliest time (None: never) as of `stamp`."""

    __slots__ = ("returns", "stamp")

    def __init__(self, stamp: tuple[int, int], returns: float | None) -> None:
        self.stamp = stamp
        self.returns = returns

    def stands(self, stamp: tuple[int, int], now: float) -> bool:
        """Whether it still holds: nothing moved since, and it is not yet past."""
        return self.stamp == stamp and (self.returns is None or self.returns > now)


class CapacityReturns:
    """The scheduler's questions of when capacity returns, with what it remembers to answer them.

    Args:
        pool: the pool whose groups are asked.
        retry: the retry policy (which models a request has left).
    """

    __slots__ = ("_known", "_pool", "_retry", "_witness")

    def __init__(self, pool: Pool, retry: RetryPolicy) -> None:
        self._pool = pool
        self._retry = retry
        self._known: dict[tuple[tuple[int, ...], int, bool], _Remembered] = {}
        self._witness: dict[tuple[int, ...], tuple[int, int]] = {}

    def too_late(self, request: Request, now: float, stamp: Stamp) -> bool:
        """Whether nothing can serve the request before its deadline, as far as the core knows.
        Weighed again only after something was benched (`Pool.benched`): the answer cannot
        change otherwise."""
        if request.weighed == self._pool.benched:
            return False
        request.weighed = self._pool.benched
        if stamp is None:
            returns = self.earliest(request, now)
        elif (known := self._standing(request, now, stamp)) is not None:
            returns = known.returns
        else:  # not remembered: walk, stopping at a group back in time
            returns = self._first_back_by(request, now, request.deadline, stamp)
        return returns is not None and returns > request.deadline

    def at(self, request: Request, now: float, stamp: Stamp) -> float | None:
        """When a lane that could serve the request is back (None: never, as far as known)."""
        if stamp is None:
            return self.earliest(request, now)
        known = self._standing(request, now, stamp)
        if known is not None:
            return known.returns
        return self._remember(request, stamp, self.earliest(request, now))

    def earliest(self, request: Request, now: float) -> float | None:
        """The reference: the earliest `group_returns` over every group of the request's models
        (None: no group will serve it, or none ever fits it)."""
        models = self._models(request)
        best = math.inf
        for model in models:
            for project in range(len(self._pool.groups)):
                at = self.group_returns(model, project, request.tokens, request.quota, now)
                if at is not None:
                    best = min(best, at)
        return best if math.isfinite(best) else None

    def group_returns(self, model_index: int, project_index: int, tokens: int, quota: bool,
                      now: float) -> float | None:
        """When the (project, model) group may serve a request of `tokens` again (None: the
        group, its model or its project is out of service).  A request that spends no quota
        (`quota` false: a countTokens call) is not held back by the group's budget, as
        `Placement.verdict` does not hold it back."""
        pool = self._pool
        model = pool.models[model_index]
        group = pool.groups[project_index][model_index]
        if model.unavailable or group.unavailable or not pool.keys.project_active(project_index):
            return None
        # A cooling model may be probed before its cooldown ends, and a learned limit tested
        # before its budget frees: both can return capacity early.
        model_at = min(model.cool_until, max(now, model.probe_at))
        at = max(now, group.cool_until, model_at)
        if quota and group.budget is not None and group.budget.limited:
            free = group.budget.free_at(now, tokens)
            at = max(at, min(free, max(now, group.relearn_at)))
        return at

    # ------------------------------------------------------------------ remembering

    def _models(self, request: Request) -> tuple[int, ...]:
        return request.models_left(self._retry.server_errors_per_model)

    def _key(self, request: Request) -> tuple[tuple[int, ...], int, bool]:
        """What a remembered answer depends on besides the pool: models, size, quota or not."""
        return self._models(request), request.tokens, request.quota

    def _standing(self, request: Request, now: float, stamp: tuple[int, int]) -> _Remembered | None:
        """The remembered answer for the request, if it still stands."""
        known = self._known.get(self._key(request))
        return known if known is not None and known.stands(stamp, now) else None

    def _remember(self, request: Request, stamp: tuple[int, int],
                  returns: float | None) -> float | None:
        if len(self._known) > 4096:  # many sizes of request: start over rather than grow
            self._known.clear()
        self._known[self._key(request)] = _Remembered(stamp, returns)
        return returns

    def _first_back_by(self, request: Request, now: float, deadline: float,
                       stamp: tuple[int, int]) -> float | None:
        """A group's return time at most `deadline` if there is one (the witness asked first);
        otherwise the earliest time of the whole walk, remembered as `at` would."""
        models = self._models(request)
        witness = self._witness.get(models)
        if witness is not None:
            at = self.group_returns(witness[0], witness[1], request.tokens, request.quota,
                                    now)
            if at is not None and at <= deadline:
                return at
        best = math.inf
        for model in models:
            for project in range(len(self._pool.groups)):
                at = self.group_returns(model, project, request.tokens, request.quota, now)
                if at is None:
                    continue
                if at <= deadline:
                    self._witness[models] = (model, project)
                    return at
                best = min(best, at)
        # No group is back in time: the walk was whole, so `best` is the earliest time.
        return self._remember(request, stamp, best if math.isfinite(best) else None)
