"""`Recorder`: writes a client's outcome trace (`keysched.trace`) without ever holding up a call.

Theory of operation
-------------------
`KeyedClient(..., record=...)` binds one `Recorder` to its pool.  The client tells it three
things, each a plain method call on the event loop that only builds a record and puts it on a
bounded queue: a request was submitted (`request_started`), an attempt's outcome is known
(`attempt`), a request ended (`request_ended`).  A writer thread takes records off the queue
and hands them to the sink: a file it opened (a path), a file object it was given, or a
callable.  So a slow disk costs the event loop nothing, and a full one costs it nothing either:

- the queue is full (the writer is slow or stuck): the record is dropped and counted;
- the sink raises (``OSError``: disk full, a closed pipe; or whatever a callable raises): the
  record is dropped and counted.

The first loss is logged once (a warning on the ``keysched`` logger); the next record written
after losses is preceded by a ``dropped`` line saying how many were lost, so the trace says
it is incomplete.  The call goes on in every case.  `aclose` (called by the client's
``aclose()``) stops the writer once it has written what was queued, flushes and closes what it
opened; it waits for that on a worker thread, at most `close_timeout` real seconds (a disk that
never comes back must not hold ``aclose`` for ever), and counts what is left as dropped.

What goes in a line is what `keysched.trace` lists and nothing else: no prompt, no answer, no
message text from the server.  Every key is its label (or its pseudonym); the one text a
server chooses that reaches the trace, a 429's ``quotaId``, goes through the pool's
`Redactor` first, as a server may echo the key it was sent anywhere.

Decisions where the issue was silent:

- A path is opened for writing when the client is built (a bad path fails there, naming the
  ``record`` field) and truncated: one file, one trace, one header.  A file object is written
  and flushed, never closed (it is the caller's).
- A callable is called on the writer thread, with each record object (`TraceHeader` first),
  never on the event loop: a callable that blocks is a slow sink like any other.
- The writer thread starts with the first record after the header, so a client that is never
  used (or fails to build) starts no thread; it is a daemon thread, so a client that is never
  closed cannot keep the process alive (its last lines may then be lost).
- Request numbers are the core's request ids; ``attempts`` in a request line counts the attempt
  lines written for it (an attempt cancelled in flight has no outcome, and no line).
- A status outside 100-599 (a proxy's invention) and the ``0`` of "no response" are written as
  null.  Times are rounded to the microsecond.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from keysched._config import PoolConfig
from keysched._decisions import Finish
from keysched._errors import ConfigurationError, UsageError
from keysched._outcomes import dimension_of
from keysched.trace import (
    AttemptLine,
    DroppedLine,
    KeyInfo,
    LimitInfo,
    PoolInfo,
    RequestLine,
    TraceHeader,
    TraceLine,
    ViolationInfo,
    pseudonym,
)

if TYPE_CHECKING:
    from keysched._decisions import Dispatch, Fail
    from keysched._redact import Redactor
    from keysched._wire import Classified

__all__ = ["DEFAULT_MAX_PENDING", "RecordTarget", "Recorder"]

logger = logging.getLogger("keysched")

DEFAULT_MAX_PENDING = 10_000
"""Records the queue holds before it drops: a few seconds of a busy pool, a few MB at most."""

Record = TraceHeader | TraceLine
RecordTarget = str | os.PathLike[str] | IO[str] | Callable[[Record], Any]
"""What ``record=`` accepts: a path, a writable text file object, or a callable."""

_STOP = object()  # the queue's last item: the writer ends after it


def _checked_target(target: object) -> tuple[Callable[[Record], Any], Callable[[], None],
                                             Callable[[], None]]:
    """The (write, flush, close) functions for `target`; raises `ConfigurationError`."""
    if isinstance(target, str | os.PathLike):
        try:
            file = open(target, "w", encoding="utf-8")  # noqa: SIM115 (closed by the writer)
        except OSError as exc:
            raise ConfigurationError("record", f"cannot open {os.fspath(target)!r} for "
                                     f"writing: {exc.strerror or exc}") from None
        return _file_writer(file), file.flush, file.close
    write = getattr(target, "write", None)
    if callable(write):
        flush = getattr(target, "flush", None)
        return (_file_writer(target), flush if callable(flush) else _nothing,  # type: ignore[arg-type]
                _nothing)
    if callable(target):
        return target, _nothing, _nothing
    raise ConfigurationError("record", f"expected a path, a writable text file or a callable, "
                             f"got {type(target).__name__}")


def _file_writer(file: IO[str]) -> Callable[[Record], Any]:
    def write(record: Record) -> None:
        file.write(record.to_json() + "\n")
    return write


def _nothing() -> None:
    pass


class Recorder:
    """Records every attempt of one `KeyedClient` as an outcome trace (`keysched.trace`).

    Pass it as ``KeyedClient(..., record=Recorder(target, ...))`` to choose its options;
    ``record=target`` is the same with the defaults.  One recorder serves one client.

    Args:
        target: a path (opened and truncated), a writable text file object (written and
            flushed, not closed) or a callable called with each record object (the header
            first), on the recorder's writer thread.
        hash_key: when given, key labels and project names are written as keyed pseudonyms
            (`keysched.trace.pseudonym`), stable for the same labels and `hash_key`.
        max_pending: records waiting for the writer before new ones are dropped.
        close_timeout: the longest `aclose` waits for the writer, in real seconds.

    Raises:
        ConfigurationError: `target` cannot be opened or is none of the three.
    """

    def __init__(self, target: RecordTarget, *, hash_key: bytes | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING, close_timeout: float = 5.0) -> None:
        if hash_key is not None and (not isinstance(hash_key, bytes) or not hash_key):
            raise ConfigurationError("hash_key", "expected non-empty bytes")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError("max_pending", f"expected an integer >= 1, got "
                                     f"{max_pending!r}"[:120])
        if (isinstance(close_timeout, bool) or not isinstance(close_timeout, int | float)
                or not 0 <= close_timeout < float("inf")):
            raise ConfigurationError("close_timeout", f"expected seconds >= 0, got "
                                     f"{close_timeout!r}"[:120])
        self._write, self._flush, self._close = _checked_target(target)
        self._hash_key = hash_key
        self._close_timeout = float(close_timeout)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._bound = False
        self._closed = False
        self._t0 = 0.0
        self._names: dict[str, str] = {}  # label or project -> what the trace calls it
        self._redact: Callable[[str | None], str | None] = _same
        self._requests: dict[int, list[float]] = {}  # open request -> [submitted t, attempts]
        # Losses: `_lost_on_loop` is counted on the event loop (queue full, a refused value),
        # `_lost_in_writer` and `_reported` on the writer thread (the sink raised; losses a
        # written dropped line covered).
        # Each counter has one writer, so no lock is needed to count.
        self._lost_on_loop = 0
        self._lost_in_writer = 0
        self._reported = 0
        self._warned = False
        self._header: TraceHeader | None = None  # until the writer has written it
        self._last_t = 0.0  # the t of the last line the writer took
        self._abandoned = False  # `aclose` gave up waiting: the writer stops at its next record

    def __repr__(self) -> str:
        return (f"Recorder(pending={self._queue.qsize()}, dropped={self.dropped}, "
                f"closed={self._closed})")

    @property
    def dropped(self) -> int:
        """Records lost so far (the queue was full, or the sink raised)."""
        return self._lost_on_loop + self._lost_in_writer

    # ------------------------------------------------------------ called by the client (loop)

    def bind(self, config: PoolConfig, *, now: float, wall: float, redactor: Redactor) -> None:
        """Start the trace of a client with `config`: t = 0 is `now` (client clock), `wall`
        its Unix time; `redactor` takes the pool's secrets out of server texts.

        Raises:
            UsageError: the recorder is bound to another client already.
        """
        if self._bound:
            raise UsageError("a Recorder records one client; make one per client")
        self._bound = True
        self._t0 = now
        self._redact = redactor.redact
        if self._hash_key is not None:
            key = self._hash_key
            for each in config.keys:
                for shown in (each.label or "", each.project or each.label or ""):
                    self._names[shown] = pseudonym(shown, key)
        name = self._name
        pool = PoolInfo(
            keys=tuple(KeyInfo(label=name(k.label or ""), project=name(k.project or k.label or ""))
                       for k in config.keys),
            models=config.models,
            limits=tuple(LimitInfo(model=limit.model, project=None if limit.project is None
                                   else name(limit.project), rpm=limit.rpm, tpm=limit.tpm,
                                   rpd=limit.rpd) for limit in config.limits))
        self._header = TraceHeader(source="client", start=wall, pool=pool)

    def request_started(self, request: int, now: float) -> None:
        """Request `request` was submitted at `now` (client clock)."""
        self._requests[request] = [now - self._t0, 0]

    def attempt(self, dispatch: Dispatch, classified: Classified, started: float, ended: float,
                *, stream: bool) -> None:
        """An attempt's outcome is known: queue its line (never blocks, never raises)."""
        if self._closed:
            return
        open_request = self._requests.get(dispatch.request)
        if open_request is not None:
            open_request[1] += 1
        try:
            line = self._attempt_line(dispatch, classified, started, ended, stream)
        except Exception as exc:  # a value the format refuses (a hostile server's) loses a line
            self._lost_on_loop += 1
            self._warn(f"{type(exc).__name__}: {exc}")
            return
        self._put(line)

    def _attempt_line(self, dispatch: Dispatch, classified: Classified, started: float,
                      ended: float, stream: bool) -> AttemptLine:
        outcome = classified.outcome
        redact = self._redact
        violations = [ViolationInfo(quota_id=redact(v.quota_id) or "?",
                                    dimension=v.dimension.value, value=v.value)
                      for v in outcome.violations]
        quota_id = classified.quota_id
        if quota_id and not any(v.quota_id == quota_id for v in outcome.violations):
            # The violation that decided the kind, when it taught no limit (a value of 0, or
            # none): a replay still wants to see which quota said no.
            dimension = dimension_of(quota_id)
            violations.append(ViolationInfo(
                quota_id=redact(quota_id) or "?",
                dimension=None if dimension is None else dimension.value,
                value=classified.quota_value if (classified.quota_value or 0) >= 0 else None))
        status = classified.status
        key = dispatch.key
        label = key.label or ""
        return AttemptLine(
            t=_seconds(ended - self._t0), request=dispatch.request, attempt=dispatch.number,
            key=self._name(label), project=self._name(key.project or label),
            model=dispatch.model, outcome=outcome.kind.value,
            status=status if 100 <= status <= 599 else None,
            retry_delay=outcome.retry_after, violations=tuple(violations),
            tokens_in=outcome.input_tokens, tokens_out=outcome.output_tokens,
            latency=_seconds(ended - started), stream=stream)

    def request_decided(self, decision: Finish | Fail, now: float) -> None:
        """The core ended a request with `decision` at `now`."""
        if isinstance(decision, Finish):
            self.request_ended(decision.request, now, ok=True, reason=None)
        else:
            self.request_ended(decision.request, now, ok=False, reason=decision.reason.value)

    def request_ended(self, request: int, now: float, *, ok: bool, reason: str | None) -> None:
        """Request `request` ended at `now`; a request already ended is ignored."""
        open_request = self._requests.pop(request, None)
        if open_request is None:
            return
        submitted, attempts = open_request
        self._put(RequestLine(t=_seconds(now - self._t0), request=request, submitted=submitted,
                              ok=ok, reason=None if ok else reason, attempts=int(attempts)))

    async def aclose(self) -> None:
        """Write what is queued, flush, close what the recorder opened (at most
        `close_timeout` seconds); later records are ignored."""
        if self._closed:
            return
        self._closed = True
        self._requests.clear()
        import asyncio

        if self._thread is None:
            self._start()
        await asyncio.get_running_loop().run_in_executor(None, self._stop)

    # ------------------------------------------------------------ internals

    def _name(self, name: str) -> str:
        return self._names.get(name, name)

    def _put(self, record: Record) -> None:
        if self._closed:
            return
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._lost_on_loop += 1
            self._warn("the writer is behind")

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keysched-recorder", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        """On a worker thread: queue the stop, wait for the writer (bounded), count the rest."""
        thread = self._thread
        assert thread is not None
        deadline = time.monotonic() + self._close_timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=self._close_timeout)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            self._abandoned = True
            left = self._queue.qsize()
            self._lost_on_loop += left
            self._warn(f"the writer did not finish within {self._close_timeout:g}s")

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("keysched: the outcome trace is losing records (%s); the calls go on, "
                           "and the trace will say how many were lost", why)

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        get = self._queue.get
        try:
            self._write_header()
            while not self._abandoned:
                record = get()
                if record is _STOP:
                    break
                assert isinstance(record, AttemptLine | RequestLine)
                self._emit(record)
                if self._queue.empty():
                    self._safely(self._flush)
            if not self._abandoned and self._write_header():
                self._write_drops(self._last_t)
        finally:
            self._safely(self._flush)
            self._safely(self._close)

    def _write_header(self) -> bool:
        """Whether the header is written (tried again before each line until it is)."""
        header = self._header
        if header is not None:
            try:
                self._write(header)
            except Exception as exc:
                self._warn(f"{type(exc).__name__}: {exc}")
                return False
            self._header = None
        return True

    def _emit(self, record: TraceLine) -> None:
        self._last_t = record.t
        # A line without its header would make no trace; losses before it are said first.
        if not self._write_header() or not self._write_drops(record.t):
            self._lost_in_writer += 1
            return
        try:
            self._write(record)
        except Exception as exc:  # a sink failing is a lost record, never a lost call
            self._lost_in_writer += 1
            self._warn(f"{type(exc).__name__}: {exc}")

    def _write_drops(self, t: float) -> bool:
        """Write a dropped line for the losses not yet reported; whether none are left."""
        lost = self.dropped - self._reported
        if lost <= 0:
            return True
        try:
            self._write(DroppedLine(t=t, lines=lost))
        except Exception as exc:
            self._warn(f"{type(exc).__name__}: {exc}")
            return False
        self._reported += lost
        return True

    def _safely(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:
            self._warn(f"{type(exc).__name__}: {exc}")


def _same(text: str | None) -> str | None:
    return text


def _seconds(value: float) -> float:
    return round(value, 6) if value > 0 else 0.0
