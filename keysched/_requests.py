"""The requests the core holds: an explicit state per request, and one transition table.

Theory of operation
-------------------
A request is in one `RequestState`; the scheduler moves it with a `RequestInput`, and
`TRANSITIONS` (one dict, as h2's and wsproto's) says which (state, input) pairs are legal and
where each leads.  Every other pair raises `UsageError` and changes nothing (a test walks every
pair).  The scheduler still decides *when* to move a request (its dispatch loop, its timers,
the outcome table); this module only refuses moves that make no sense and keeps the counts that
follow from the states (how many requests wait, how many ended and how).

::

    NEW --QUEUE--> WAITING --DISPATCH--> IN_FLIGHT --ANSWER--> ENDED
                   |   ^                  |  |  |
          TOO_LATE |   +--QUEUE/WITHDRAW--+  |  +--FAIL/CANCEL--> ENDED
                   v   +--READY-- BACKOFF <--+ BACK_OFF
                  LATE

    WAITING, BACKOFF and LATE also end by FAIL or CANCEL.

- WAITING: in a queue (FIFO per list of allowed models), to be placed by the next `poll`.
- BACKOFF: waiting out its backoff before it queues again (a READY timer).
- IN_FLIGHT: one attempt in flight; the core never fails it at its deadline (the driver bounds
  the attempt's own timeout), but the caller may cancel it.
- LATE: past its ``start_by``, out of the queue, waiting only for its deadline to fail it.
- ENDED: finished, failed or cancelled; it leaves the book at once (`Requests.open`).

Decisions where the issue was silent:

- NEW exists only inside `Scheduler.submit` (a request is queued as it is submitted); it makes
  the first QUEUE an ordinary transition instead of a constructor's side effect.
- Cancelling a request as failed (`Scheduler.cancel(failed=True)`, a stream that broke after
  chunks were delivered) is the FAIL input: it counts as failed, not cancelled.
"""

from __future__ import annotations

import enum
import random

from keysched._config import RetryPolicy
from keysched._decisions import FailReason
from keysched._errors import UsageError
from keysched._table import Action, Meaning, Next, RetryBudget
from keysched._timers import Timer, TimerKind

__all__ = ["QUOTA_ATTEMPT_FACTOR", "TRANSITIONS", "WAITS", "Attempt", "Request", "RequestInput",
           "RequestState", "Requests"]


class RequestState(enum.IntEnum):
    """Where a request is in its life (see the module docstring)."""

    NEW = 0
    WAITING = 1
    BACKOFF = 2
    IN_FLIGHT = 3
    LATE = 4
    ENDED = 5


class RequestInput(enum.IntEnum):
    """What happens to a request."""

    QUEUE = 0
    """Queue it: just submitted, or retried at once after an outcome."""
    DISPATCH = 1
    """An attempt of it was dispatched."""
    BACK_OFF = 2
    """An outcome says retry after a backoff."""
    READY = 3
    """Its backoff ended."""
    TOO_LATE = 4
    """Past its ``start_by``: no attempt may start; it waits for its deadline."""
    WITHDRAW = 5
    """The driver took back its attempt before sending it (`Scheduler.withdraw`)."""
    ANSWER = 6
    """Its attempt was answered: it ends, finished."""
    FAIL = 7
    """It ends, failed."""
    CANCEL = 8
    """The caller cancelled it: it ends, cancelled."""


