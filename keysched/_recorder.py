"""`Recorder`: writes a client's outcome trace (`keysched.trace`) without ever holding up a call.

Theory of operation
-------------------
`KeyedClient(..., record=...)` binds one `Recorder` to its pool (`Pump.watch` in
`keysched._session`).  The client tells it three things, each a plain method call on the event
loop that only appends a few values to a bounded queue: a request was submitted
(`request_started`), an attempt's outcome is known (`attempt`, an observer of the client:
it gets the `AttemptReport` every attempt ends in), a request ended (`request_ended`).  A
writer thread makes the trace lines from them (validation, redaction, pseudonyms and JSON all
happen there) and hands them to the sink: a file it opened (a path), a file object it was
given, or a callable.  It wakes when records arrive, writes what has gathered, flushes, and
lets the next batch gather for `_LINGER` (50 ms): one wake-up per batch rather than per
record.  So a slow disk costs the event loop nothing, and a full one costs it nothing either:

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
- Request numbers are the core's request ids; ``attempts`` in a request line counts its
  attempts whose outcome was known (an attempt cancelled in flight has none, and no line).
- A status outside 100-599 (a proxy's invention) and the ``0`` of "no response" are written as
  null.  Times are rounded to the microsecond.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from keysched._config import PoolConfig
from keysched._errors import ConfigurationError, UsageError
from keysched.trace import (
    AttemptLine,
    DroppedLine,
    PoolInfo,
    RequestLine,
    TraceHeader,
    TraceLine,
    ViolationInfo,
    pseudonym,
)

if TYPE_CHECKING:
    from keysched._client import KeyedClient
    from keysched._redact import Redactor
    from keysched._session import AttemptReport

__all__ = ["DEFAULT_MAX_PENDING", "RecordTarget", "Recorder", "recorder_of"]

logger = logging.getLogger("keysched")

DEFAULT_MAX_PENDING = 10_000
"""Records the queue holds before it drops: a few seconds of a busy pool, a few MB at most."""

Record = TraceHeader | TraceLine
RecordTarget = str | os.PathLike[str] | IO[str] | Callable[[Record], Any]
"""What ``record=`` accepts: a path, a writable text file object, or a callable."""

_LINGER = 0.05
"""Real seconds the writer lets records gather after writing a batch (at most 20 wake-ups a
second; `aclose` cuts it short)."""


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


class _RequestSeen(NamedTuple):
    """A request's end as the loop hands it over."""

    ended: float
    request: int
    submitted: float
    ok: bool
    reason: str | None
    attempts: int


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
        self._max_pending = max_pending
        # The hand-over: the loop appends, the writer pops (a deque's append and popleft are
        # atomic), and `_wake` is set when the writer may be asleep.
        self._pending: collections.deque[AttemptReport | _RequestSeen] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._bound = False
        self._closed = False
        self._t0 = 0.0
        self._names: dict[str, str] = {}  # label or project -> what the trace calls it
        self._redact: Callable[[str], str] = _same
        self._requests: dict[int, list[float]] = {}  # open request -> [submitted t, attempts]
        # Losses: `_lost_on_loop` is counted on the event loop (the queue was full),
        # `_lost_in_writer` and `_reported` on the writer thread (a value the format refuses,
        # or the sink raised; losses a written dropped line covered).  Each counter has one
        # writer, so no lock is needed to count.
        self._lost_on_loop = 0
        self._lost_in_writer = 0
        self._reported = 0
        self._warned = False
        self._header: TraceHeader | None = None  # until the writer has written it
        self._last_t = 0.0  # the t of the last line the writer took
        self._abandoned = False  # `aclose` gave up waiting: the writer stops at its next record
        self._listeners: list[Callable[[TraceLine], Any]] = []  # called on the writer thread

    def __repr__(self) -> str:
        return f"Recorder(pending={self.pending}, dropped={self.dropped}, closed={self._closed})"

    @property
    def pending(self) -> int:
        """Records queued and not yet taken by the writer."""
        return len(self._pending)

    @property
    def dropped(self) -> int:
        """Records lost so far (the queue was full, or the sink raised)."""
        return self._lost_on_loop + self._lost_in_writer

    def listen(self, listener: Callable[[TraceLine], Any]) -> None:
        """Also hand every line to `listener`, on the writer thread, before the sink (so a
        failing sink loses it no count): what `keysched.metrics.PoolCollector` counts with."""
        self._listeners.append(listener)

    # ------------------------------------------------------------ called by the client (loop)

    @classmethod
    def bound(cls, record: RecordTarget | Recorder, config: PoolConfig, now: float, wall: float,
              redactor: Redactor) -> Recorder:
        """`record` (a `Recorder`, or a target to make one with the defaults), bound."""
        recorder = record if isinstance(record, Recorder) else cls(record)
        recorder.bind(config, now=now, wall=wall, redactor=redactor)
        return recorder

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
        self._header = TraceHeader(source="client", start=wall,
                                   pool=PoolInfo.from_config(config, self._name))

    def request_started(self, request: int, now: float) -> None:
        """Request `request` was submitted at `now` (client clock)."""
        self._requests[request] = [now, 0]

    def attempt(self, report: AttemptReport) -> None:
        """An attempt's outcome is known (the client's observer hook): queue it; never blocks,
        never raises.

        The report holds only the values a line needs (never the answer), and the line is made
        on the writer thread: the event loop pays for one append.
        """
        open_request = self._requests.get(report.request)
        if open_request is not None:
            open_request[1] += 1
        self._put(report)

    def request_ended(self, request: int, now: float, *, ok: bool, reason: str | None) -> None:
        """Request `request` ended at `now`; a request already ended is ignored."""
        open_request = self._requests.pop(request, None)
        if open_request is not None:
            submitted, attempts = open_request
            self._put(_RequestSeen(now, request, submitted, ok, reason, int(attempts)))

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

    def _put(self, item: AttemptReport | _RequestSeen) -> None:
        if self._closed:
            return
        if self._thread is None:
            self._start()
        pending = self._pending
        if len(pending) >= self._max_pending:
            self._lost_on_loop += 1
            self._warn("the writer is behind")
            return
        pending.append(item)
        if not self._wake.is_set():  # a flag read; `set` only when the writer may sleep
            self._wake.set()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keysched-recorder", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        """On a worker thread: stop the writer once it has drained, wait (bounded), count the
        rest."""
        thread = self._thread
        assert thread is not None
        self._stopping.set()
        self._wake.set()
        thread.join(self._close_timeout)
        if thread.is_alive():
            self._abandoned = True
            self._lost_on_loop += len(self._pending)
            self._warn(f"the writer did not finish within {self._close_timeout:g}s")

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("keysched: the outcome trace is losing records (%s); the calls go on, "
                           "and the trace will say how many were lost", why)

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        pending = self._pending
        try:
            self._write_header()
            while not self._abandoned:
                self._wake.wait()
                self._wake.clear()
                while pending and not self._abandoned:
                    self._emit(pending.popleft())
                self._safely(self._flush)
                if self._stopping.is_set():
                    if not pending:
                        break
                    continue
                # Let records gather before the next round: one wake-up per batch, not per
                # record, is most of the recorder's CPU (benchmarks/bench_record.py).
                self._stopping.wait(_LINGER)
            if not self._abandoned and self._write_header():
                self._write_drops(self._last_t)
        finally:
            self._safely(self._flush)
            self._safely(self._close)

    def _line(self, item: AttemptReport | _RequestSeen) -> TraceLine:
        """The trace line of a record the loop handed over (validated: it may raise)."""
        t0 = self._t0
        if isinstance(item, _RequestSeen):
            return RequestLine(t=_seconds(item.ended - t0), request=item.request,
                               submitted=_seconds(item.submitted - t0), ok=item.ok,
                               reason=None if item.ok else item.reason, attempts=item.attempts)
        violations = tuple(ViolationInfo.of(v, self._redact) for v in item.violations)
        status = item.status
        return AttemptLine(
            t=_seconds(item.ended - t0), request=item.request, attempt=item.number,
            key=self._name(item.key), project=self._name(item.project or item.key),
            model=item.model, outcome=item.kind.value,
            status=status if 100 <= status <= 599 else None,
            retry_delay=item.retry_after, violations=violations,
            tokens_in=item.input_tokens, tokens_out=item.output_tokens,
            latency=_seconds(item.ended - item.started), stream=item.stream)

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

    def _emit(self, item: AttemptReport | _RequestSeen) -> None:
        try:
            record = self._line(item)
        except Exception as exc:  # a value the format refuses (a hostile server's) loses a line
            self._lost_in_writer += 1
            self._warn(f"{type(exc).__name__}: {exc}")
            return
        self._last_t = record.t
        for listener in self._listeners:
            self._safely(lambda: listener(record))  # noqa: B023 (called at once)
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


def recorder_of(client: KeyedClient) -> Recorder:
    """`client`'s recorder; if it records nothing, a recorder that writes nowhere is bound to it
    (for listeners: `keysched.metrics.PoolCollector`)."""
    recorder = client._pump.recorder
    if recorder is None:
        recorder = Recorder(_nowhere)
        recorder.bind(client._config, now=client._clock(), wall=time.time(),
                      redactor=client._redactor)
        client._pump.watch(recorder)
    return recorder


def _nowhere(record: Record) -> None:
    pass


def _same(text: str) -> str:
    return text


def _seconds(value: float) -> float:
    return round(value, 6) if value > 0 else 0.0
