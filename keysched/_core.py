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

The parts, each an object that owns its state and answers with values (none reaches back into
the scheduler):

- `keysched._pool.Pool`: keys, quota groups, models and lanes, with their cooldowns, budgets and
  breakers.  It applies an outcome's effect and returns `keysched._pool.Changes` (wake-up times
  and events); a `keysched._pool.LaneQuery` per placement tells the selector which lanes can
  serve a request.  It is also the seam for facts learned from other processes
  (`cool_group`, `cool_lane`, `cool_model`, `disable_key`, `learn_limit`) and
  the source of the facts worth sharing (`shared_facts`).
- `keysched._requests.Requests`: the open requests, each in an explicit state, moved only along
  the one transition table there.
- `keysched._timers.TimerHeap`: backoff ends, deadlines, parked lanes, capacity wake-ups.
- `keysched._table`: the outcome table, what the policy does (`Action`) and what the outcome
  means (`Meaning`).
- `Scheduler` (here): the public inputs and outputs, and the dispatch loop.

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
  bounds it, and so does a hard cap of `keysched._requests.QUOTA_ATTEMPT_FACTOR` x ``max_attempts`` attempts.
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

import math
import random
from collections.abc import Sequence

from keysched._config import PoolConfig
from keysched._decisions import Decision, Dispatch, Fail, FailReason, Finish
from keysched._errors import UsageError
from keysched._facts import SharedFact, learn
from keysched._names import Names
from keysched._outcomes import Outcome, OutcomeKind
from keysched._placement import Placement
from keysched._pool import Changes, Pool
from keysched._queues import Queues
from keysched._requests import WAITS, Attempt, Request, RequestInput, Requests, RequestState
from keysched._returns import CapacityReturns
from keysched._selection import Policy
from keysched._snapshot import PoolEvent, PoolSnapshot
from keysched._table import OUTCOMES, Action, Meaning, Next
from keysched._timers import TimerHeap, TimerKind
from keysched._views import pool_snapshot, shared_facts

