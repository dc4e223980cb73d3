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
  (`cool_group`, `cool_lane`, `cool_model`, `disable_key`, `learn_limit`, `count_usage`) and
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
from collections.abc import Callable, Sequence

from keysched._config import PoolConfig
from keysched._decisions import Decision, Dispatch, Fail, FailReason, Finish
from keysched._errors import UsageError
from keysched._outcomes import Outcome, OutcomeKind, QuotaDimension
from keysched._pool import Changes, LaneQuery, Pool, SharedFact
from keysched._requests import WAITS, Attempt, Request, RequestInput, Requests, RequestState
from keysched._selection import Policy
from keysched._snapshot import PoolEvent, PoolSnapshot
from keysched._table import OUTCOMES, Action, Meaning, Next, RetryBudget
from keysched._timers import Timer, TimerHeap, TimerKind

__all__ = ["Scheduler"]

# Quota 429s do not count against `max_attempts`; this many times it still ends a request.
_QUOTA_ATTEMPT_FACTOR = 4
_MODEL_LISTS_CACHED = 256  # resolved model lists kept (callers use the same few, again and again)


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
        self._model_index = {name: index for index, name in enumerate(config.models)}
        self._all_models = tuple(range(len(config.models)))
        self._model_lists: dict[tuple[str, ...], tuple[int, ...]] = {}
        # The outcome table, both halves, one lookup per outcome.
        self._rules: dict[OutcomeKind, tuple[Action, Meaning]] = {
            kind: (self.policy.actions[kind], OUTCOMES[kind]) for kind in OutcomeKind}
        self._requests = Requests()
        self._attempts: dict[int, Attempt] = {}
        self._queues: dict[tuple[int, ...], list[int]] = {}
        self._timers = TimerHeap()
        self._decisions: list[Decision] = []
        self._fresh: list[Request] = []  # queued since the last poll, deadline not armed yet
        self._events: list[PoolEvent] = []
        self._tier = list(self._all_models)  # per best model, the tier last dispatched to
        self._now = -math.inf
        self._next_attempt = 1

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
        self._check_time(now)
        indices = self._model_indices(models)
        if (isinstance(input_tokens, bool) or not isinstance(input_tokens, int)
                or input_tokens < 0):
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
        self._check_time(now)
        record = self._attempts.pop(attempt, None)
        if record is None:
            raise UsageError(f"attempt {attempt!r} is not in flight (unknown, completed or "
                             "cancelled)")
        self._now = now
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
        if not unsent and not self._pool.key_disabled(record.key):
            return False
        self._now = now
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
        self._check_time(now)
        self._now = now
        if state.state is RequestState.IN_FLIGHT and state.last_attempt is not None:
            self._pool.release(self._attempts.pop(state.last_attempt), now)
        self._requests.move(state, RequestInput.FAIL if failed else RequestInput.CANCEL)
        return True

    def poll(self, now: float) -> list[Decision]:
        """Advance to `now` and return every decision since the last poll, in order.

        Raises:
            UsageError: time ran backwards.
        """
        self._check_time(now)
        self._now = now
        for request in self._fresh:  # a deadline already passed fails in timer order
            if request.deadline <= now:
                self._arm_deadline(request)
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
            if self._live(timer):
                return timer.at
            timers.pop()
        return math.inf

    def take_events(self) -> list[PoolEvent]:
        """The pool events recorded since the last call (key disabled, cooldowns, fallbacks)."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ facts from elsewhere

    def cool_group(self, now: float, *, project: str, model: str, until: float,
                   reason: str) -> None:
        """Another process benched the (project, model) quota group until `until`.

        Merged by the later end: a cooldown is never shortened.  Call `poll`.

        Raises:
            UsageError: an unknown project or model, or time running backwards.
        """
        self._learned(now, lambda: self._pool.cool_group(
            self._project(project), self._model(model), until, reason, now))

    def cool_lane(self, now: float, *, key: str, model: str, until: float, reason: str) -> None:
        """Another process idled the (key, model) lane (the key by label) until `until`.

        Raises:
            UsageError: an unknown key label or model, or time running backwards.
        """
        self._learned(now, lambda: self._pool.cool_lane(
            self._key(key), self._model(model), until, reason, now))

    def cool_model(self, now: float, *, model: str, until: float, reason: str) -> None:
        """Another process took `model` out of rotation (overloaded) until `until`.

        Raises:
            UsageError: an unknown model, or time running backwards.
        """
        self._learned(now, lambda: self._pool.cool_model(self._model(model), until, reason, now))

    def disable_key(self, now: float, *, key: str, reason: str) -> None:
        """Another process found the key (by label) unusable for good.

        Raises:
            UsageError: an unknown key label, or time running backwards.
        """
        self._learned(now, lambda: self._pool.disable_key(self._key(key), reason, now))

    def learn_limit(self, now: float, *, project: str, model: str, dimension: QuotaDimension,
                    value: int, quota_id: str) -> None:
        """Another process learned (project, model)'s limit of `dimension` from a 429.

        Raises:
            UsageError: an unknown project or model, a value below 1, or time running backwards.
        """
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"value must be an integer >= 1, got {value!r}")
        self._learned(now, lambda: self._pool.learn_limit(
            self._project(project), self._model(model), dimension, value, now, quota_id))

    def count_usage(self, now: float, *, project: str, model: str, at: float,
                    tokens: int) -> None:
        """Another process sent a request of `tokens` on (project, model) at `at` (<= `now`):
        it counts in the group's budget as one of ours would.

        Raises:
            UsageError: an unknown project or model, `at` after `now`, negative tokens, or
                time running backwards.
        """
        self._check_time(now)
        if not at <= now:
            raise UsageError(f"at must not be after now: at={at!r}, now={now!r}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise UsageError(f"tokens must be an integer >= 0, got {tokens!r}")
        self._pool.count_usage(self._project(project), self._model(model), at, tokens, now)
        self._now = now

    def shared_facts(self, now: float | None = None) -> list[SharedFact]:
        """The facts worth sharing with other processes, in force at `now` (default: the last
        time the core saw): disabled keys, cooldowns of groups, lanes and models, learned
        limits.  Plain records (`keysched._pool.Cooldown`, `DisabledKey`, `LearnedLimit`) that
        the inputs above take back, and that merge by the later cooldown end."""
        return self._pool.shared_facts(self._now if now is None else now)

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
        at = self._now if now is None else now
        book = self._requests
        return PoolSnapshot(
            now=at, lanes=tuple(self._pool.lanes(at)), groups=tuple(self._pool.group_snapshots(at)),
            waiting=book.waiting, in_flight=len(self._attempts),
            requests_submitted=book.submitted, requests_finished=book.finished,
            requests_failed=book.failed, requests_cancelled=book.cancelled)

    # ------------------------------------------------------------------ checking input

    def _check_time(self, now: float) -> None:
        if not isinstance(now, int | float) or math.isnan(now) or now < self._now:
            raise UsageError(f"time must not run backwards: now={now!r} after {self._now!r}")

    def _model_indices(self, models: Sequence[str] | None) -> tuple[int, ...]:
        """The indices of `models` (best first, without repeats), checked."""
        if models is None:
            return self._all_models
        if isinstance(models, tuple):
            try:
                cached = self._model_lists.get(models)
            except TypeError:  # unhashable: not a tuple of names; `_resolve` says what is wrong
                return self._resolve(models)
            if cached is None:
                cached = self._resolve(models)
                if len(self._model_lists) < _MODEL_LISTS_CACHED:
                    self._model_lists[models] = cached
            return cached
        return self._resolve(models)

    def _resolve(self, models: Sequence[str]) -> tuple[int, ...]:
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

    def _project(self, name: str) -> str:
        if name not in self._pool.project_names:
            raise UsageError(f"unknown project {name!r}")
        return name

    def _model(self, name: str) -> str:
        if name not in self._model_index:
            raise UsageError(f"unknown model {name!r}; the pool's models are "
                             f"{list(self.config.models)}")
        return name

    def _key(self, label: str) -> str:
        if not self._pool.has_key(label):
            raise UsageError(f"unknown key label {label!r}")
        return label

    def _learned(self, now: float, learn: Callable[[], Changes]) -> None:
        """Apply a fact from another process (checked first: nothing changes on bad input)."""
        self._check_time(now)
        changes = learn()
        self._now = now
        self._take(changes)

    # ------------------------------------------------------------------ timers

    def _timer(self, at: float, kind: TimerKind, ref: int = 0, order: int | None = None) -> None:
        """Have `poll` act at `at`; timers due at one time fire by `order` (default: as pushed)."""
        self._timers.push(at, kind, ref, 0, order)
        if self._timers.oversized:
            self._timers.compact(self._live)

    def _live(self, timer: Timer) -> bool:
        """Whether a timer still has work to do: a request's timer once the request ended (or
        left backoff) has none.  Capacity wake-ups and parked lanes always do."""
        if timer.kind is TimerKind.LANE or timer.kind is TimerKind.WAKE:
            return True
        request = self._requests.open.get(timer.ref)
        return request is not None and (timer.kind is TimerKind.DEADLINE
                                        or request.state is RequestState.BACKOFF)

    def _fire_timers(self, now: float) -> None:
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
                self._timer(request.deadline, TimerKind.DEADLINE, request.id, order=request.id)

    def _take(self, changes: Changes) -> None:
        """Act on what the pool changed: arm its wake-ups, record its events."""
        for at in changes.wakeups:
            self._timer(at, TimerKind.WAKE)
        if self._record:
            self._events.extend(changes.events)

    def _take_parked(self, query: LaneQuery) -> None:
        """Arm a timer for each lane the selector parked while placing a request."""
        for key, model, until in query.parked:
            self._timers.push(until, TimerKind.LANE, key, model)
            if self._timers.oversized:
                self._timers.compact(self._live)
        query.parked.clear()

    # ------------------------------------------------------------------ requests

    def _enqueue(self, request: Request, event: RequestInput) -> None:
        self._requests.move(request, event)
        heapq.heappush(self._queues.setdefault(self._effective_models(request), []), request.id)
        if not request.timed:
            self._fresh.append(request)

    def _effective_models(self, request: Request) -> tuple[int, ...]:
        """The request's models, less those it spent its server-error budget on (the last model
        always stays)."""
        errors = request.server_errors
        if not errors:
            return request.models
        limit = self._retry.server_errors_per_model
        models = tuple(m for m in request.models if errors.get(m, 0) < limit)
        return models or request.models[-1:]

    def _fail(self, request: Request, reason: FailReason, now: float) -> None:
        retry_at = self._capacity_returns(request, now) if reason in (
            FailReason.DEADLINE, FailReason.NO_CAPACITY) else None
        self._decisions.append(Fail(request=request.id, reason=reason,
                                    attempt=request.last_attempt, retry_at=retry_at))
        self._requests.move(request, RequestInput.FAIL)

    def _capacity_returns(self, request: Request, now: float) -> float | None:
        return self._pool.capacity_returns(self._effective_models(request), request.tokens, now)

    def _advance(self, request: Request, action: Action, meaning: Meaning, record: Attempt,
                 now: float) -> None:
        """Act on an outcome that did not answer the request: fail it or queue its retry."""
        if action.next is Next.FAIL:
            self._fail(request, FailReason.REQUEST_ERROR, now)
            return
        reason = self._spend_retry_budget(request, action, meaning, record.model)
        if reason is None and self._attempts_spent(request):
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
            self._timer(now + self._backoff(request), TimerKind.READY, request.id)
            self._arm_deadline(request)
        else:
            self._enqueue(request, RequestInput.QUEUE)

    def _spend_retry_budget(self, request: Request, action: Action, meaning: Meaning,
                            model: int) -> FailReason | None:
        """Count the outcome against the retry budget its row names (`Meaning.budget`); returns
        the row's ``exhausted`` reason when the budget, or the request's models, ran out."""
        if meaning.budget is RetryBudget.EMPTY:
            request.empties += 1
            if request.empties > self._retry.empty_retries:
                return meaning.exhausted
        if meaning.budget is RetryBudget.PER_MODEL or action.next is Next.RETRY_OTHER_MODEL:
            if request.server_errors is None:
                request.server_errors = {}
            errors = request.server_errors
            limit = self._retry.server_errors_per_model
            if action.next is Next.RETRY_OTHER_MODEL:  # the whole budget of this model
                errors[model] = limit
                if all(errors.get(m, 0) >= limit for m in request.models):
                    return meaning.exhausted
            else:
                errors[model] = errors.get(model, 0) + 1
        return None

    def _attempts_spent(self, request: Request) -> bool:
        """Whether the request made its last attempt (quota refusals aside, up to a cap)."""
        max_attempts = self._retry.max_attempts
        return (request.number - request.quota_waits >= max_attempts
                or request.number >= max_attempts * _QUOTA_ATTEMPT_FACTOR)

    def _backoff(self, request: Request) -> float:
        retry = self._retry
        delay = min(retry.backoff_cap, retry.backoff_base * 2.0**request.later)
        request.later += 1
        return delay * (1 - retry.jitter * self._rng.random())

    # ------------------------------------------------------------------ the dispatch loop

    def _dispatch_waiting(self, now: float) -> None:
        """Place waiting requests, oldest first, until every queue is empty or blocked."""
        queues = self._queues
        blocked: set[tuple[int, ...]] = set()
        while True:
            best = self._oldest_head(blocked)
            if best is None:
                break
            queue = queues[best]
            request = self._requests.open[queue[0]]
            if now > request.start_by:  # too late to start: let the requests behind it go
                heapq.heappop(queue)
                if math.isinf(request.deadline):  # no deadline would ever end it
                    self._fail(request, FailReason.DEADLINE, now)
                else:
                    self._requests.move(request, RequestInput.TOO_LATE)
                    self._arm_deadline(request)
            elif self._place(request, best, now):
                heapq.heappop(queue)
            elif not self.policy.waits_for_capacity or self._pool.hopeless(best):
                heapq.heappop(queue)
                reason = (FailReason.NO_USABLE_LANE if self._pool.hopeless(best)
                          else FailReason.NO_CAPACITY)
                self._fail(request, reason, now)
            elif self._returns_too_late(request, now):
                heapq.heappop(queue)
                self._fail(request, FailReason.DEADLINE, now)
            else:
                blocked.add(best)
                continue
            if not queue:
                del queues[best]
        # Stale entries may have emptied a queue that nothing placed from.
        if len(queues) > len(blocked):
            for models in [models for models, queue in queues.items() if not queue]:
                del queues[models]

    def _oldest_head(self, blocked: set[tuple[int, ...]]) -> tuple[int, ...] | None:
        """The queue, among those not blocked, whose head is the oldest request (request ids
        grow with time); entries of requests that ended or moved are dropped on the way."""
        best: tuple[int, ...] | None = None
        head = 0
        for models, queue in self._queues.items():
            while queue and not self._queued_in(queue[0], models):
                heapq.heappop(queue)
            if queue and models not in blocked and (best is None or queue[0] < head):
                best, head = models, queue[0]
        return best

    def _queued_in(self, rid: int, models: tuple[int, ...]) -> bool:
        """Whether request `rid` still waits in the queue of `models`."""
        request = self._requests.open.get(rid)
        return (request is not None and request.state is RequestState.WAITING
                and self._effective_models(request) == models)

    def _returns_too_late(self, request: Request, now: float) -> bool:
        """Whether nothing can serve the request before its deadline, as far as the core knows
        (every lane benched past it: say, a pool benched until midnight).  Then it fails at once,
        with `retry_at`, instead of waiting out its deadline.  Weighed again only after something
        was benched (`Pool.benched`): the answer cannot change otherwise."""
        if request.weighed == self._pool.benched:
            return False
        request.weighed = self._pool.benched
        returns = self._capacity_returns(request, now)
        return returns is not None and returns > request.deadline

    def _place(self, request: Request, models: tuple[int, ...], now: float) -> bool:
        """Dispatch the request on the best model that can serve it now, if any."""
        query = self._pool.query(request.tokens, request.quota)
        avoid = request.avoid or ()
        for model in models:
            if not self._pool.model_open(model, now):
                continue
            key = self._pool.select(query, model, now, avoid)
            self._take_parked(query)
            if key is not None:
                self._dispatch(request, key, model, now)
                return True
        if self._probe_cooling_model(request, query, models, now):
            return True
        if math.isfinite(query.wake_at):  # a token budget too full for it frees up then
            self._timer(query.wake_at, TimerKind.WAKE)
        return False

    def _probe_cooling_model(self, request: Request, query: LaneQuery,
                             models: tuple[int, ...], now: float) -> bool:
        """Nothing else can serve the request: probe a cooling model, if one is due."""
        for model in models:
            if not self._pool.probe_due(model, now):
                continue
            key = self._pool.select(query, model, now, request.avoid or ())
            self._take_parked(query)
            if key is not None:
                self._timer(self._pool.probed(model, now), TimerKind.WAKE)
                self._dispatch(request, key, model, now)
                return True
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
        if model != self._tier[request.models[0]]:
            self._note_tier(request, model, now)
        self._decisions.append(Dispatch(request.id, aid, request.number,
                                        self._pool.keys[key].key, self._pool.models[model].name))

    def _note_tier(self, request: Request, model: int, now: float) -> None:
        """Record and announce a change of the tier serving the request's best model (the
        caller has seen that `model` differs from the tier last used)."""
        best = request.models[0]
        previous = self._tier[best]
        self._tier[best] = model
        kind = "recovered" if model == best else "fallback"
        if self._record:
            names = self._pool.models
            self._events.append(PoolEvent(time=now, kind=kind,
                                          reason=f"{names[previous].name} -> {names[model].name}",
                                          model=names[model].name))


def _duration(name: str, value: object, *, minimum_excluded: bool) -> float:
    """A duration argument in seconds, checked (> 0, or >= 0)."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)
            or value < 0 or (minimum_excluded and value == 0)):
        bound = "> 0" if minimum_excluded else ">= 0"
        raise UsageError(f"{name} must be a duration {bound} seconds, got {value!r}")
    return float(value)