_S, _I = RequestState, RequestInput
TRANSITIONS: dict[tuple[RequestState, RequestInput], RequestState] = {
    (_S.NEW, _I.QUEUE): _S.WAITING,
    (_S.WAITING, _I.DISPATCH): _S.IN_FLIGHT,
    (_S.WAITING, _I.TOO_LATE): _S.LATE,
    (_S.WAITING, _I.FAIL): _S.ENDED,
    (_S.WAITING, _I.CANCEL): _S.ENDED,
    (_S.IN_FLIGHT, _I.ANSWER): _S.ENDED,
    (_S.IN_FLIGHT, _I.QUEUE): _S.WAITING,
    (_S.IN_FLIGHT, _I.WITHDRAW): _S.WAITING,
    (_S.IN_FLIGHT, _I.BACK_OFF): _S.BACKOFF,
    (_S.IN_FLIGHT, _I.FAIL): _S.ENDED,
    (_S.IN_FLIGHT, _I.CANCEL): _S.ENDED,
    (_S.BACKOFF, _I.READY): _S.WAITING,
    (_S.BACKOFF, _I.FAIL): _S.ENDED,
    (_S.BACKOFF, _I.CANCEL): _S.ENDED,
    (_S.LATE, _I.FAIL): _S.ENDED,
    (_S.LATE, _I.CANCEL): _S.ENDED,
}
"""Every legal (state, input) pair and the state it leads to; any other pair is a `UsageError`."""

QUOTA_ATTEMPT_FACTOR = 4
"""Quota 429s do not count against ``max_attempts``; this many times it still ends a request."""

WAITS = frozenset({_S.WAITING, _S.BACKOFF, _S.LATE})
"""States counted as waiting (`Requests.waiting`, the snapshot's ``waiting``)."""

# Per legal pair: the next state and the change to the waiting count (precomputed: a move is
# made several times per request, and this keeps it to one lookup).
_STEPS = {pair: (after, (after in WAITS) - (pair[0] in WAITS))
          for pair, after in TRANSITIONS.items()}


class Request:
    """One submitted request and what the core remembers of it.

    Attributes:
        id: its id (ids grow with submission time: FIFO order).
        models: the models it may use, best first (indices).
        tokens: its estimated input tokens.
        quota: whether it counts against the known limits.
        deadline: core time by which it ends.
        start_by: core time after which no attempt of it starts (it could not end in time).
        state: its `RequestState`; changed only by `Requests.move`.
        number: attempts dispatched so far.
        quota_waits: attempts refused by a quota 429 (not counted in ``max_attempts``).
        later: backoffs taken (the exponent of the next one).
        empties: empty answers so far.
        avoid: keys that failed it (made on its first failure).
        server_errors: per model, its server errors there (made on its first).
        last_attempt: its last attempt's id.
        timed: its deadline timer is in the heap (see `Scheduler._arm_deadline`).
        queued_in: the models of the queue it was last put in (`keysched._queues.Queues`).
        weighed: the pool's ``benched`` count when its return time was last weighed.
    """

    __slots__ = ("avoid", "deadline", "empties", "id", "last_attempt", "later", "models",
                 "number", "queued_in", "quota", "quota_waits", "server_errors", "start_by",
                 "state", "timed", "tokens", "weighed")

    def __init__(self, rid: int, models: tuple[int, ...], tokens: int, deadline: float,
                 quota: bool, start_by: float) -> None:
        self.id = rid
        self.models = models
        self.tokens = tokens
        self.quota = quota
        self.deadline = deadline
        self.start_by = start_by
        self.weighed = -1
        self.state = RequestState.NEW
        self.number = 0
        self.quota_waits = 0
        self.later = 0
        self.empties = 0
        self.avoid: set[int] | None = None
        self.server_errors: dict[int, int] | None = None
        self.last_attempt: int | None = None
        self.timed = False
        self.queued_in: tuple[int, ...] | None = None

    def models_left(self, per_model: int) -> tuple[int, ...]:
        """Its models, less those it had `per_model` server errors on (the last one stays)."""
        errors = self.server_errors
        if not errors:
            return self.models
        models = tuple(m for m in self.models if errors.get(m, 0) < per_model)
        return models or self.models[-1:]

    def spend_retry_budget(self, action: Action, meaning: Meaning, model: int,
                           retry: RetryPolicy) -> FailReason | None:
        """Count an outcome on `model` against the retry budget its row names
        (`keysched._table.Meaning.budget`); returns the row's ``exhausted`` reason when the
        budget, or its models, ran out."""
        if meaning.budget is RetryBudget.EMPTY:
            self.empties += 1
            if self.empties > retry.empty_retries:
                return meaning.exhausted
        if meaning.budget is RetryBudget.PER_MODEL or action.next is Next.RETRY_OTHER_MODEL:
            if self.server_errors is None:
                self.server_errors = {}
            errors = self.server_errors
            limit = retry.server_errors_per_model
            if action.next is Next.RETRY_OTHER_MODEL:  # the whole budget of this model
                errors[model] = limit
                if all(errors.get(m, 0) >= limit for m in self.models):
                    return meaning.exhausted
            else:
                errors[model] = errors.get(model, 0) + 1
        return None

    def attempts_spent(self, max_attempts: int) -> bool:
        """Whether it made its last attempt: `max_attempts`, quota refusals aside, and at
        most `QUOTA_ATTEMPT_FACTOR` times as many in all."""
        return (self.number - self.quota_waits >= max_attempts
                or self.number >= max_attempts * QUOTA_ATTEMPT_FACTOR)

    def backoff(self, retry: RetryPolicy, rng: random.Random) -> float:
        """The delay before its next retry: exponential, capped, with jitter."""
        delay = min(retry.backoff_cap, retry.backoff_base * 2.0**self.later)
        self.later += 1
        return delay * (1 - retry.jitter * rng.random())


