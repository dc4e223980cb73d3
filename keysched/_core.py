"""The scheduling core: a pure state machine over keys, quota groups, models and requests.

Theory of operation
-------------------
Inputs go in, decisions come out, and the core says when it next needs to be woken.  It never
reads a clock (time arrives as ``now``), never sleeps, logs or does I/O, and draws randomness
only from the `random.Random` it was given.  Two drivers run it: `keysched.KeyedClient` (asyncio
+ httpx) and the simulator (virtual time).

State:

- **keys**: each may be disabled for good (the reason is kept).
- **quota groups**, one per (project, model): keys of a project share them.  A group can be
  cooling until a time, unavailable for good (``limit: 0``), or *probing*; it carries a `Budget`
  that is never overdrawn once a limit is known, configured or learned from a 429.
- **models**: cooling (503 storms, escalating) or unavailable (404).
- **lanes** (key, model): can serve iff the key is enabled and under its in-flight cap, its
  group and model are neither cooling nor unavailable, its budget has room, and the lane
  itself is not cooling (the lane breaker, a server's retry delay, or a baseline's cooldown).
- **requests**: waiting (FIFO per list of allowed models), backing off, in flight, or ended.
  Every submitted request ends exactly once: finished, failed with a reason, or cancelled.

Each ``poll(now)`` fires due timers (cooldown ends, backoff ends, deadlines), fails requests whose
deadline passed while they waited, then dispatches waiting requests in submission order: each to
the least-loaded lane of the best model tier that can serve it.  ``complete`` applies the one
outcome table (`keysched._table`) and either ends the request or queues its retry.  Illegal
input (an unknown or finished attempt, time running backwards) raises `UsageError` and changes
nothing.

Learning what nobody configured (the quota-intelligence issue):

- A 429 names the quotas it enforced and their values (`Outcome.violations`).  Each value
  becomes the group's limit for that dimension (`Budget.learn`), and from then on the group is
  budgeted exactly like a configured `Limit`: after one 429 per limit, a pool with unknown limits
  behaves like one whose limits were given.  A configured limit always wins.
- Beyond what is proven, carefully.  A group that does not know its limit for a dimension
  *presumes* one: by default the limit learned on another group of the same model (free-tier
  projects share their numbers, and their windows fill together).  Past its presumed limit, a
  group takes one attempt in flight at a time, so at most one 429 teaches it its own; each answer
  past it (the group has more: another tier) allows one more in flight (twice as many per round
  trip, as TCP's slow start), until a 429 teaches the real limit and starts over at one.
- Quotas also grow (a tier upgrade), and nothing says so: a learned limit that holds requests
  back is tested ``relearn_after`` seconds after it was learned, with one attempt past it (only
  when nothing else is in flight on the group, when no configured limit holds the request back,
  and while the server's window is full too, margin aside).  An answer drops the learned limits,
  which the group then presumes (see above) until a 429 teaches the new ones; a 429 keeps them
  and doubles the wait before the next test; any other end of the test tries again later.
- A group benched by a 429 whose limit is still unknown (no ``quotaValue``, a 429 without
  details, or the billing account's spend) reopens *half-open*, like a circuit breaker: one
  attempt in flight at a time, twice as many after each answer, until `HALF_OPEN_CLOSED` are
  allowed and the group is trusted again.  A 429 meanwhile starts over at one.  The queue waits
  instead of flooding the group the moment its cooldown ends.  (`keysched._groups.QuotaGroup`
  owns these rules; the scheduler asks it and tells it.)
- A 429 on a quota (per minute, per day, spend, ``limit: 0``) does not count against
  ``max_attempts``: the request only waited for quota and spent no answer.  Its deadline still
  bounds it, and so does a hard cap of `_QUOTA_ATTEMPT_FACTOR` x ``max_attempts`` attempts.
- A refused attempt is taken out of its group's budget (the server did not count it either).

Breakers that trip on evidence (the breakers issue):

- A 503 retries its request at once on another key of the same model and blames nothing; the
  request moves to the next model after ``server_errors_per_model`` 503s or 500s on one model.
  The model is taken out of rotation only when the evidence says it is overloaded
  (`keysched._breaker.OverloadEvidence`, thresholds on `Policy`); its cooldown then escalates
  per failed probe as before.
- A model that was cooled stays half-open until it answers (its 503 streak is not over): the
  first 503 to an attempt sent after the cooldown began cools it again, escalating.
- While a model cools, a request that nothing else can serve probes it, at most once per
  ``Policy.probe_interval``; an answer ends the cooldown.  The last model never goes dark.
- A lane that answers ``Policy.lane_error_trip`` 500s in a row cools, from
  ``overload_cooldown`` doubling per failed probe; an answer resets it.
- Bare 429s (shared capacity) that persist on one group double its cooldown each time, up to
  ``shared_capacity_cooldown_cap``; an answer on the group resets it.

Decisions where the spec was silent (see also the module docstrings of `_budget` and `_table`):

- A request already in flight is not failed at its deadline by the core: the driver bounds the
  attempt's own timeout by the deadline, and the retry that would follow fails with DEADLINE.
- A retry prefers keys that have not failed the request; it reuses one only as a last resort.
- Requests that allow the same models queue in one FIFO; a head that cannot be served (for
  example too many tokens for what is left of a TPM budget) holds back the requests behind it
  that allow the same models, which is what FIFO means, and nothing else.
- Cooldowns merge by taking the later end, never by overwriting with an earlier one.
- A retry delay on an outcome that blames no quota group (a ``Retry-After`` on a 5xx, a timeout
  or a 503) idles just that (key, model) lane until exactly ``t + d``; the request itself moves
  on as its table row says.  Per-minute 429s bench the group for ``d`` instead, and a per-day
  429's short delay is ignored (the group waits for midnight).
- A cancelled request frees its lane at once; the attempt's outcome, if it still arrives, is
  not reported (completing a cancelled attempt raises `UsageError`).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence

from keysched._breaker import ModelState, OverloadEvidence, escalated
from keysched._budget import Budget
from keysched._config import Key, PoolConfig
from keysched._decisions import Decision, Fail, FailReason, new_dispatch, new_finish
from keysched._errors import UsageError
from keysched._groups import QuotaGroup
from keysched._outcomes import Outcome, OutcomeKind, QuotaDimension, Violation
from keysched._pacific import next_pacific_midnight
from keysched._selection import SKIP, Policy, Selector
from keysched._snapshot import GroupSnapshot, LaneSnapshot, LaneState, PoolEvent, PoolSnapshot
from keysched._table import Action, Effect, Next

__all__ = ["Scheduler"]

# _LATE: past its `start_by`, out of the queue, waiting for its deadline (see `submit`).
_WAITING, _BACKOFF, _IN_FLIGHT, _ENDED, _LATE = range(5)
_TIMER_READY, _TIMER_DEADLINE, _TIMER_LANE, _TIMER_WAKE = range(4)
# Quota 429s do not count against `max_attempts`; this many times it still ends a request.
_QUOTA_ATTEMPT_FACTOR = 4
# 429s that refuse an attempt on a quota: the server did not count it, and no answer was spent.
_QUOTA_REFUSALS = frozenset({OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.RATE_LIMITED_DAY,
                             OutcomeKind.SPEND_LIMITED, OutcomeKind.QUOTA_ZERO})
_ALL_429S = _QUOTA_REFUSALS | {OutcomeKind.SHARED_CAPACITY, OutcomeKind.TOO_LARGE_FOR_QUOTA}


class _Key:
    __slots__ = ("disabled", "in_flight", "index", "key", "project", "seq", "strikes")

    def __init__(self, index: int, key: Key, project: int) -> None:
        self.index = index
        self.key = key
        self.project = project
        self.disabled: str | None = None
        self.in_flight = 0
        self.seq = index - 1_000_000_000  # before any dispatch; keeps the positional tie-break
        self.strikes = 0


class _Request:
    __slots__ = ("avoid", "deadline", "empties", "id", "last_attempt", "later", "models",
                 "number", "quota", "quota_waits", "server_errors", "start_by", "state", "timed",
                 "tokens", "weighed")

    def __init__(self, rid: int, models: tuple[int, ...], tokens: int, deadline: float,
                 quota: bool, start_by: float) -> None:
        self.id = rid
        self.models = models
        self.tokens = tokens
        self.quota = quota
        self.deadline = deadline
        self.start_by = start_by  # no attempt starts after this: it could not end in time
        self.weighed = -1  # the `Scheduler._benched` count when its return time was last weighed
        self.state = _WAITING
        self.number = 0
        self.quota_waits = 0  # attempts refused by a quota 429 (not counted in max_attempts)
        self.later = 0
        self.empties = 0
        self.avoid: set[int] | None = None  # keys that failed it; made on the first failure
        self.server_errors: dict[int, int] | None = None
        self.last_attempt: int | None = None
        self.timed = False  # its deadline timer is in the heap (see `Scheduler._arm_deadline`)


class _Attempt:
    __slots__ = ("budgeted", "key", "model", "relearn", "request", "sent")

    def __init__(self, request: int, key: int, model: int, sent: float, budgeted: bool,
                 relearn: bool = False) -> None:
        self.request = request
        self.key = key
        self.model = model
        self.sent = sent
        self.budgeted = budgeted  # recorded in its group's budget (to undo on withdraw)
        self.relearn = relearn  # sent past a learned limit, to test it


class Scheduler:
    """The pure scheduling core shared by `KeyedClient` and the simulator.

    Args:
        config: the pool.
        rng: the only source of randomness (backoff jitter, random baselines).
        policy: how to select and react; keysched's least-loaded policy by default.
        wall_epoch: the Unix time at core time 0, so per-day quotas end at midnight Pacific.
        record_events: keep `PoolEvent` records for `take_events()`.
    """

    def __init__(self, config: PoolConfig, *, rng: random.Random, policy: Policy | None = None,
                 wall_epoch: float = 0.0, record_events: bool = True) -> None:
        self.config = config
        self.policy = policy or Policy()
        self._rng = rng
        self._wall_epoch = wall_epoch
        self._record = record_events
        self._retry = config.retry
        self._cap = config.max_in_flight_per_key or math.inf
        self._model_index = {name: index for index, name in enumerate(config.models)}
        projects = list(config.projects)
        self._project_names = projects
        project_index = {name: index for index, name in enumerate(projects)}
        self._keys = [_Key(index, key, project_index[key.project or ""])
                      for index, key in enumerate(config.keys)]
        self._project_keys: list[list[int]] = [[] for _ in projects]
        for state in self._keys:
            self._project_keys[state.project].append(state.index)
        self._project_active = [len(keys) for keys in self._project_keys]
        n_models = len(config.models)
        policy = self.policy
        self._models = [
            ModelState(name, len(projects), OverloadEvidence(
                trip=policy.overload_trip, rate=policy.overload_rate, window=policy.overload_window))
            for name in config.models]
        # Server errors in a row per (key, model) lane, for the lane breaker.
        self._lane_errors: dict[tuple[int, int], int] = {}
        self._groups: list[list[QuotaGroup]] = []
        for p, project in enumerate(projects):
            row = []
            for m, model in enumerate(config.models):
                # A group without a configured limit gets its budget (its history, for limits
                # learned later) on its first dispatch: most groups of a big pool stay small.
                limit = config.limit_for(project, model) if self.policy.budgets_limits else None
                budget = (Budget(limit, wall_epoch, config.retry.quota_margin) if limit
                          else None)
                row.append(QuotaGroup(p, m, budget))
            self._groups.append(row)
        # Each project's billing account (a spend 429 benches every project of the account);
        # a project no key names an account for is billed alone.
        account_of = {key.project: key.billing_account for key in config.keys
                      if key.billing_account is not None}
        self._accounts = [account_of.get(project, f"project:{project}") for project in projects]
        # Per model: the limits learned on any of its groups (see "prior" in the docstring).
        self._priors: list[dict[QuotaDimension, int]] = [{} for _ in config.models]
        self._lane_cool: dict[tuple[int, int], float] = {}
        # Per lane (index ``key * n_models + model``): attempts dispatched, answered, failed.
        lanes = len(self._keys) * n_models
        self._n_models = n_models
        self._dispatched = [0] * lanes
        self._answered = [0] * lanes
        self._errored = [0] * lanes
        self._actions = self.policy.actions
        # Looked up per answer; an Enum's hash is a Python-level call, so SUCCESS skips the dict.
        self._on_success = self._actions[OutcomeKind.SUCCESS]
        self._selector: Selector = self.policy.selector(len(self._keys), n_models, rng)
        self._update = self._selector.update
        self._select = self._selector.select
        self._all_models = tuple(range(n_models))
        self._requests: dict[int, _Request] = {}
        self._attempts: dict[int, _Attempt] = {}
        self._queues: dict[tuple[int, ...], list[int]] = {}
        self._timers: list[tuple[float, int, int, int, int]] = []
        self._timer_limit = 64  # compact the heap past this size (see `_compact_timers`)
        self._decisions: list[Decision] = []
        self._fresh: list[_Request] = []  # queued since the last poll, deadline not armed yet
        self._events: list[PoolEvent] = []
        self._tier = list(range(n_models))  # per best model, the tier last dispatched to
        self._now = -math.inf
        self._seq = 0
        self._next_request = 1
        self._next_attempt = 1
        self._waiting = 0
        # Requests by how they ended (counted on the hot path: attributes, not a dict).
        self._submitted = self._finished = self._failed = self._cancelled = 0
        self._current: _Request | None = None  # the request being placed, for `block`
        self._skip_until = math.inf  # when a token budget too full for `_current` frees up
        self._indices_cache: dict[tuple[str, ...], tuple[int, ...]] = {}
        # Counts what was benched, disabled or taken out: a waiting request's return time is
        # weighed again only when it changed (see `_returns_too_late`).
        self._benched = 0

    # ------------------------------------------------------------------ inputs

    def submit(self, now: float, *, models: Sequence[str] | None = None, input_tokens: int = 0,
               deadline: float | None = None, spends_quota: bool = True,
               start_within: float | None = None) -> int:
        """Submit a request; returns its id. Call `poll` to learn where it goes.

        Args:
            now: the current core time.
            models: the models it may use, best first (default: the pool's models).
            input_tokens: estimated input tokens, for token budgets.
            deadline: seconds it may take in total (default: the retry policy's deadline).
            spends_quota: whether the request counts against the known limits (countTokens
                calls are believed not to).
            start_within: seconds after which no attempt of it may start (default: its whole
                deadline).  A driver sets it to the deadline less what an attempt takes: an
                attempt that cannot end before the deadline would spend quota for nothing, and
                a younger request may use that quota instead.  Past it, the request leaves the
                queue and fails at its deadline.

        Raises:
            UsageError: an unknown model, a negative token count, a bad deadline, or time
                running backwards.
        """
        if not (now.__class__ is float and now >= self._now):  # NaN fails `>=` too
            self._check_time(now)
        # The same few model lists come again and again: a tuple is looked up in the cache here.
        try:
            indices = self._indices_cache.get(models) if models.__class__ is tuple else None
        except TypeError:  # a tuple holding a list, say: `_model_indices` says what is wrong
            indices = None
        if indices is None:
            indices = self._model_indices(models)
        if (input_tokens.__class__ is not int  # the fast path: a plain int
                and (isinstance(input_tokens, bool) or not isinstance(input_tokens, int))
                ) or input_tokens < 0:
            raise UsageError(f"input_tokens must be an integer >= 0, got {input_tokens!r}")
        seconds = self._retry.deadline if deadline is None else deadline
        if deadline is not None and (
                isinstance(seconds, bool) or not isinstance(seconds, int | float)
                or math.isnan(seconds) or seconds <= 0):
            raise UsageError(f"deadline must be a duration > 0 seconds, got {deadline!r}")
        if start_within is not None and (
                isinstance(start_within, bool) or not isinstance(start_within, int | float)
                or math.isnan(start_within) or start_within < 0):
            raise UsageError(f"start_within must be a duration >= 0 seconds, got "
                             f"{start_within!r}")
        self._now = now
        rid = self._next_request
        self._next_request += 1
        start = float(seconds) if start_within is None else min(float(seconds), start_within)
        request = _Request(rid, indices, input_tokens, now + float(seconds), bool(spends_quota),
                           now + start)
        self._requests[rid] = request
        self._submitted += 1
        self._enqueue(request)
        return rid

    def complete(self, attempt: int, outcome: Outcome, now: float) -> None:
        """Report the outcome of an attempt in flight. Call `poll` for what follows.

        Raises:
            UsageError: the attempt is unknown, already completed or cancelled, or time ran
                backwards; nothing changes.
        """
        if not isinstance(outcome, Outcome):
            raise UsageError(f"outcome must be an Outcome, got {type(outcome).__name__}")
        if not (now.__class__ is float and now >= self._now):
            self._check_time(now)
        record = self._attempts.pop(attempt, None)
        if record is None:
            raise UsageError(f"attempt {attempt!r} is not in flight (unknown, completed or "
                             "cancelled)")
        self._now = now
        request = self._requests[record.request]
        self._release(record)
        kind = outcome.kind
        action = self._on_success if kind is OutcomeKind.SUCCESS else self._actions[kind]
        group = self._groups[self._keys[record.key].project][record.model]
        if kind is OutcomeKind.SUCCESS or kind is OutcomeKind.BLOCKED:
            self._model_answered(record, now)
            if self._lane_errors:
                self._lane_errors.pop((record.key, record.model), None)
            if group.answered(self._priors[record.model], now, test=record.relearn):
                self._emit("limit_unlearned", "an answer past the learned limit", now,
                           project=self._project_names[group.project],
                           model=self._models[group.model].name)
            if group.parked:
                self._unpark(group)
        elif kind in _ALL_429S:
            self._on_429(group, record, outcome, request, now)
        elif kind is OutcomeKind.SERVER_ERROR and action.effect is Effect.NONE:
            self._lane_error(record, kind.value, now)
        if action.effect is not Effect.NONE or outcome.retry_after is not None:
            self._apply(action, outcome, record, now)
        lane = record.key * self._n_models + record.model
        if action.next is Next.RETURN:
            self._answered[lane] += 1
            self._decisions.append(new_finish((request.id, attempt)))
            request.state = _ENDED  # `_end`, inlined: the request was in flight, not waiting
            del self._requests[request.id]
            self._finished += 1
        else:
            self._errored[lane] += 1
            self._advance(request, action, outcome, record, now)

    def withdraw(self, attempt: int, now: float, *, unsent: bool = False) -> bool:
        """Take back a dispatch the driver has not sent yet, if its key was disabled meanwhile
        (or, with `unsent`, in any case: a shared budget refused it).

        A driver sends an attempt a moment after `poll` decided it, and a refusal that disables
        the key may come back in between (under load, a whole event-loop turn).  Then the
        attempt is withdrawn: its lane is freed, it is not counted as dispatched, and the
        request goes back to the head of its queue without spending an attempt.  Call `poll`.

        Returns:
            True if the attempt was withdrawn; False (nothing changes) if its key is usable.

        Raises:
            UsageError: the attempt is not in flight, or time ran backwards; nothing changes.
        """
        record = self._attempts.get(attempt)
        if record is None:
            raise UsageError(f"attempt {attempt!r} is not in flight (unknown, completed or "
                             "cancelled)")
        self._check_time(now)
        if self._keys[record.key].disabled is None and not unsent:
            return False
        self._now = now
        del self._attempts[attempt]
        self._release(record)
        self._dispatched[record.key * self._n_models + record.model] -= 1
        if record.budgeted:  # it was never sent: give its quota back
            budget = self._groups[self._keys[record.key].project][record.model].budget
            assert budget is not None
            budget.forget(record.sent, self._requests[record.request].tokens)
        request = self._requests[record.request]
        request.number -= 1
        if now >= request.deadline:  # its deadline timer fired while it was in flight
            self._fail(request, FailReason.DEADLINE, now)
        else:
            self._enqueue(request)
        return True

    def cancel(self, request: int, now: float, *, failed: bool = False) -> bool:
        """Cancel a request, releasing its lane if it is in flight.

        Args:
            request: the request.
            now: the current core time.
            failed: count it as failed rather than cancelled (the driver gave up on it, as when
                a stream breaks after chunks were delivered and cannot be failed over).

        Returns:
            True if it was cancelled, False if it had already ended.

        Raises:
            UsageError: the request id was never issued, or time ran backwards.
        """
        state = self._requests.get(request)
        if state is None:
            if 0 < request < self._next_request:
                return False
            raise UsageError(f"request {request!r} was never submitted")
        self._check_time(now)
        self._now = now
        if state.state == _IN_FLIGHT and state.last_attempt is not None:
            record = self._attempts.pop(state.last_attempt)
            self._release(record)
        self._end(state, failed=failed)
        return True

    def poll(self, now: float) -> list[Decision]:
        """Advance to `now` and return every decision since the last poll, in order.

        Raises:
            UsageError: time ran backwards.
        """
        if not (now.__class__ is float and now >= self._now):
            self._check_time(now)
        self._now = now
        fresh = self._fresh
        for request in fresh:  # a deadline already passed fails in timer order, as it always did
            if request.deadline <= now:
                self._arm_deadline(request)
        timers = self._timers
        if timers and timers[0][0] <= now:
            self._fire_timers(now)
        if self._queues:
            self._dispatch_waiting(now)
        if fresh:
            for request in fresh:
                if request.state == _WAITING:
                    self._arm_deadline(request)
            fresh.clear()
        decisions = self._decisions
        if not decisions:
            return []  # a fresh list: the caller may keep what it is given
        self._decisions = []
        return decisions

    def next_deadline(self) -> float:
        """The earliest time at which `poll` may have something new to do (`math.inf`: none)."""
        if self._fresh:
            return self._now  # requests submitted or re-queued since the last poll
        timers = self._timers
        while timers:
            at, _, kind, ref, _ = timers[0]
            if kind in (_TIMER_READY, _TIMER_DEADLINE):
                request = self._requests.get(ref)
                if request is None or (kind == _TIMER_READY and request.state != _BACKOFF):
                    heapq.heappop(timers)
                    continue
            # A capacity wake-up (cooldown end) is kept even while nothing waits: a request
            # submitted later may need it, and dropping it here left such a request asleep
            # until its deadline.  The cost is one idle wake-up per cooldown.
            return at
        return math.inf

    def take_events(self) -> list[PoolEvent]:
        """The pool events recorded since the last call (key disabled, cooldowns, fallbacks)."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ queries

    @property
    def in_flight(self) -> int:
        """Attempts in flight."""
        return len(self._attempts)

    @property
    def open_requests(self) -> int:
        """Requests submitted that have not ended."""
        return len(self._requests)

    def snapshot(self, now: float | None = None) -> PoolSnapshot:
        """A read-only picture of the pool at `now` (default: the last time the core saw)."""
        at = self._now if now is None else now
        lanes = []
        for state in self._keys:
            for model_index, model in enumerate(self._models):
                lane_state, reason, until = self._lane_status(state, model_index, at)
                lane = state.index * self._n_models + model_index
                lanes.append(LaneSnapshot(
                    key=state.key.label or "", project=self._project_names[state.project],
                    model=model.name, state=lane_state, reason=reason, cooldown_until=until,
                    in_flight=state.in_flight, dispatched=self._dispatched[lane],
                    succeeded=self._answered[lane], failed=self._errored[lane]))
        groups = []
        for project_index, row in enumerate(self._groups):
            for model_index, group in enumerate(row):
                if group.budget is None:
                    usage: tuple[int | None, int | None, int | None] = (None, None, None)
                elif math.isfinite(at):
                    usage = group.budget.usage(at)
                else:  # the core has seen no time yet, so nothing was sent
                    usage = (0, 0, 0)
                cooling = group.cool_until > at
                groups.append(GroupSnapshot(
                    project=self._project_names[project_index],
                    model=self._models[model_index].name,
                    cooldown_until=group.cool_until if cooling else None,
                    reason=group.reason if cooling or group.unavailable else None,
                    unavailable=group.unavailable, requests_last_minute=usage[0],
                    tokens_last_minute=usage[1], requests_today=usage[2],
                    limits=() if group.budget is None else group.budget.limits,
                    probing=group.half_open is not None))
        return PoolSnapshot(
            now=at, lanes=tuple(lanes), groups=tuple(groups), waiting=self._waiting,
            in_flight=len(self._attempts), requests_submitted=self._submitted,
            requests_finished=self._finished, requests_failed=self._failed,
            requests_cancelled=self._cancelled)

    # ------------------------------------------------------------------ LaneOracle

    def block(self, key: int, model: int, now: float) -> float | None:
        """See `keysched._selection.LaneOracle.block`."""
        state = self._keys[key]
        if state.disabled is not None or state.in_flight >= self._cap:
            return math.inf
        group = self._groups[state.project][model]
        if group.unavailable:
            return math.inf
        until = group.cool_until
        lane_until = self._lane_cool.get((key, model))
        if lane_until is not None and lane_until > until:
            until = lane_until
        if until > now:
            return until
        if group.in_flight and group.full(
                self._priors[model], 0 if self._current is None else self._current.tokens, now):
            group.parked = True  # `_release` offers the lanes again when an attempt ends
            return math.inf
        if (group.budget is not None and group.budget.limited and self._current is not None
                and self._current.quota):
            tokens = self._current.tokens
            free = group.budget.free_at(now, tokens)
            if group.may_test_learned_limit(now, tokens, free):
                return None  # `_dispatch` marks the attempt as the test
            if free > now:
                if math.isinf(free):
                    return SKIP  # this request can never fit this group's token limit
                anyone = group.budget.free_at(now, 0)
                if anyone <= now:
                    # Too large for what is left of the token budget: only this request waits,
                    # and it must be woken when enough tokens have left the window.
                    self._skip_until = min(self._skip_until, free)
                    return SKIP
                # Blocked for everyone, but only until a request of no tokens could pass: a
                # smaller request may use the lane then, before this one's tokens fit.  Or
                # until its learned limit is due to be tested.
                return anyone if group.relearn_at <= now else min(anyone, group.relearn_at)
        return None

    def park(self, key: int, model: int, until: float) -> None:
        """See `keysched._selection.LaneOracle.park`."""
        if math.isfinite(until):
            self._timer(until, _TIMER_LANE, key, model)

    # ------------------------------------------------------------------ internals

    def _check_time(self, now: float) -> None:
        if now.__class__ is float and now >= self._now:  # the hot path; NaN fails `>=`
            return
        if not isinstance(now, int | float) or math.isnan(now) or now < self._now:
            raise UsageError(f"time must not run backwards: now={now!r} after {self._now!r}")

    def _model_indices(self, models: Sequence[str] | None) -> tuple[int, ...]:
        if models is None:
            return self._all_models
        if type(models) is tuple:  # the common case: the same few model lists, again and again
            try:
                cached = self._indices_cache.get(models)
            except TypeError:  # unhashable: not a tuple of names
                return self._model_indices(list(models))
            if cached is None:
                cached = self._model_indices(list(models))
                if len(self._indices_cache) < 256:
                    self._indices_cache[models] = cached
            return cached
        if isinstance(models, str):
            models = [models]
        try:
            names = list(models)
        except TypeError:  # not a list of names at all (a number, say)
            raise UsageError(f"models must be a best-first list of model names, got "
                             f"{type(models).__name__}") from None
        indices = []
        for name in names:
            index = self._model_index.get(name.removeprefix("models/")) if isinstance(
                name, str) else None
            if index is None:
                raise UsageError(f"unknown model {name!r}; the pool's models are "
                                 f"{list(self.config.models)}")
            if index not in indices:
                indices.append(index)
        if not indices:
            raise UsageError("models must name at least one model")
        return tuple(indices)

    def _timer(self, at: float, kind: int, ref: int, extra: int, order: int | None = None) -> None:
        """Have `poll` act at `at`; timers due at one time fire by `order` (default: as pushed)."""
        if order is None:
            self._seq += 1
            order = self._seq
        heapq.heappush(self._timers, (at, order, kind, ref, extra))
        if len(self._timers) > self._timer_limit:
            self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop the timers of requests that have ended (or left backoff).

        They are otherwise dropped only when they reach the top of the heap, and a parked lane's
        timer there (which must stay) would keep every later one alive: under steady load the
        heap would grow with the throughput.  Rebuilding at twice the live size is amortised O(1).
        """
        requests = self._requests
        live = [timer for timer in self._timers
                if timer[2] in (_TIMER_LANE, _TIMER_WAKE)
                or ((request := requests.get(timer[3])) is not None
                    and (timer[2] == _TIMER_DEADLINE or request.state == _BACKOFF))]
        heapq.heapify(live)
        self._timers = live
        self._timer_limit = max(64, 2 * len(live))

    def _emit(self, kind: str, reason: str, now: float, **fields: object) -> None:
        if self._record:
            self._events.append(PoolEvent(time=now, kind=kind, reason=reason, **fields))  # type: ignore[arg-type]

    def _enqueue(self, request: _Request) -> None:
        models = self._effective_models(request) if request.server_errors else request.models
        request.state = _WAITING
        self._waiting += 1
        heapq.heappush(self._queues.setdefault(models, []), request.id)
        if not request.timed:
            self._fresh.append(request)

    def _arm_deadline(self, request: _Request) -> None:
        """Put the request's deadline timer in the heap, once.

        Only a waiting or backing-off request needs one (the core never fails a request in
        flight), and most requests are dispatched by the poll that follows their submission: so
        the timer is armed only when a request is still waiting after a poll, or backs off.  A
        timer armed at every submission would be dropped unused almost always, and its heap
        push and later compaction cost a twentieth of a scheduling cycle.
        """
        if not request.timed:
            request.timed = True
            if math.isfinite(request.deadline):
                # Deadlines due at one time fail oldest request first, however late each was armed.
                self._timer(request.deadline, _TIMER_DEADLINE, request.id, 0, order=request.id)

    def _effective_models(self, request: _Request) -> tuple[int, ...]:
        errors = request.server_errors
        if not errors:
            return request.models
        limit = self._retry.server_errors_per_model
        models = tuple(m for m in request.models if errors.get(m, 0) < limit)
        return models or request.models[-1:]

    def _end(self, request: _Request, *, failed: bool) -> None:
        """End a request that failed or was cancelled (`complete` ends answered ones itself)."""
        if request.state in (_WAITING, _BACKOFF, _LATE):
            self._waiting -= 1
        request.state = _ENDED
        del self._requests[request.id]
        if failed:
            self._failed += 1
        else:
            self._cancelled += 1

    def _fail(self, request: _Request, reason: FailReason, now: float) -> None:
        retry_at = self._capacity_returns(request, now) if reason in (
            FailReason.DEADLINE, FailReason.NO_CAPACITY) else None
        self._decisions.append(Fail(request=request.id, reason=reason,
                                    attempt=request.last_attempt, retry_at=retry_at))
        self._end(request, failed=True)

    def _release(self, record: _Attempt) -> None:
        """Free the key and the quota group an attempt held."""
        state = self._keys[record.key]
        state.in_flight -= 1
        self._update(record.key, (state.in_flight, state.seq))
        group = self._groups[state.project][record.model]
        group.released(self._now, test=record.relearn)
        if group.parked:
            self._unpark(group)

    def _unpark(self, group: QuotaGroup) -> None:
        """Offer the group's lanes again (they were parked until one of its attempts ended)."""
        group.parked = False
        for key in self._project_keys[group.project]:
            self._selector.release(key, group.model)

    # ------------------------------------------------------------------ learning quotas

    def _on_429(self, group: QuotaGroup, record: _Attempt, outcome: Outcome, request: _Request,
                now: float) -> None:
        """Learn from a 429: the limits it names, whether to probe, what the request spent."""
        budget = group.budget
        if record.budgeted and budget is not None:
            budget.forget(record.sent, request.tokens)  # refused: the server did not count it
        if outcome.kind in _QUOTA_REFUSALS:
            request.quota_waits += 1
        if budget is None or not self.policy.learns_limits:
            return
        probe = outcome.kind not in (OutcomeKind.TOO_LARGE_FOR_QUOTA, OutcomeKind.QUOTA_ZERO)
        learned = group.refused(outcome.violations, now, test=record.relearn,
                                relearn_after=self._retry.relearn_after, probe=probe)
        for violation in learned:
            self._benched += 1
            self._emit_learned(group, violation, now)
        for violation in outcome.violations:  # every usable value is a prior for the siblings
            if (violation.value is not None and violation.value >= 1
                    and violation.dimension is not QuotaDimension.SPEND):
                self._priors[group.model][violation.dimension] = violation.value

    def _emit_learned(self, group: QuotaGroup, violation: Violation, now: float) -> None:
        self._emit("limit_learned", f"{violation.dimension.value}={violation.value} from "
                   f"{violation.quota_id}", now, project=self._project_names[group.project],
                   model=self._models[group.model].name)

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, ref, extra = heapq.heappop(timers)
            if kind == _TIMER_LANE:
                self._selector.release(ref, extra)
                continue
            request = self._requests.get(ref)
            if request is None:
                continue
            if kind == _TIMER_READY and request.state == _BACKOFF:
                self._waiting -= 1
                self._enqueue(request)
            elif kind == _TIMER_DEADLINE and request.state in (_WAITING, _BACKOFF, _LATE):
                self._fail(request, FailReason.DEADLINE, now)

    def _dispatch_waiting(self, now: float) -> None:
        queues = self._queues
        requests = self._requests
        blocked: set[tuple[int, ...]] | None = None  # made when a queue first blocks
        while True:
            # The oldest head among the queues not blocked yet (request ids grow with time).
            best: tuple[int, ...] | None = None
            head = 0
            for models, queue in queues.items():
                while queue:  # drop entries of requests that ended or moved (inlined: hot)
                    waiting = requests.get(queue[0])
                    if waiting is not None and waiting.state == _WAITING and (
                            self._effective_models(waiting) if waiting.server_errors
                            else waiting.models) == models:
                        break
                    heapq.heappop(queue)
                if queue and (blocked is None or models not in blocked) and (
                        best is None or queue[0] < head):
                    best, head = models, queue[0]
            if best is None:
                break
            queue = queues[best]
            request = requests[head]
            if now > request.start_by:  # too late to start: let the requests behind it go
                heapq.heappop(queue)
                if math.isinf(request.deadline):  # no deadline would ever end it
                    self._fail(request, FailReason.DEADLINE, now)
                else:
                    request.state = _LATE
                    self._arm_deadline(request)
            elif self._place(request, best, now):
                heapq.heappop(queue)
            elif not self.policy.waits_for_capacity or self._hopeless(best):
                heapq.heappop(queue)
                reason = (FailReason.NO_USABLE_LANE if self._hopeless(best)
                          else FailReason.NO_CAPACITY)
                self._fail(request, reason, now)
            elif self._returns_too_late(request, now):
                heapq.heappop(queue)
                self._fail(request, FailReason.DEADLINE, now)
            else:
                if blocked is None:
                    blocked = set()
                blocked.add(best)
                continue
            if not queue:
                del queues[best]
        # Stale entries may have emptied a queue that nothing placed from.
        if len(queues) > (0 if blocked is None else len(blocked)):
            for models in [models for models, queue in queues.items() if not queue]:
                del queues[models]

    def _returns_too_late(self, request: _Request, now: float) -> bool:
        """Whether nothing can serve the request before its deadline, as far as the core knows
        (every lane benched past it: say, a pool benched until midnight).  Then it fails at once,
        with `retry_at`, instead of waiting out its deadline.  Weighed again only after something
        was benched (`_benched`): the answer cannot change otherwise."""
        if request.weighed == self._benched:
            return False
        request.weighed = self._benched
        returns = self._capacity_returns(request, now)
        return returns is not None and returns > request.deadline

    def _hopeless(self, models: tuple[int, ...]) -> bool:
        return all(self._models[m].unavailable or self._models[m].usable_groups <= 0
                   for m in models)

    def _place(self, request: _Request, models: tuple[int, ...], now: float) -> bool:
        self._current = request
        self._skip_until = math.inf
        try:
            for model in models:
                state = self._models[model]
                if state.unavailable or state.cool_until > now:
                    continue
                key = self._select(self, model, now, request.avoid or ())
                if key is not None:
                    self._dispatch(request, key, model, now)
                    return True
            if self._probe_cooling_model(request, models, now):
                return True
            if math.isfinite(self._skip_until):
                self._timer(self._skip_until, _TIMER_WAKE, 0, 0)
            return False
        finally:
            self._current = None

    def _probe_cooling_model(self, request: _Request, models: tuple[int, ...],
                             now: float) -> bool:
        """Nothing else can serve the request: probe a cooling model, if one is due."""
        for model in models:
            state = self._models[model]
            if state.unavailable or state.cool_until <= now or state.probe_at > now:
                continue
            key = self._select(self, model, now, request.avoid or ())
            if key is not None:
                state.probe_at = now + self.policy.probe_interval
                self._timer(state.probe_at, _TIMER_WAKE, 0, 0)
                self._dispatch(request, key, model, now)
                return True
        return False

    def _dispatch(self, request: _Request, key: int, model: int, now: float) -> None:
        state = self._keys[key]
        aid = self._next_attempt
        self._next_attempt = aid + 1
        state.in_flight += 1
        # Attempt ids grow with every dispatch: the id orders keys by their last dispatch too.
        state.seq = aid
        self._update(key, (state.in_flight, aid))
        group = self._groups[state.project][model]
        budget = group.budget
        if budget is None and self.policy.budgets_limits:
            budget = group.budget = Budget(None, self._wall_epoch, self._retry.quota_margin)
        budgeted = budget is not None and request.quota
        relearn = False
        if budgeted:
            assert budget is not None
            # Past a known limit only as the test of a learned one (see `block`).
            relearn = budget.limited and budget.free_at(now, request.tokens) > now
            budget.record(now, request.tokens)
        group.sent(test=relearn)
        self._dispatched[key * self._n_models + model] += 1
        self._attempts[aid] = _Attempt(request.id, key, model, now, budgeted, relearn)
        self._waiting -= 1
        request.state = _IN_FLIGHT
        number = request.number = request.number + 1
        request.last_attempt = aid
        if model != self._tier[request.models[0]]:
            self._note_tier(request, model, now)
        self._decisions.append(new_dispatch((request.id, aid, number, state.key,
                                             self._models[model].name)))

    def _note_tier(self, request: _Request, model: int, now: float) -> None:
        """Record and announce a change of the tier serving the request's best model (the
        caller has seen that `model` differs from the tier last used)."""
        best = request.models[0]
        previous = self._tier[best]
        self._tier[best] = model
        kind = "recovered" if model == best else "fallback"
        self._emit(kind, f"{self._models[previous].name} -> {self._models[model].name}", now,
                   model=self._models[model].name)

    # ------------------------------------------------------------------ the outcome table

    def _apply(self, action: Action, outcome: Outcome, record: _Attempt, now: float) -> None:
        effect = action.effect
        state = self._keys[record.key]
        model = self._models[record.model]
        group = self._groups[state.project][record.model]
        project = self._project_names[state.project]
        reason = outcome.kind.value
        if effect is Effect.COOL_GROUP:
            delay = self._quota_delay(outcome)
            self._cool_group(group, now + delay, reason, project, model.name, now)
        elif effect is Effect.COOL_BILLING_ACCOUNT:
            delay = self._quota_delay(outcome)
            account = self._accounts[state.project]
            for project_index in (p for p, a in enumerate(self._accounts) if a == account):
                for other in self._groups[project_index]:
                    self._cool_group(other, now + delay, reason,
                                     self._project_names[project_index],
                                     self._models[other.model].name, now)
                    other.half_open = 1  # spend is no budget: reopen every group carefully
        elif effect is Effect.COOL_GROUP_BRIEFLY:
            # Bare 429s that persist on a group (paid accounts see them for hours on one model):
            # twice as long each time, so the pool spends its attempts elsewhere.
            # Only an attempt sent after the current bench began escalates it: a burst of
            # concurrent 429s is one piece of evidence, not several.
            delay = group.bare_429(record.sent, now, self._retry.shared_capacity_cooldown,
                                   self._retry.shared_capacity_cooldown_cap)
            self._cool_group(group, now + delay, reason, project, model.name, now)
        elif effect is Effect.COOL_GROUP_UNTIL_MIDNIGHT:
            until = next_pacific_midnight(now + self._wall_epoch) - self._wall_epoch
            self._cool_group(group, until, reason, project, model.name, now)
        elif effect is Effect.GROUP_UNAVAILABLE:
            if not group.unavailable:
                group.unavailable = True
                group.reason = reason
                if self._project_active[state.project] > 0:
                    model.usable_groups -= 1
                self._emit("group_unavailable", reason, now, project=project, model=model.name)
        elif effect is Effect.COOL_MODEL:
            # One 503 is evidence, not proof (see `keysched._breaker.ModelState`).
            changed, news = model.overloaded(
                record.sent, now, base=self._retry.overload_cooldown,
                cap=self._retry.overload_cooldown_cap, probe_interval=self.policy.probe_interval)
            if changed:
                model.reason = reason
                self._benched += 1
                self._timer(model.cool_until, _TIMER_WAKE, 0, 0)
                self._timer(model.probe_at, _TIMER_WAKE, 0, 0)
                if news:  # not for every straggler that extends it a little
                    self._emit("model_cooled", reason, now, model=model.name,
                               until=model.cool_until)
        elif effect is Effect.MODEL_UNAVAILABLE:
            if not model.unavailable:
                model.unavailable = True
                model.reason = reason
                self._emit("model_unavailable", reason, now, model=model.name)
        elif effect is Effect.DISABLE_KEY:
            self._disable(state, reason, now)
        elif effect is Effect.DISABLE_PROJECT:
            for index in self._project_keys[state.project]:
                self._disable(self._keys[index], reason, now)
        elif effect is Effect.COOL_LANE:
            self._cool_lane(record, now + action.seconds, reason, now)
        elif effect is Effect.STRIKE:
            state.strikes += 1
            if state.strikes >= action.strikes:
                self._disable(state, f"{action.strikes} strikes, last {reason}", now)
        self._lane_retry_delay(action, outcome, record, now)

    def _quota_delay(self, outcome: Outcome) -> float:
        """How long a quota 429 benches: the server's delay (capped), else a minute."""
        if outcome.retry_after is None:
            return self._retry.minute_cooldown
        return min(outcome.retry_after, self._retry.max_server_delay)

    def _lane_retry_delay(self, action: Action, outcome: Outcome, record: _Attempt,
                          now: float) -> None:
        if (outcome.retry_after is not None
                and action.effect in (Effect.NONE, Effect.COOL_MODEL)
                and action.next in (Next.RETRY_NOW, Next.RETRY_LATER)):
            # The server named a retry delay but no quota group to blame (a Retry-After on a
            # 5xx, a timeout or a 503): honour it for this lane only, until exactly t + d.
            self._cool_lane(record, now + min(outcome.retry_after, self._retry.max_server_delay),
                            outcome.kind.value, now)

    def _lane_error(self, record: _Attempt, reason: str, now: float) -> None:
        """A 500 on a lane: the lane breaker cools it at `lane_error_trip` in a row."""
        lane = (record.key, record.model)
        errors = self._lane_errors[lane] = self._lane_errors.get(lane, 0) + 1
        trip = self.policy.lane_error_trip
        if errors >= trip:
            delay = escalated(self._retry.overload_cooldown, self._retry.overload_cooldown_cap,
                              errors - trip)
            self._cool_lane(record, now + delay, reason, now)

    def _model_answered(self, record: _Attempt, now: float) -> None:
        """An answer on a model: its 503 streak is over, and a probe ends its cooldown."""
        self._models[record.model].answered(record.sent, now)

    def _cool_lane(self, record: _Attempt, until: float, reason: str, now: float) -> None:
        lane = (record.key, record.model)
        if until > self._lane_cool.get(lane, -math.inf):
            self._lane_cool[lane] = until
            state = self._keys[record.key]
            self._emit("lane_cooled", reason, now, key=state.key.label,
                       project=self._project_names[state.project],
                       model=self._models[record.model].name, until=until)
            self._timer(until, _TIMER_WAKE, 0, 0)

    def _cool_group(self, group: QuotaGroup, until: float, reason: str, project: str, model: str,
                    now: float) -> None:
        if until > group.cool_until:
            self._benched += 1
            group.cool_until = until
            group.reason = reason
            self._timer(until, _TIMER_WAKE, 0, 0)
            self._emit("group_cooled", reason, now, project=project, model=model, until=until)

    def _disable(self, state: _Key, reason: str, now: float) -> None:
        if state.disabled is not None:
            return
        state.disabled = reason
        self._benched += 1
        self._project_active[state.project] -= 1
        if self._project_active[state.project] == 0:
            for model_index, group in enumerate(self._groups[state.project]):
                if not group.unavailable:
                    self._models[model_index].usable_groups -= 1
        self._emit("key_disabled", reason, now, key=state.key.label,
                   project=self._project_names[state.project])

    def _advance(self, request: _Request, action: Action, outcome: Outcome, record: _Attempt,
                 now: float) -> None:
        """Act on an outcome that did not answer the request: fail it or queue its retry."""
        step = action.next
        if step is Next.FAIL:
            self._fail(request, FailReason.REQUEST_ERROR, now)
            return
        request.state = _BACKOFF  # not waiting in a queue yet; counted as waiting below
        self._waiting += 1
        if outcome.kind is OutcomeKind.EMPTY:
            request.empties += 1
            if request.empties > self._retry.empty_retries:
                self._fail(request, FailReason.EMPTY_RESPONSE, now)
                return
        if (outcome.kind is OutcomeKind.SERVER_ERROR or outcome.kind is OutcomeKind.OVERLOADED
                or step is Next.RETRY_OTHER_MODEL):
            errors = request.server_errors
            if errors is None:
                errors = request.server_errors = {}
            limit = self._retry.server_errors_per_model
            if step is Next.RETRY_OTHER_MODEL:
                errors[record.model] = limit
                if all(errors.get(m, 0) >= limit for m in request.models):
                    reason = (FailReason.REQUEST_ERROR if outcome.kind is
                              OutcomeKind.TOO_LARGE_FOR_QUOTA else FailReason.NO_USABLE_LANE)
                    self._fail(request, reason, now)
                    return
            else:
                errors[record.model] = errors.get(record.model, 0) + 1
        max_attempts = self._retry.max_attempts
        if (request.number - request.quota_waits >= max_attempts
                or request.number >= max_attempts * _QUOTA_ATTEMPT_FACTOR):
            self._fail(request, FailReason.ATTEMPTS_EXHAUSTED, now)
            return
        if now >= request.deadline:
            self._fail(request, FailReason.DEADLINE, now)
            return
        if request.avoid is None:
            request.avoid = set()
        request.avoid.add(record.key)
        if step is Next.RETRY_LATER:
            ready = now + self._backoff(request)
            self._timer(ready, _TIMER_READY, request.id, 0)
            self._arm_deadline(request)
        else:
            self._waiting -= 1
            self._enqueue(request)

    def _backoff(self, request: _Request) -> float:
        retry = self._retry
        delay = min(retry.backoff_cap, retry.backoff_base * 2.0**request.later)
        request.later += 1
        return delay * (1 - retry.jitter * self._rng.random())

    def _capacity_returns(self, request: _Request, now: float) -> float | None:
        """The earliest time a lane of the request's models may serve again, if any ever will."""
        best = math.inf
        for model_index in self._effective_models(request):
            model = self._models[model_index]
            if model.unavailable:
                continue
            for project_index, row in enumerate(self._groups):
                group = row[model_index]
                if group.unavailable or self._project_active[project_index] == 0:
                    continue
                # A cooling model may be probed before its cooldown ends, and a learned limit
                # tested before its budget frees: both can return capacity early.
                model_at = min(model.cool_until, max(now, model.probe_at))
                at = max(now, group.cool_until, model_at)
                if group.budget is not None and group.budget.limited:
                    free = group.budget.free_at(now, request.tokens)
                    at = max(at, min(free, max(now, group.relearn_at)))
                best = min(best, at)
        return best if math.isfinite(best) else None

    def _lane_status(self, state: _Key, model_index: int,
                     now: float) -> tuple[LaneState, str | None, float | None]:
        if state.disabled is not None:
            return LaneState.DISABLED, state.disabled, None
        model = self._models[model_index]
        group = self._groups[state.project][model_index]
        if model.unavailable or group.unavailable:
            return LaneState.UNAVAILABLE, model.reason if model.unavailable else group.reason, None
        candidates = [(group.cool_until, group.reason), (model.cool_until, model.reason),
                      (self._lane_cool.get((state.index, model_index), -math.inf), "lane")]
        until, reason = max(candidates, key=lambda item: item[0])
        if until > now:
            return LaneState.COOLING, reason, until
        if group.budget is not None and group.budget.limited and math.isfinite(now):
            # (now is -inf when no time was seen: nothing was sent)
            free = group.budget.free_at(now, 0)
            if free > now:
                return LaneState.COOLING, "budget", free
        return LaneState.AVAILABLE, None, None
