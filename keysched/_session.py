"""The client's side of the core: one `Session` per request, the `Pump`, the `Timer`.

Theory of operation: a call submits one request to the core and opens a `Session` for it.  The
session is the request's mailbox and, as an async iterator, the one driver loop every kind of
call shares (`generate`, `count_tokens`, `embed`, `stream`, and the SDK transport of
`keysched._integrations`)::

    with client._open(...) as session:          # submit; `close` ends it exactly once
        async for dispatch in session:          # each attempt the core dispatches
            ... send it, classify the answer ...
            session.report(dispatch, classified, started)
        # the loop ended: the request is answered (`session.last`); a Fail was raised

What differs between kinds is only the attempt in the loop's body: a POST read whole
(`KeyedClient._post`), a stream relayed chunk by chunk (`keysched._streaming`), or the SDK
transport's attempt; `Session.send` awaits an attempt's I/O where `aclose` can cancel it and
turns a transport failure into its outcome.  The session's iteration takes the core's
next decision: a `Dispatch` is returned to send, a `Finish` ends the loop, a `Fail` raises the
typed error (`Session.error`).  `Session.report` records an attempt, tells the core its outcome
and pumps; it is the one place where every attempt of every kind ends.

`Pump.pump` polls the core, posts each decision to the session of its request (waking the caller
if it waits), keeps and logs the pool's events, and hands the core's `next_deadline()` (cooldown
ends, backoffs, deadlines) to the `Timer`: one task that sleeps with the injectable ``sleep``
until then, and pumps.

Hooks for what later issues add (each is one place):

- Each attempt sent: `Session.__anext__` returning a `Dispatch` (for calls, streams and the SDK
  transport alike).  With a shared store (`Pump.link`), the store is asked there first, and
  an attempt it refuses is withdrawn and never returned.
- Each attempt ended: `Session.report`, which tells the core (`Scheduler.complete`), releases
  the attempt's claim on a shared store, and then hands an `AttemptReport` to every callable in
  `Pump.observers` (the time, key label, project,
  model, outcome, HTTP status, retry delay, quota violations, tokens, latency, stream or not).
- The outcome trace (`keysched._recorder`): `Pump.watch` adds the recorder as an observer and
  keeps it for the request's start (`Session.__init__`) and end (`Session.close`, and
  `Pump.close` for the requests the client's closing ends).

Decisions where the issue was silent:

- An observer is called synchronously, in the order added, after the core has been told; it
  must not raise or block (a trace recorder appends, a store schedules its own write).  The
  report is built only when there are observers.
- A dispatch that waited in the mailbox while another task ran is checked again before it is
  sent: a refusal that disabled its key may have come back meanwhile (`Scheduler.withdraw`).  A
  dispatch this task's own pump just posted, taken without waiting, is fresh.
- asyncio is imported where it is first used, as httpx itself does: ``import keysched`` with its
  client loaded must stay within 30 ms of ``import httpx`` (benchmarks/bench_client.py), and
  asyncio alone costs about half of that.  `tests/test_client_imports.py` holds it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from keysched._core import Scheduler
from keysched._decisions import Decision, Dispatch, Fail, FailReason, Finish
from keysched._durations import AttemptDurations
from keysched._errors import (
    AttemptsExhaustedError,
    CapacityError,
    EmptyResponseError,
    NoUsableKeyError,
    RequestError,
    ResponseTooLargeError,
    ServiceError,
    UsageError,
)
from keysched._facts import DisabledKey
from keysched._outcomes import Outcome, OutcomeKind, Violation
from keysched._redact import Redactor
from keysched._results import AttemptRecord
from keysched._snapshot import PoolEvent
from keysched._store import Claim
from keysched._table import Effect
from keysched._transport import (
    ResponseTooLarge,
    TransportFailure,
    TransportTimeout,
)
from keysched._wire import Classified
from keysched.trace import CANCELLED, INTERRUPTED

if TYPE_CHECKING:
    import asyncio
    from types import TracebackType

    from keysched._recorder import Recorder
    from keysched._sharing import StoreLink

__all__ = ["CLOSED", "AttemptReport", "Pump", "Session", "Timer", "failure"]

logger = logging.getLogger("keysched")

_T = TypeVar("_T")
CLOSED = "the client was closed while the request was open"

_ERRORS: dict[FailReason, type[ServiceError]] = {
    FailReason.REQUEST_ERROR: RequestError,
    FailReason.DEADLINE: CapacityError,
    FailReason.NO_CAPACITY: CapacityError,
    FailReason.ATTEMPTS_EXHAUSTED: AttemptsExhaustedError,
    FailReason.NO_USABLE_LANE: NoUsableKeyError,
    FailReason.EMPTY_RESPONSE: EmptyResponseError,
}
_WHY = {
    FailReason.REQUEST_ERROR: "the request was refused",
    FailReason.DEADLINE: "no key and model could serve the request before its deadline",
    FailReason.NO_CAPACITY: "every key and model was cooling down",
    FailReason.ATTEMPTS_EXHAUSTED: "every allowed attempt failed",
    FailReason.NO_USABLE_LANE: "no usable key is left for the allowed models",
    FailReason.EMPTY_RESPONSE: "the service kept answering without content",
}
# A library adds no handler: with logging unconfigured, Python prints WARNING and above to
# stderr.  So WARNING is kept for what a user must act on (a key or a model gone for good);
# the pool's ordinary weather (cooldowns, fallbacks, recoveries) is INFO or DEBUG.
_EVENT_LEVELS = {
    "key_disabled": logging.WARNING, "group_unavailable": logging.WARNING,
    "model_unavailable": logging.WARNING, "model_cooled": logging.INFO,
    "fallback": logging.INFO, "recovered": logging.INFO, "group_cooled": logging.DEBUG,
    "lane_cooled": logging.DEBUG,
}

def failure(kind: OutcomeKind, message: str) -> Classified:
    """The classification of an attempt that got no HTTP answer to classify."""
    return Classified(outcome=Outcome(kind=kind), status=0, message=message)


@attrs.frozen(kw_only=True)
class AttemptReport:
    """One attempt that ended, as observers of a client see it (labels, never a secret).

    Attributes:
        started: client clock time when it was sent.
        ended: client clock time when it ended.
        request: the request's id (the core's).
        number: 1 for the first attempt of its request, 2 for the first retry, ...
        key: the label of the key used.
        project: the key's project, if known.
        model: the model asked.
        kind: how it ended.
        status: the HTTP status (0 when no answer arrived).
        retry_after: the retry delay the server gave, if any.
        violations: the quotas a 429 named.
        input_tokens: input tokens the service counted, if reported.
        output_tokens: output tokens produced, if reported.
        stream: whether it was a streamed attempt.
    """

    started: float
    ended: float
    request: int
    number: int
    key: str
    project: str | None
    model: str
    kind: OutcomeKind
    status: int
    retry_after: float | None
    violations: tuple[Violation, ...]
    input_tokens: int | None
    output_tokens: int | None
    stream: bool

    @property
    def latency(self) -> float:
        """Seconds from sending to the end of the attempt."""
        return self.ended - self.started


class Timer:
    """One task that sleeps until the core's next deadline, then calls `wake`.

    Armed exactly when `at` is finite; re-armed only for an earlier time (a later deadline is
    picked up when the earlier wake-up pumps), dropped once nothing is pending: an idle client
    keeps no task sleeping (under a virtual clock a stray timer would make time jump).
    """

    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], Awaitable[Any]],
                 wake: Callable[[], None]) -> None:
        self._clock = clock
        self._sleep = sleep
        self._wake_up = wake
        self.at = math.inf
        self._task: asyncio.Task[None] | None = None
        self.stale: set[asyncio.Task[None]] = set()  # cancelled, not yet finished
        self._closed = False

    def arm(self, at: float) -> None:
        """Wake at `at` (core time; `math.inf`: nothing is pending)."""
        if at == math.inf:
            self.drop()
        elif at < self.at and not self._closed:
            import asyncio

            self.drop()
            self.at = at
            self._task = asyncio.get_running_loop().create_task(self._sleep_until(at))

    def drop(self) -> None:
        """Cancel the sleeping task, if any."""
        task = self._task
        if task is not None:
            task.cancel()
            self.stale.add(task)
            task.add_done_callback(self.stale.discard)
        self._task = None
        self.at = math.inf

    async def aclose(self) -> None:
        """Drop the timer for good and wait for the cancelled tasks to finish."""
        import asyncio

        self._closed = True
        self.drop()
        await asyncio.gather(*self.stale, return_exceptions=True)

    async def _sleep_until(self, at: float) -> None:
        import asyncio

        try:
            await self._sleep(max(0.0, at - self._clock()))
        finally:
            if self._task is asyncio.current_task():
                self._task = None
                self.at = math.inf
        self._wake_up()


class Pump:
    """What the sessions of one client share: the core, its clock, their mailboxes, the timer.

    Args:
        core: the scheduler.
        clock: monotonic seconds (the core's time).
        sleep: the coroutine the timer waits with.
        deadline: a request's default deadline, in seconds.
        redactor: takes the pool's secrets out of what a server said.
        history: how many recent pool events to keep.
    """

    def __init__(self, core: Scheduler, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[Any]], *, deadline: float,
                 redactor: Redactor, history: int) -> None:
        self.core = core
        self.clock = clock
        self.deadline = deadline
        self.redactor = redactor
        self.durations = AttemptDurations()  # when a request is too late to start an attempt
        self.mailboxes: dict[int, Session] = {}  # the open requests' sessions, by id
        # Bounded, so that a long-running client keeps a window of history, not all of it.
        self.history: deque[PoolEvent] = deque(maxlen=history)
        self.observers: list[Callable[[AttemptReport], None]] = []
        self.link: StoreLink | None = None  # the shared store, if the pool is shared
        self.recorder: Recorder | None = None  # the outcome trace, if one is recorded
        self.timer = Timer(clock, sleep, self.pump)
        self.closed = False

    def pump(self, now: float | None = None) -> None:
        """Poll the core, deliver its decisions, keep and log pool events, re-arm the timer.

        `now` is the clock's time if the caller just read it.
        """
        core = self.core
        for decision in core.poll(self.clock() if now is None else now):
            session = self.mailboxes.get(decision.request)
            if session is not None:
                session.post(decision)
            elif isinstance(decision, Dispatch):
                # Nobody waits for this request any more (its caller is gone): free the lane.
                core.cancel(decision.request, self.clock())
        events = core.take_events()
        if events and self.link is not None:
            self.link.note(events)  # what this core learned, for the other processes
        self.history.extend(events)
        for event in events:
            # Each event at its own level: a logger set to WARNING must still see disabled keys.
            level = _EVENT_LEVELS.get(event.kind, logging.INFO)
            if logger.isEnabledFor(level):
                _log(event, level)
        self.timer.arm(core.next_deadline())

    def key_refused(self, label: str, kind: OutcomeKind) -> bool:
        """The server refused the key `label` outside any scheduled attempt (a pass-through
        request of the SDK transport) with an answer of `kind`: disable it as an attempt's
        refusal would (when the policy's table disables keys on `kind`) and announce it, logged
        and shared as any.  Returns whether the key was disabled."""
        if self.core.policy.actions[kind].effect is not Effect.DISABLE_KEY:
            return False
        now = self.clock()
        self.core.learn(now, DisabledKey(key=label, reason=kind.value))
        self.pump(now)
        return True

    def watch(self, recorder: Recorder) -> None:
        """Record the outcome trace with `recorder`: every attempt (as an observer) and every
        request's start and end (`Session`)."""
        self.recorder = recorder
        self.observers.append(recorder.attempt)

    async def stop_recording(self) -> None:
        """Close the recorder, if any: it writes what it holds and closes its file."""
        if self.recorder is not None:
            await self.recorder.aclose()

    def close(self) -> list[asyncio.Future[None]]:
        """End every open request: callers waiting get `UsageError`, attempts are cancelled.

        Returns:
            A future per cancelled attempt, set once it has let go of its connection.
        """
        import asyncio

        self.closed = True
        now = self.clock()
        me = asyncio.current_task()
        unwinding = []
        for rid, session in list(self.mailboxes.items()):
            if self.recorder is not None:
                self.recorder.request_ended(rid, now, ok=False, reason=CANCELLED)
            self.core.cancel(rid, now)  # frees its lane; nothing will be dispatched for it
            if session.task is not None and session.task is not me:
                unwinding.append(session.abort(session.task))
            session.shut()
        return unwinding

    def report(self, dispatch: Dispatch, classified: Classified, started: float, ended: float,
               *, stream: bool) -> None:
        """Hand an ended attempt to the observers."""
        if not self.observers:
            return
        outcome = classified.outcome
        report = AttemptReport(
            started=started, ended=ended, request=dispatch.request, number=dispatch.number,
            key=dispatch.key.label or "",
            project=dispatch.key.project, model=dispatch.model, kind=outcome.kind,
            status=classified.status, retry_after=outcome.retry_after,
            violations=outcome.violations, input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens, stream=stream)
        for observer in self.observers:
            observer(report)


def _log(event: PoolEvent, level: int) -> None:
    where = " ".join(f"{name}={value}" for name, value in (
        ("key", event.key), ("project", event.project), ("model", event.model))
        if value is not None)
    until = (f" for {event.until - event.time:.1f}s" if event.until is not None
             and math.isfinite(event.until) else "")
    logger.log(level, "%s %s%s (%s)", event.kind.replace("_", " "), where, until, event.reason)


class Session:
    """One request's life: submit, iterate its dispatches, report attempts, end exactly once.

    It is also the request's mailbox: `Pump.pump` posts the core's decisions for it, and the
    caller, iterating, takes them (waiting on a future only when none is there).

    Args:
        pump: the client's pump.
        models: the models the request may use, best first.
        tokens: its estimated input tokens.
        deadline: seconds the request may take (None: the client's default).
        spends_quota: whether it counts against the known limits.
    """

    def __init__(self, pump: Pump, models: Sequence[str], tokens: int, deadline: float | None,
                 spends_quota: bool = True) -> None:
        self.pump = pump
        self.records: list[AttemptRecord] = []
        self.last: tuple[Dispatch, Classified] | None = None
        self.value: Any = None  # what a call's reader extracted from the last attempt's answer
        now = pump.clock()
        seconds = pump.deadline if deadline is None else deadline
        self.deadline_at = now + seconds
        start_within = seconds - pump.durations.allowance(seconds)
        self.start_by = now + start_within  # its place in a shared store's line
        self.rid = pump.core.submit(
            now, models=models, input_tokens=tokens, deadline=deadline, spends_quota=spends_quota,
            start_within=start_within)
        self.open = True
        self.closed = False  # the client closed while the caller waited
        self.items: deque[Decision] = deque()  # rarely more than one
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[Any] | None = None  # the task awaiting the attempt's I/O, if any
        self.aborted: asyncio.Task[Any] | None = None  # the task `abort` cancelled
        self.unwound: asyncio.Future[None] | None = None  # set when an aborted attempt let go
        self.oversized = False  # the last answer exceeded max_response_bytes
        self.failure: Fail | None = None  # how the request failed, once it has
        self.tokens = tokens
        self.spends_quota = spends_quota
        self.claim: Claim | None = None  # what the shared store granted the attempt in flight
        pump.mailboxes[self.rid] = self
        if pump.recorder is not None:
            pump.recorder.request_started(self.rid, now)
        pump.pump(now)

    # ------------------------------------------------------------------ the driver loop

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Dispatch:
        """The next attempt to send; the loop stops once the request is answered.

        Raises:
            ServiceError: the request failed (the subclass says why).
            UsageError: the client was closed.
        """
        waited = False
        while True:
            while not self.items:
                if self.closed:
                    raise UsageError(CLOSED)
                await self._wait()
                waited = True
            decision = self.items.popleft()
            if isinstance(decision, Finish):
                self.open = False
                raise StopAsyncIteration
            if isinstance(decision, Fail):
                self.open = False
                self.failure = decision
                raise self.error(decision)
            if self.closed:
                # The client closed after this dispatch was posted, before this task ran: the
                # attempt it names was cancelled with the request.  (A Finish or Fail posted
                # before still ends the call as it says.)
                raise UsageError(CLOSED)
            # Never send on a key disabled while this dispatch waited: hand it back and wait
            # for the next decision.
            if waited and self.pump.core.withdraw(decision.attempt, self.pump.clock()):
                self.pump.pump()
                continue
            link = self.pump.link
            if link is None:
                return decision
            # The shared store's word on the attempt (one call; see `keysched._sharing`).
            claim = await link.admit(decision, self.tokens, self.spends_quota, self.start_by)
            if claim is not False:
                self.claim = claim if isinstance(claim, Claim) else None
                return decision
            self.pump.pump()  # withdrawn, not sent: the request's next decision follows
            waited = True  # other tasks ran meanwhile: a dispatch posted since is checked

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    async def _wait(self) -> None:
        import asyncio

        waiter = self.waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def post(self, decision: Decision) -> None:
        """Put a decision of the core in the mailbox (`Pump.pump` does)."""
        self.items.append(decision)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ one attempt

    def attempt_timeout(self, timeout: float, now: float) -> float:
        """`timeout`, capped by the time left at `now` before the deadline (at least 1 ms)."""
        return max(0.001, min(timeout, self.deadline_at - now))

    async def send(self, io: Awaitable[_T], timeout: float) -> _T | Classified:
        """Await one attempt's I/O (`io`, bounded by `timeout`), where `aclose` can cancel it.

        Returns:
            What `io` returned, or the classification of its failure to get an answer (and
            then the session keeps no value).

        Raises:
            UsageError: the client was closed meanwhile (the attempt was cancelled).
        """
        import asyncio

        self.task = asyncio.current_task()  # for `Pump.close` to cancel
        try:
            return await io
        except TransportTimeout:
            self.value = None
            return failure(OutcomeKind.TIMEOUT, f"no answer within {timeout:.1f}s")
        except TransportFailure as exc:
            self.value = None
            return failure(OutcomeKind.CONNECTION_ERROR, f"{exc} before an answer arrived")
        except ResponseTooLarge as exc:
            return self.too_large(exc)
        except BaseException:
            if self.take_abort():
                raise UsageError(CLOSED) from None
            raise
        finally:
            self.io_ended()

    def too_large(self, exc: ResponseTooLarge) -> Classified:
        """The outcome of an answer over the cap: the request fails (the core's REQUEST_ERROR
        does that without a retry or a mark against the key), as `ResponseTooLargeError`."""
        self.oversized = True
        self.value = None
        return failure(OutcomeKind.REQUEST_ERROR, str(exc))

    def report(self, dispatch: Dispatch, classified: Classified, started: float, *,
               final: bool = False, stream: bool = False) -> Classified:
        """Record an attempt and tell the core; `final` ends the request with no retry.

        `stream`: a streamed attempt lasts as long as its reader reads, so its duration says
        nothing of how long an answer takes (`AttemptDurations`).

        Returns `classified` as it was kept: a failure's server texts with every secret of the
        pool replaced by its label (a proxy may quote the key it was sent).

        Raises:
            UsageError: the client was closed while the attempt was in flight.
        """
        pump = self.pump
        ended = pump.clock()
        kind = classified.outcome.kind
        if kind is not OutcomeKind.SUCCESS:
            redact = pump.redactor.redact
            classified = classified._replace(message=redact(classified.message),
                                             google_status=redact(classified.google_status))
        self.records.append(AttemptRecord(
            number=dispatch.number, key=dispatch.key.label or "", model=dispatch.model,
            outcome=kind, status=classified.status, google_status=classified.google_status,
            message=classified.message, retry_after=classified.outcome.retry_after,
            started=started, ended=ended))
        self.last = (dispatch, classified)
        if pump.closed:  # the client closed while this attempt was in flight
            self._settle(kind)
            self.take_abort()
            raise UsageError(CLOSED)
        if kind is not OutcomeKind.SUCCESS:
            logger.debug("attempt %d of a request via %s on %s: %s (HTTP %s)", dispatch.number,
                         dispatch.key.label, dispatch.model, kind.value, classified.status)
        elif not stream:
            pump.durations.add(ended - started)
        pump.core.complete(dispatch.attempt, classified.outcome, ended)
        self._settle(kind)
        pump.report(dispatch, classified, started, ended, stream=stream)
        if final:
            # End it before any poll can dispatch the retry the outcome may have queued.
            self.close(failed=True)
        else:
            pump.pump(ended)
        return classified

    # ------------------------------------------------------------------ closing

    def shut(self) -> None:
        """The client is closing: the waiting caller gets `UsageError` instead of a decision."""
        self.closed = True
        self._wake()

    def abort(self, task: asyncio.Task[Any]) -> asyncio.Future[None]:
        """The client is closing: cancel `task`, which awaits this request's attempt.

        Returns:
            A future set once the attempt has let go of its connection (`io_ended`).
        """
        import asyncio

        self.aborted = task
        self.unwound = asyncio.get_running_loop().create_future()
        task.cancel()
        return self.unwound

    def take_abort(self) -> bool:
        """Whether `abort` cancelled the attempt and nothing else did; then the cancellation is
        taken back, and the caller raises `UsageError` instead.

        Called where the attempt ended with an exception (or, if the HTTP library swallowed the
        cancellation, where the closed client is noticed).
        """
        task = self.aborted
        if task is None:
            return False
        self.aborted = None
        return task.uncancel() == 0

    def io_ended(self) -> None:
        """The attempt's I/O is over: an aborted attempt has released its connection."""
        self.task = None
        unwound = self.unwound
        if unwound is not None and not unwound.done():
            unwound.set_result(None)

    def error(self, fail: Fail) -> ServiceError:
        """The typed error for a request that ended with `fail`."""
        text = f"{_WHY[fail.reason]} after {len(self.records)} attempt(s)"
        status = google_status = service_message = model = key = None
        if self.last is not None:
            dispatch, classified = self.last
            status, google_status = classified.status or None, classified.google_status
            service_message, model, key = classified.message, dispatch.model, dispatch.key.label
            text += _last_attempt(dispatch, classified)
        if fail.retry_at is not None:
            wait = fail.retry_at - self.pump.clock()
            # A deadline spent on slow attempts can end while capacity is there: say so plainly.
            text += (f"; capacity returns in {wait:.1f}s" if wait > 0.05
                     else "; capacity is available again now")
        error = ResponseTooLargeError if self.oversized else _ERRORS[fail.reason]
        return error(
            text, status=status, google_status=google_status, service_message=service_message,
            model=model, key=key, attempts=self.records, retry_at=fail.retry_at)

    def _settle(self, kind: OutcomeKind) -> None:
        """Release the shared store's claim of the attempt that ended with `kind`."""
        claim, self.claim = self.claim, None
        if claim is not None and self.pump.link is not None:
            self.pump.link.settle(claim, kind)

    def close(self, *, failed: bool = False) -> None:
        """End the request if it is still open (cancellation, or a broken stream: `failed`)."""
        # An attempt that never reported (its caller cancelled) still holds its lease.
        self._settle(OutcomeKind.CONNECTION_ERROR)
        pump = self.pump
        pump.mailboxes.pop(self.rid, None)
        recorder = pump.recorder
        if self.open:
            self.open = False
            now = pump.clock()
            if recorder is not None:
                recorder.request_ended(self.rid, now, ok=False,
                                       reason=INTERRUPTED if failed else CANCELLED)
            pump.core.cancel(self.rid, now, failed=failed)
            pump.pump()
        elif recorder is not None:  # answered, or failed (the loop raised `self.failure`)
            failure = self.failure
            recorder.request_ended(self.rid, pump.clock(), ok=failure is None,
                                   reason=None if failure is None else failure.reason.value)


def _last_attempt(dispatch: Dispatch, classified: Classified) -> str:
    """How the last attempt ended, for an error message."""
    text = f"; last attempt: {dispatch.model} via {dispatch.key.label}: "
    text += classified.outcome.kind.value
    if classified.status:
        text += f" (HTTP {classified.status} {classified.google_status or ''})".replace(" )", ")")
    if classified.message:
        text += f": {classified.message}"
    return text