class Attempt:
    """One attempt in flight: which request, on which lane, sent when.

    Attributes:
        request: the request's id.
        key: the key's index.
        model: the model's index.
        sent: core time it was dispatched.
        budgeted: recorded in its group's budget (to undo on a refusal or a withdrawal).
        relearn: sent past a learned limit, to test it.
    """

    __slots__ = ("budgeted", "key", "model", "relearn", "request", "sent")

    def __init__(self, request: int, key: int, model: int, sent: float, budgeted: bool,
                 relearn: bool = False) -> None:
        self.request = request
        self.key = key
        self.model = model
        self.sent = sent
        self.budgeted = budgeted
        self.relearn = relearn


class Requests:
    """The open requests, by id, and the counts that follow from their states.

    Attributes:
        open: the requests that have not ended, by id.
        waiting: requests waiting (queued, backing off, or late).
        submitted, finished, failed, cancelled: requests by how they ended (or began).
    """

    __slots__ = ("_next_id", "cancelled", "failed", "finished", "open", "submitted", "waiting")

    def __init__(self) -> None:
        self.open: dict[int, Request] = {}
        self.waiting = 0
        self.submitted = self.finished = self.failed = self.cancelled = 0
        self._next_id = 1

    def new(self, models: tuple[int, ...], tokens: int, deadline: float, quota: bool,
            start_by: float) -> Request:
        """A new request (state NEW), with the next id."""
        request = Request(self._next_id, models, tokens, deadline, quota, start_by)
        self._next_id += 1
        self.open[request.id] = request
        self.submitted += 1
        return request

    def timer_live(self, timer: Timer) -> bool:
        """Whether a timer still has work to do: a request's timer once the request ended (or
        left backoff) has none.  Capacity wake-ups and parked lanes always do."""
        if timer.kind is TimerKind.LANE or timer.kind is TimerKind.WAKE:
            return True
        request = self.open.get(timer.ref)
        return request is not None and (timer.kind is TimerKind.DEADLINE
                                        or request.state is RequestState.BACKOFF)

    def issued(self, rid: int) -> bool:
        """Whether `rid` was ever given to a request."""
        return 0 < rid < self._next_id

    def move(self, request: Request, event: RequestInput) -> None:
        """Move `request` by `event` (see `TRANSITIONS`).

        Raises:
            UsageError: the move is illegal in the request's state; nothing changes.
        """
        step = _STEPS.get((request.state, event))
        if step is None:
            raise UsageError(f"request {request.id}: {event.name} is illegal in state "
                             f"{request.state.name}")
        request.state, delta = step
        self.waiting += delta
        if request.state is RequestState.ENDED:
            del self.open[request.id]
            if event is RequestInput.ANSWER:
                self.finished += 1
            elif event is RequestInput.FAIL:
                self.failed += 1
            else:
                self.cancelled += 1