__all__ = ["Scheduler"]



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
        self._record = record_events
        self._retry = config.retry
        self._pool = Pool(config, self.policy, rng, wall_epoch=wall_epoch,
                          record_events=record_events)
        self._names = Names(config, self._pool.keys)
        # The outcome table, both halves, one lookup per outcome.
        self._rules: dict[OutcomeKind, tuple[Action, Meaning]] = {
            kind: (self.policy.actions[kind], OUTCOMES[kind]) for kind in OutcomeKind}
        self._requests = Requests()
        self._attempts: dict[int, Attempt] = {}
        self._queues = Queues(self._requests, config.retry.server_errors_per_model)
        self._timers = TimerHeap()
        self._decisions: list[Decision] = []
        self._fresh: list[Request] = []  # queued since the last poll, deadline not armed yet
        self._events: list[PoolEvent] = []
        self._now = -math.inf
        self._next_attempt = 1
        # Inputs that can change the pool (`CapacityReturns` remembers while none came: a timer
        # changes no quota group), and timers fired; `Queues.held` waits for either.
        self._moved = self._fired = 0
        # True: ask every waiting queue and the pool every time (the reference path).
        self.recheck_all = not getattr(self._pool.selector, "wakes_on_change", False)
        self._returns = CapacityReturns(self._pool, config.retry)

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
        _check_time(now, self._now)
        indices = self._names.model_list(models)
        if isinstance(input_tokens, bool) or not isinstance(input_tokens, int) or (
                input_tokens < 0):
            raise UsageError(f"input_tokens must be an integer >= 0, got {input_tokens!r}")
        seconds = self._retry.deadline if deadline is None else _duration(
            "deadline", deadline, minimum_excluded=True)
        start = seconds if start_within is None else min(
            seconds, _duration("start_within", start_within, minimum_excluded=False))
        self._now = now
        request = self._requests.new(indices, input_tokens, now + seconds, bool(spends_quota),
                                     now + start)
        self._enqueue(request, RequestInput.QUEUE)
        return request.id

    def complete(self, attempt: int, outcome: Outcome, now: float) -> None:
        """Report the outcome of an attempt in flight. Call `poll` for what follows.

        Raises:
            UsageError: the attempt is unknown, already completed or cancelled, or time ran
                backwards; nothing changes.
        """
        if not isinstance(outcome, Outcome):
            raise UsageError(f"outcome must be an Outcome, got {type(outcome).__name__}")
        _check_time(now, self._now)
        record = self._attempts.pop(attempt, None)
        if record is None:
            raise UsageError(f"attempt {attempt!r} is not in flight (unknown, completed or "
                             "cancelled)")
        self._now = now
        self._moved += 1
        request = self._requests.open[record.request]
        self._pool.release(record, now)
        action, meaning = self._rules[outcome.kind]
        if not meaning.counts_attempt:
            request.quota_waits += 1
        self._take(self._pool.settle(record, request.tokens, outcome, action, meaning, now))
        if action.next is Next.RETURN:
            self._decisions.append(Finish(request.id, attempt))
            self._requests.move(request, RequestInput.ANSWER)
        else:
            self._advance(request, action, meaning, record, now)

    def withdraw(self, attempt: int, now: float, *, unsent: bool = False) -> bool:
        """Take back an unsent dispatch, if its key was disabled meanwhile (`unsent`: anyway).

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
        _check_time(now, self._now)
        if not unsent and not self._pool.key_disabled(record.key):
            return False
        self._now = now
        self._moved += 1
        del self._attempts[attempt]
        request = self._requests.open[record.request]
        self._pool.withdraw(record, request.tokens, now)
        request.number -= 1
        if now >= request.deadline:  # its deadline timer fired while it was in flight
            self._fail(request, FailReason.DEADLINE, now)
        else:
            self._enqueue(request, RequestInput.WITHDRAW)
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
        state = self._requests.open.get(request)
        if state is None:
            if self._requests.issued(request):
                return False
            raise UsageError(f"request {request!r} was never submitted")
        _check_time(now, self._now)
        self._now = now
        self._moved += 1
        if state.state is RequestState.IN_FLIGHT and state.last_attempt is not None:
            self._pool.release(self._attempts.pop(state.last_attempt), now)
        self._requests.move(state, RequestInput.FAIL if failed else RequestInput.CANCEL)
        return True

    def poll(self, now: float) -> list[Decision]:
        """Advance to `now` and return every decision since the last poll, in order.

        Raises:
            UsageError: time ran backwards.
        """
        _check_time(now, self._now)
        self._now = now
        for request in self._fresh:  # a deadline already passed fails in timer order
            if request.deadline <= now:
                self._arm_deadline(request)
        if self._timers.next_at() <= now:
            self._fire_timers(now)
        if self._queues:
            self._dispatch_waiting(now)
        for request in self._fresh:
            if request.state is RequestState.WAITING:
                self._arm_deadline(request)
        self._fresh.clear()
        decisions, self._decisions = self._decisions, []
        return decisions

    def next_deadline(self) -> float:
        """The earliest time at which `poll` may have something new to do (`math.inf`: none)."""
        if self._fresh:
            return self._now  # requests submitted or re-queued since the last poll
        timers = self._timers
        while (timer := timers.peek()) is not None:
            # A capacity wake-up (cooldown end) is kept even while nothing waits: a request
            # submitted later may need it, and dropping it here left such a request asleep
            # until its deadline.  The cost is one idle wake-up per cooldown.
            if self._requests.timer_live(timer):
                return timer.at
            timers.pop()
        return math.inf

    def take_events(self) -> list[PoolEvent]:
        """The pool events recorded since the last call (key disabled, cooldowns, fallbacks)."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ other processes

    def learn(self, now: float, fact: SharedFact) -> None:
        """Take in a fact another process learned (see `keysched._facts`).  Call `poll`.

        Cooldowns merge by the later end (never shortened); a disabled key stays disabled; a
        learned limit never replaces a configured one.

        Raises:
            UsageError: an unknown project, model or key label, a bad value, or time running
                backwards; nothing changes.
        """
        _check_time(now, self._now)
        changes = learn(self._pool, self._names, fact, now)
        self._now = now
        self._moved += 1
        self._take(changes)

    def shared_facts(self, now: float | None = None) -> list[SharedFact]:
        """The facts worth sharing with other processes, in force at `now` (default: the last
        time the core saw): disabled keys, cooldowns of models, groups and lanes, learned limits
        (see `keysched._facts`).  Each can be given to another process's `learn`."""
        return shared_facts(self._pool, self._now if now is None else now)

    # ------------------------------------------------------------------ queries

    @property
    def in_flight(self) -> int:
        """Attempts in flight."""
        return len(self._attempts)

    @property
    def open_requests(self) -> int:
        """Requests submitted that have not ended."""
        return len(self._requests.open)

    def snapshot(self, now: float | None = None) -> PoolSnapshot:
        """A read-only picture of the pool at `now` (default: the last time the core saw)."""
        return pool_snapshot(self._pool, self._requests, len(self._attempts),
                             self._now if now is None else now)

    # ------------------------------------------------------------------ timers

    def _timer(self, at: float, kind: TimerKind, ref: int = 0, extra: int = 0,
               order: int | None = None) -> None:
        """Have `poll` act at `at`; timers due at one time fire by `order` (default: as pushed)."""
        self._timers.push(at, kind, ref, extra, order)
        if self._timers.oversized:
            self._timers.compact(self._requests.timer_live)

    def _fire_timers(self, now: float) -> None:
        self._fired += 1  # a lane unparked, a cooldown or backoff ended, a deadline passed
        while (timer := self._timers.pop_due(now)) is not None:
            if timer.kind is TimerKind.LANE:
                self._pool.unpark_lane(timer.ref, timer.extra)
                continue
            request = self._requests.open.get(timer.ref)
            if request is None:
                continue
            if timer.kind is TimerKind.READY and request.state is RequestState.BACKOFF:
                self._enqueue(request, RequestInput.READY)
            elif timer.kind is TimerKind.DEADLINE and request.state in WAITS:
                self._fail(request, FailReason.DEADLINE, now)

    def _arm_deadline(self, request: Request) -> None:
        """Put the request's deadline timer in the heap, once: only when it still waits after a
        poll, or backs off.  Most requests are dispatched by the poll after their submission,
        and a timer armed for each would almost always be dropped unused."""
        if not request.timed:
            request.timed = True
            if math.isfinite(request.deadline):
                # Deadlines due at one time fail oldest request first, however late each was armed.
                self._timer(request.deadline, TimerKind.DEADLINE, request.id, order=request.id)

    def _take(self, changes: Changes) -> None:
        """Act on what the pool changed: arm its wake-ups, record its events."""
        for at in changes.wakeups:
            self._timer(at, TimerKind.WAKE)
        if self._record:
            self._events.extend(changes.events)

    # ------------------------------------------------------------------ requests

    def _enqueue(self, request: Request, event: RequestInput) -> None:
        self._requests.move(request, event)
        self._queues.push(request)
        if not request.timed:
            self._fresh.append(request)

    def _fail(self, request: Request, reason: FailReason, now: float) -> None:
        retry_at = self._returns.at(request, now, self._stamp()) if reason in (
            FailReason.DEADLINE, FailReason.NO_CAPACITY) else None
        self._decisions.append(Fail(request=request.id, reason=reason,
                                    attempt=request.last_attempt, retry_at=retry_at))
        self._requests.move(request, RequestInput.FAIL)

    def _advance(self, request: Request, action: Action, meaning: Meaning, record: Attempt,
                 now: float) -> None:
        """Act on an outcome that did not answer the request: fail it or queue its retry."""
        if action.next is Next.FAIL:
            self._fail(request, FailReason.REQUEST_ERROR, now)
            return
        reason = request.spend_retry_budget(action, meaning, record.model, self._retry)
        if reason is None and request.attempts_spent(self._retry.max_attempts):
            reason = FailReason.ATTEMPTS_EXHAUSTED
        if reason is None and now >= request.deadline:
            reason = FailReason.DEADLINE
        if reason is not None:
            self._fail(request, reason, now)
            return
        if request.avoid is None:
            request.avoid = set()
        request.avoid.add(record.key)
        if action.next is Next.RETRY_LATER:
            self._requests.move(request, RequestInput.BACK_OFF)
            self._timer(now + request.backoff(self._retry, self._rng), TimerKind.READY, request.id)
            self._arm_deadline(request)
        else:
            self._enqueue(request, RequestInput.QUEUE)

    # ------------------------------------------------------------------ the dispatch loop

    def _dispatch_waiting(self, now: float) -> None:
        """Settle the heads of the queues, oldest first, until every queue is empty or blocked."""
        queues = self._queues
        blocked = set() if self.recheck_all else queues.held(self._moved + self._fired, now)
        while (oldest := queues.oldest(blocked)) is not None:
            models, request = oldest
            if self._settle_head(request, models, now):
                queues.pop(models)
            else:
                blocked.add(models)
                queues.hold(models, request, self._moved + self._fired)
        self._queues.drop_empty(blocked)

    def _settle_head(self, request: Request, models: tuple[int, ...], now: float) -> bool:
        """Dispatch or fail the head of a queue; returns whether it left the queue (False: it
        waits, and holds back the requests behind it)."""
        if now > request.start_by:  # too late to start: let the requests behind it go
            if math.isinf(request.deadline):  # no deadline would ever end it
                self._fail(request, FailReason.DEADLINE, now)
            else:
                self._requests.move(request, RequestInput.TOO_LATE)
                self._arm_deadline(request)
            return True
        if self._place(request, models, now):
            return True
        hopeless = self._pool.hopeless(models)
        if hopeless or not self.policy.waits_for_capacity:
            self._fail(request, FailReason.NO_USABLE_LANE if hopeless
                       else FailReason.NO_CAPACITY, now)
            return True
        if self._returns.too_late(request, now, self._stamp()):
            self._fail(request, FailReason.DEADLINE, now)
            return True
        return False

    def _stamp(self) -> tuple[int, int] | None:
        return None if self.recheck_all else (self._moved, self._next_attempt)

    def _place(self, request: Request, models: tuple[int, ...], now: float) -> bool:
        """Dispatch the request on the best lane that can serve it now, if any."""
        placement = Placement(self._pool, request.tokens, request.quota)
        lane = placement.find(models, request.avoid or (), now)
        for key, model, until in placement.parked:
            self._timer(until, TimerKind.LANE, key, model)
        if lane is not None:
            if placement.probe_at is not None:
                self._timer(placement.probe_at, TimerKind.WAKE)
            self._dispatch(request, *lane, now)
            return True
        if math.isfinite(placement.wake_at):  # a token budget too full for it frees up then
            self._timer(placement.wake_at, TimerKind.WAKE)
        return False

    def _dispatch(self, request: Request, key: int, model: int, now: float) -> None:
        aid = self._next_attempt
        self._next_attempt += 1
        # Attempt ids grow with every dispatch: the id orders keys by their last dispatch too.
        budgeted, relearn = self._pool.acquire(key, model, request.tokens, request.quota, now,
                                               aid)
        self._attempts[aid] = Attempt(request.id, key, model, now, budgeted, relearn)
        self._requests.move(request, RequestInput.DISPATCH)
        request.number += 1
        request.last_attempt = aid
        if (changes := self._pool.served(request.models[0], model, now)) is not None:
            self._take(changes)
        self._decisions.append(Dispatch(request.id, aid, request.number,
                                        self._pool.keys.states[key].key,
                                        self._pool.models[model].name))


def _duration(name: str, value: object, *, minimum_excluded: bool) -> float:
    """A duration argument in seconds, checked (> 0, or >= 0)."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)
            or value < 0 or (minimum_excluded and value == 0)):
        bound = "> 0" if minimum_excluded else ">= 0"
        raise UsageError(f"{name} must be a duration {bound} seconds, got {value!r}")
    return float(value)


def _check_time(now: float, last: float) -> None:
    if not (isinstance(now, (int, float)) and now >= last):  # NaN fails `>=` too
        raise UsageError(f"time must not run backwards: now={now!r} after {last!r}")
