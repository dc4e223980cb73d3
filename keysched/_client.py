"""`KeyedClient`: the asyncio + httpx driver around the scheduling core.

Theory of operation: every call (`generate`, `stream`, `count_tokens`, `embed`) submits one
request to the core and then waits on its own little mailbox for decisions.  A `Dispatch` makes
the calling task send the HTTP attempt itself (so cancelling the caller cancels the attempt),
classify the answer with the pure wire layer, report the outcome to the core and pump; `Finish`
returns the result; `Fail` raises the typed error.  "Pumping" polls the core, posts each decision
to the mailbox of its request, logs pool events and arms one timer task for the core's
`next_deadline()` (cooldown ends, backoffs, deadlines), slept with the injectable `sleep`.

This is the only module of keysched that does I/O.  Decisions where the issue was silent:

- Keys travel only in the ``x-goog-api-key`` header; the URL never carries one.
- ``timeout`` bounds a whole attempt of `generate`, `count_tokens` and `embed` (waiting for a
  connection, connecting, sending, and reading the entire answer), capped by the time left
  before the request's deadline: an attempt that hangs, or a server that drips its answer,
  is abandoned after ``timeout`` and the call fails over.  The server sends a non-streamed
  answer only once it is complete, so a bound per read would be nearly the same bound, only
  harder to state.  A stream may rightly run for minutes: there ``timeout`` bounds each wait
  for the next chunk, and the first chunk must also come before the deadline.  Bytes that
  complete no chunk (keep-alive comments, an event never finished, a dripping error body or a
  body that is not SSE) are not progress, so they cannot hold a stream open.
- A stream is complete only when its last chunk carries a ``finishReason`` (Google always sends
  one).  A stream that ends without it, however its body was framed and whether it was closed
  cleanly or reset, was cut short: `StreamInterruptedError` (or, before any chunk, a failover).
- ``aclose()`` ends every open call at once: a call whose attempt is in flight has that attempt
  cancelled (its task is cancelled and the cancellation taken back, so the caller sees
  `UsageError`, never the HTTP library's error), and `aclose` waits for those attempts to let go
  of their connections before it closes the HTTP client, so that no socket outlives it.
- ``max_response_bytes`` caps every answer, decompressed (see `keysched._transport`).  An answer
  over it fails the call with `ResponseTooLargeError` without a retry (another key would be
  sent the same answer) and without blaming the key.
- A stream fails over only before its first chunk reaches the caller.  After that, a failure is
  reported to the core (so the key or model is cooled as usual), the request is ended, and
  `StreamInterruptedError` says how many chunks were delivered.
- HTTP goes through the small seam in `keysched._transport`.  A caller's own ``http_client``
  or ``transport`` is used as given (httpx is the seam users plug into).  Otherwise aiohttp,
  directly, when it is installed (the ``fast`` extra; ``fast=True`` requires it), since it costs
  a fraction of httpx's CPU per request; else several small httpx clients of our own, which keep
  httpcore's pool from collapsing under high concurrency (``fast=False`` forces this).
- Embedding requests are scheduled like any other on the same keys; the embedding model is one
  more model of the pool that `generate` never falls back to.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import random
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    # At run time asyncio is imported where it is first used, as httpx itself does: keeping it
    # out of `import keysched` saves a third of the import time (see benchmarks/bench_client.py).
    import asyncio
    import datetime

from keysched._config import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_MODELS,
    Key,
    Limit,
    PoolConfig,
    RetryPolicy,
    _duration,
    _timeout,
)
from keysched._core import Scheduler
from keysched._decisions import Decision, Dispatch, Fail, FailReason, Finish
from keysched._durations import AttemptDurations
from keysched._errors import (
    AttemptsExhaustedError,
    CapacityError,
    ConfigurationError,
    EmptyResponseError,
    NoUsableKeyError,
    RequestError,
    ResponseTooLargeError,
    ServiceError,
    StreamInterruptedError,
    UsageError,
)
from keysched._outcomes import Outcome, OutcomeKind
from keysched._redact import Redactor
from keysched._results import AttemptRecord, GenerateResult, StreamChunk
from keysched._selection import Policy
from keysched._sharing import StoreLink
from keysched._snapshot import PoolEvent, PoolSnapshot
from keysched._sse import SSEParser
from keysched._store import Claim, Store
from keysched._transport import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AiohttpBackend,
    Backend,
    HttpxBackend,
    ResponseTooLarge,
    TransportFailure,
    TransportTimeout,
)
from keysched._tuples import tuple_builder
from keysched._wire import (
    API_BASE,
    EMBED_BATCH_LIMIT,
    METHODS,
    SAFETY_FINISH_REASONS,
    Classified,
    batch_embed_body,
    classify,
    classify_json_response,
    count_tokens_body,
    endpoint_url,
    estimate_tokens,
    generate_body,
    parse_count_tokens,
    parse_embeddings,
    request_headers,
    tokens_for_chars,
)

__all__ = ["DEFAULT_MODELS", "KeyedClient"]

logger = logging.getLogger("keysched")

EVENT_HISTORY = 1000
"""How many recent pool events `KeyedClient.events()` keeps."""
_CLOSED = "the client was closed while the request was open"
# How long `aclose` waits for cancelled attempts to let go of their connections.  They do so as
# soon as their tasks run; the bound only keeps a task that never yields from holding `aclose`.
_UNWIND_WAIT = 5.0

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
_MOST_SEVERE_EVENT = max(_EVENT_LEVELS.values())


STORE_TIMEOUT = 0.25
"""Seconds a shared store's call may take before the client goes on without it."""


def _open_store(store: str | Store, pool_name: str) -> Store:
    """The `Store` that `KeyedClient`'s ``store`` argument names."""
    from keysched._redis_store import check_pool_name

    check_pool_name(pool_name)
    if isinstance(store, str):
        if not store.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("store", "expected a redis:// URL or a Store object (the "
                                     "value is not shown: it may hold a password)")
        from keysched._redis_store import RedisStore

        return RedisStore(store, pool_name=pool_name, timeout=STORE_TIMEOUT)
    if not all(callable(getattr(store, name, None))
               for name in ("admit", "settle", "facts", "aclose")):
        raise ConfigurationError("store", f"expected a redis:// URL or a Store object, got "
                                 f"{type(store).__name__}")
    return store


def _failure(kind: OutcomeKind, message: str) -> Classified:
    return Classified(outcome=Outcome(kind=kind), status=0, message=message)


def _too_large(session: _Session, exc: ResponseTooLarge) -> Classified:
    """The outcome of an answer over the cap: the request fails (the core's REQUEST_ERROR does
    that without a retry or a mark against the key), as `ResponseTooLargeError`."""
    session.oversized = True
    session.value = None
    return _failure(OutcomeKind.REQUEST_ERROR, str(exc))


def _check_base_url(base_url: object) -> None:
    # A URL is never echoed: a user may have pasted one with ``?key=<secret>`` in it.
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        what = f"a {type(base_url).__name__}" if not isinstance(base_url, str) else (
            f"a string of {len(base_url)} characters (not shown)")
        raise ConfigurationError("base_url", f"expected an http(s) URL, got {what}")
    try:
        parts = urllib.parse.urlsplit(base_url)
        bad = bool(parts.query or parts.fragment or parts.username or parts.password
                   or not parts.hostname)
    except ValueError:  # an invalid port or IPv6 literal
        bad = True
    if bad or any(ch.isspace() or not ch.isprintable() for ch in base_url):
        raise ConfigurationError("base_url", "expected a plain http(s) URL with a host and no "
                                 "query string, fragment, credentials or whitespace (a key goes "
                                 "in keys=, and is sent in a header); the URL is not shown")


class _StreamResult:
    """How a stream attempt ended; set by the attempt's generator before it finishes."""

    classified: Classified = Classified(outcome=Outcome(kind=OutcomeKind.CONNECTION_ERROR),
                                        status=0, message="the stream was abandoned")


# One of each per request: built in C, as their values need no checks.
_new_record = tuple_builder(AttemptRecord)
_new_result = tuple_builder(GenerateResult)
_ENCODER = json.JSONEncoder(allow_nan=False)  # json.dumps(allow_nan=False) builds one per call
_INF = math.inf


def _encode(body: dict[str, Any]) -> bytes:
    """The request body as JSON; a value JSON cannot carry is the caller's error."""
    try:
        return _ENCODER.encode(body).encode()
    except (TypeError, ValueError) as exc:  # the value itself is not shown: it may be anything
        raise UsageError(f"the request holds a value JSON cannot encode ({type(exc).__name__})"
                         ) from None


def _prompt_payload(prompt: str) -> bytes:
    """``_encode(generate_body(prompt))`` for a bare prompt string, byte for byte."""
    return b''.join((b'{"contents": [{"role": "user", "parts": [{"text": ',
                     encode_basestring_ascii(prompt).encode(), b'}]}]}'))


def _estimate(contents: object, body: dict[str, Any]) -> int:
    """`estimate_tokens`, with a shortcut for the common case of a bare prompt string."""
    if isinstance(contents, str) and len(body) == 1:
        return tokens_for_chars(len(contents))
    return estimate_tokens(body)


def _positive(field: str, value: object) -> float:
    # The config's own check: it turns an int beyond float range or a NaN into a
    # ConfigurationError (not an OverflowError) and never prints a huge value whole.
    return _duration(field, value)


class _Session:
    """One request's life: submit, wait for decisions, report attempts, end exactly once.

    It is also the request's mailbox: `_pump` puts the core's decisions for it in `items` and
    wakes the waiting caller through a future made only when the caller has to wait (most
    decisions are taken by the same synchronous step that pumped them).
    """

    __slots__ = ("aborted", "client", "closed", "deadline_at", "items", "last", "open",
                 "oversized", "records", "rid", "task", "unwound", "value", "waiter")

    def __init__(self, client: KeyedClient, models: Sequence[str], tokens: int,
                 deadline: float | None, spends_quota: bool = True) -> None:
        self.client = client
        self.records: list[AttemptRecord] = []
        self.last: tuple[Dispatch, Classified] | None = None
        self.value: Any = None  # what `read` extracted from the last attempt's answer
        now = client._clock()
        seconds = client._deadline if deadline is None else deadline
        self.deadline_at = now + seconds
        self.rid = client._core.submit(
            now, models=models, input_tokens=tokens, deadline=deadline, spends_quota=spends_quota,
            start_within=seconds - client._durations.allowance(seconds))
        self.open = True
        self.closed = False  # `aclose` ended the request while the caller waited
        self.items: list[Decision] = []  # rarely more than one: a list pops its head cheaply
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[Any] | None = None  # the task awaiting the attempt's I/O, if any
        self.aborted: asyncio.Task[Any] | None = None  # the task `aclose` cancelled
        self.unwound: asyncio.Future[None] | None = None  # set when an aborted attempt let go
        self.oversized = False  # the last answer exceeded max_response_bytes
        client._mailboxes[self.rid] = self
        client._pump(now)

    def wake(self) -> None:
        """Wake the caller waiting for a decision (`KeyedClient._pump` has put one)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def shut(self) -> None:
        """The client is closing: the waiting caller gets `UsageError` instead of a decision."""
        self.closed = True
        self.wake()

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

    async def next(self) -> Decision:
        items = self.items
        waited = False
        while True:
            if not items:
                if self.closed:
                    raise UsageError(_CLOSED)
                import asyncio

                waiter = self.waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self.waiter = None
                waited = True
                continue
            decision = items.pop(0)
            if isinstance(decision, Dispatch):
                if self.closed:
                    # `aclose` ended the request after this dispatch was posted, before this
                    # task ran: the attempt it names was cancelled with the request.  (A Finish
                    # or Fail posted before `aclose` still ends the call as it says.)
                    raise UsageError(_CLOSED)
                # A dispatch posted by another task's pump waits here for this task's turn; a
                # refusal that disabled its key may have come back meanwhile.  Never send on a
                # disabled key: hand the attempt back and wait for the next decision.  (A
                # dispatch this task's own pump just posted, taken without waiting, is fresh.)
                client = self.client
                if waited and client._core.withdraw(decision.attempt, client._clock()):
                    client._pump()
                    continue
            else:
                self.open = False
            return decision

    def attempt_timeout(self, timeout: float, now: float) -> float:
        """`timeout`, capped by the time left at `now` before the deadline (at least 1 ms)."""
        bound = self.deadline_at - now  # compared, not min/max: this runs once per attempt
        if bound > timeout:
            bound = timeout
        return bound if bound > 0.001 else 0.001

    def report(self, dispatch: Dispatch, classified: Classified, started: float, *,
               final: bool = False, timed: bool = True) -> Classified:
        """Record an attempt and tell the core; `final` ends the request with no retry.

        `timed`: the attempt's duration says how long an answer takes (not a stream's, which
        lasts as long as its reader reads), for `AttemptDurations`.

        Returns `classified` as it was kept: a failure's server texts with every secret of the
        pool replaced by its label (a proxy may quote the key it was sent).
        """
        client = self.client
        ended = client._clock()
        outcome = classified.outcome
        if outcome.kind is not OutcomeKind.SUCCESS:
            redact = client._redactor.redact
            classified = classified._replace(message=redact(classified.message),
                                             google_status=redact(classified.google_status))
        self.records.append(_new_record((
            dispatch.number, dispatch.key.label or "", dispatch.model, outcome.kind,
            classified.status, classified.google_status, classified.message, outcome.retry_after,
            started, ended)))
        self.last = (dispatch, classified)
        if client._closed:  # `aclose` ended the request while this attempt was in flight
            self.take_abort()
            raise UsageError(_CLOSED)
        if outcome.kind is not OutcomeKind.SUCCESS:
            logger.debug("attempt %d of a request via %s on %s: %s (HTTP %s)", dispatch.number,
                         dispatch.key.label, dispatch.model, outcome.kind.value, classified.status)
        if timed and outcome.kind is OutcomeKind.SUCCESS:
            client._durations.add(ended - started)
        client._core.complete(dispatch.attempt, outcome, ended)
        if final:
            # End it before any poll can dispatch the retry the outcome may have queued.
            self.close(failed=True)
        else:
            client._pump(ended)
        return classified

    def error(self, fail: Fail) -> ServiceError:
        why = _WHY[fail.reason]
        text = f"{why} after {len(self.records)} attempt(s)"
        status = google_status = service_message = model = key = None
        if self.last is not None:
            dispatch, classified = self.last
            status, google_status = classified.status or None, classified.google_status
            service_message, model, key = classified.message, dispatch.model, dispatch.key.label
            text += f"; last attempt: {model} via {key}: {classified.outcome.kind.value}"
            if status:
                text += f" (HTTP {status} {google_status or ''})".replace(" )", ")")
            if service_message:
                text += f": {service_message}"
        if fail.retry_at is not None:
            wait = fail.retry_at - self.client._clock()
            # A deadline spent on slow attempts can end while capacity is there: say so plainly.
            text += (f"; capacity returns in {wait:.1f}s" if wait > 0.05
                     else "; capacity is available again now")
        error = ResponseTooLargeError if self.oversized else _ERRORS[fail.reason]
        return error(
            text, status=status, google_status=google_status, service_message=service_message,
            model=model, key=key, attempts=self.records, retry_at=fail.retry_at)

    def close(self, *, failed: bool = False) -> None:
        """End the request if it is still open (cancellation, or a broken stream: `failed`)."""
        client = self.client
        client._mailboxes.pop(self.rid, None)
        if self.open:
            self.open = False
            client._core.cancel(self.rid, client._clock(), failed=failed)
            client._pump()


class KeyedClient:
    """Spread Gemini calls over a pool of API keys and models.

    Use it as ``async with KeyedClient(keys=[...], models=[...]) as client:``, or call
    `aclose()` when done.

    Args:
        keys: API keys as strings, or `Key` objects with a label and a project.
        models: model names, best first; requests fall back along this list.
        base_url: the API's base URL; point it at any Gemini-compatible server.
        retry: the retry policy (attempts, backoff, deadline, cooldowns).
        limits: known quotas per project and model; the pool then never exceeds them.
        timeout: the longest one attempt may take, in seconds (for `stream`: the longest
            wait for the next chunk); capped by the request's deadline.
        max_in_flight_per_key: an optional cap on concurrent requests per key.
        max_response_bytes: the most one answer may hold, decompressed (32 MiB by default);
            a larger one fails the call with `ResponseTooLargeError` and does not blame the key.
        embedding_model: the model `embed` uses by default.
        http_client: your own `httpx.AsyncClient` (not closed by `aclose`).
        transport: your own httpx transport (ignored if `http_client` is given).
        fast: True sends through aiohttp directly (``pip install keysched[fast]``), False
            through httpx; None (the default) picks aiohttp when it is installed, as it costs a
            fraction of httpx's CPU per request.  Ignored when `http_client` or `transport`
            is given: those are httpx's.
        policy: the scheduling policy (keysched's least-loaded policy by default).
        clock: monotonic seconds; inject a virtual clock in tests.
        sleep: the coroutine used to wait for the core's next deadline (``asyncio.sleep``).
        wall_clock: Unix time, to place per-day quota resets at midnight Pacific.
        rng: the random generator for backoff jitter.
        store: share the pool with other processes: a ``redis://host:port/db`` URL (needs
            ``pip install 'keysched[redis]'``) or a `Store` object (`MemoryStore` shares it
            with other clients of this process).  None (the default): this process alone.
        pool_name: with a ``redis://`` URL, the shared pool's name (the namespace of its
            keys in Redis); clients that share a pool use the same name and the same key
            labels.  A store object carries its own.

    Raises:
        ConfigurationError: a field is invalid (the message names it, never a secret).
    """

    def __init__(
        self,
        keys: Sequence[str | Key],
        models: Sequence[str] = DEFAULT_MODELS,
        *,
        base_url: str = API_BASE,
        retry: RetryPolicy | None = None,
        limits: Sequence[Limit] = (),
        timeout: float = 60.0,
        max_in_flight_per_key: int | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        embedding_model: str = DEFAULT_EMBEDDING_MODEL,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        fast: bool | None = None,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        store: str | Store | None = None,
        pool_name: str = "keysched",
    ) -> None:
        _check_base_url(base_url)
        if not isinstance(embedding_model, str) or not embedding_model.strip():
            raise ConfigurationError("embedding_model", f"expected a model name, got "
                                     f"{embedding_model!r}")
        self._timeout = _timeout("timeout", timeout)
        if (isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int)
                or max_response_bytes < 1):
            raise ConfigurationError("max_response_bytes", f"expected an integer number of bytes "
                                     f">= 1, got {max_response_bytes!r}"[:200])
        embedding_model = embedding_model.removeprefix("models/")
        self._embedding_model = embedding_model
        # The embedding model shares the keys (and may have its own `Limit`), but it is never a
        # fallback tier of `generate`: `_models` is the generation list alone.
        generation = PoolConfig(keys=keys, models=models,
                                retry=retry if retry is not None else RetryPolicy())
        self._models = generation.models
        pool_models = (generation.models if embedding_model in generation.models
                       else (*generation.models, embedding_model))
        config = PoolConfig(keys=generation.keys, models=pool_models, limits=limits,
                            retry=generation.retry, max_in_flight_per_key=max_in_flight_per_key)
        self._config = config
        self._deadline = config.retry.deadline  # a request's default deadline, in seconds
        self._base_url = base_url
        self._clock = clock
        import asyncio

        if sleep is None:
            sleep = asyncio.sleep
        self._sleep = sleep
        self._current_task = asyncio.current_task
        now = clock()
        self._core = Scheduler(config, rng=rng or random.Random(), policy=policy,
                               wall_epoch=wall_clock() - now)
        self._mailboxes: dict[int, _Session] = {}  # the open requests' sessions, by id
        self._durations = AttemptDurations()  # when a request is too late to start an attempt
        # Bounded, so that a long-running client keeps a window of history, not all of it.
        self._history: collections.deque[PoolEvent] = collections.deque(maxlen=EVENT_HISTORY)
        self._timer: asyncio.Task[None] | None = None
        self._timer_at = math.inf
        self._stale_timers: set[asyncio.Task[None]] = set()  # cancelled, not yet finished
        self._closed = False
        # Headers per key, built once: the key is checked and copied into them a single time
        # (before an HTTP client exists that a failure here would leave open).
        headers = {key.label: request_headers(key.secret) for key in config.keys}
        self._redactor = Redactor(config.keys)
        self._transports: list[httpx.AsyncBaseTransport] = []  # handed out by `transport()`
        self._backend = self._make_backend(http_client, transport, fast, max_response_bytes)
        self._headers = {label: self._backend.headers(each) for label, each in headers.items()}
        self._urls: dict[str, dict[str, str]] = {method: {} for method in METHODS}
        self._link = None
        if store is not None:
            shared = _open_store(store, pool_name)
            self._link = StoreLink(
                shared, self._core, clock=clock, wall_clock=wall_clock,
                wall_epoch=wall_clock() - now,
                timeout=getattr(shared, "timeout", STORE_TIMEOUT),  # a RedisStore's own
                key_cap=max_in_flight_per_key or 0)

    @staticmethod
    def _make_backend(http_client: httpx.AsyncClient | None,
                      transport: httpx.AsyncBaseTransport | None, fast: bool | None,
                      max_response_bytes: int) -> Backend:
        if http_client is not None or transport is not None:
            return HttpxBackend(http_client, transport=transport,
                                max_response_bytes=max_response_bytes)
        if fast is not False:
            try:
                return AiohttpBackend(max_response_bytes=max_response_bytes)
            except ImportError as exc:
                if fast:
                    raise ConfigurationError("fast", "the aiohttp backend is not installed: "
                                             "pip install 'keysched[fast]'") from exc
        return HttpxBackend(max_response_bytes=max_response_bytes)

    def _url(self, model: str, method: str) -> str:
        urls = self._urls.get(method)
        if urls is None:  # not a method of the API: endpoint_url says so
            return endpoint_url(self._base_url, model, method)
        url = urls.get(model)
        if url is None:
            url = urls[model] = endpoint_url(self._base_url, model, method)
        return url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> KeyedClient:
        """Build a client from ``GEMINI_API_KEYS`` (commas or newlines) and ``GEMINI_MODELS``.

        Raises:
            ConfigurationError: the variables are missing or hold no keys.
        """
        env = os.environ if environ is None else environ
        raw = env.get("GEMINI_API_KEYS")
        if raw is None:
            raise ConfigurationError("GEMINI_API_KEYS", "not set; expected API keys separated "
                                     "by commas or newlines")
        keys = [part.strip() for part in raw.replace("\n", ",").split(",") if part.strip()]
        if not keys:
            raise ConfigurationError("GEMINI_API_KEYS", "holds no keys; expected API keys "
                                     "separated by commas or newlines")
        models_raw = env.get("GEMINI_MODELS")
        if models_raw is not None:
            models = [m.strip() for m in models_raw.replace("\n", ",").split(",") if m.strip()]
            if not models:
                raise ConfigurationError("GEMINI_MODELS", "holds no model names")
            kwargs.setdefault("models", models)
        return cls(keys=keys, **kwargs)

    def __repr__(self) -> str:
        labels = [key.label for key in self._config.keys]
        shown = labels if len(labels) <= 4 else [*labels[:3], f"... {len(labels)} keys"]
        return f"KeyedClient(keys={shown}, models={list(self._models)}, base_url={self._base_url!r})"

    async def __aenter__(self) -> KeyedClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End every open call (they raise `UsageError`), stop the timer, close the HTTP client.

        Attempts in flight are cancelled, and `aclose` returns once they have let go of their
        connections.  An HTTP client passed in as `http_client` is left open: it is the caller's.
        """
        import asyncio

        self._closed = True
        now = self._clock()
        me = asyncio.current_task()
        unwinding = []
        for rid, session in list(self._mailboxes.items()):
            self._core.cancel(rid, now)  # frees its lane; nothing will be dispatched for it
            if session.task is not None and session.task is not me:
                unwinding.append(session.abort(session.task))
            session.shut()
        self._drop_timer()
        # Wait for the cancelled timers, so that no task of this client outlives `aclose`.
        await asyncio.gather(*self._stale_timers, return_exceptions=True)
        if unwinding:
            await asyncio.wait(unwinding, timeout=_UNWIND_WAIT)
        for transport in self._transports:  # their own clients for pass-through requests
            await transport.aclose()
        await self._backend.aclose()
        if self._link is not None:
            await self._link.aclose()

    def _redact_bytes(self, data: bytes) -> bytes:
        """`data` (an answer's bytes) with every secret of the pool replaced by its label."""
        text = data.decode("utf-8", "surrogateescape")
        redacted = self._redactor.redact(text)
        return data if redacted == text or redacted is None else redacted.encode(
            "utf-8", "surrogateescape")

    # ------------------------------------------------------------------ public calls

    async def generate(
        self,
        contents: str | Sequence[Mapping[str, Any]],
        *,
        models: Sequence[str] | None = None,
        generation_config: Mapping[str, Any] | None = None,
        system_instruction: str | Mapping[str, Any] | None = None,
        safety_settings: Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        timeout: float | datetime.timedelta | None = None,
        deadline: float | datetime.timedelta | None = None,
    ) -> GenerateResult:
        """Generate content with the best model that can serve now.

        Args:
            contents: a prompt string, or the REST ``contents`` list.
            models: the models this call may use, best first (default: the pool's).
            generation_config, system_instruction, safety_settings, tools: as in the REST API.
            timeout: the longest one attempt may take (default: the client's).
            deadline: the longest the whole call may take, retries included.

        Returns:
            The answer, with the model and key label that served it and every attempt made.

        Raises:
            ServiceError: a subclass saying why no answer could be had.
            UsageError: a bad argument.
        """
        if (isinstance(contents, str) and generation_config is None and system_instruction is None
                and safety_settings is None and tools is None):
            # A bare prompt, the common call: its body is a fixed frame around the JSON string.
            payload = _prompt_payload(contents)
            tokens = tokens_for_chars(len(contents))
        else:
            body = generate_body(contents, generation_config=generation_config,
                                 system_instruction=system_instruction,
                                 safety_settings=safety_settings, tools=tools)
            payload = _encode(body)
            tokens = _estimate(contents, body)
        dispatch, answer, _, attempts = await self._call(models, "generateContent", payload,
                                                         tokens, None, timeout, deadline)
        return _new_result((answer.text, dispatch.model, dispatch.key.label or "", attempts,
                            answer.usage, answer.finish_reason, answer.block_reason, answer.json))

    async def stream(
        self,
        contents: str | Sequence[Mapping[str, Any]],
        *,
        models: Sequence[str] | None = None,
        generation_config: Mapping[str, Any] | None = None,
        system_instruction: str | Mapping[str, Any] | None = None,
        safety_settings: Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        timeout: float | datetime.timedelta | None = None,
        deadline: float | datetime.timedelta | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Stream content chunk by chunk (``:streamGenerateContent?alt=sse``).

        Fails over to another key or model only until the first chunk is delivered.
        `timeout` bounds each wait for the next chunk, not the whole stream; `deadline` bounds
        the wait for the first.  A stream is complete when its last chunk has a finish reason.

        Raises:
            StreamInterruptedError: the stream broke (or ended without its last chunk) after
                chunks were delivered.
            ServiceError: no stream could be started.
        """
        body = generate_body(contents, generation_config=generation_config,
                             system_instruction=system_instruction,
                             safety_settings=safety_settings, tools=tools)
        payload = _encode(body)
        tokens = _estimate(contents, body)
        attempt_timeout = self._attempt_timeout(timeout)
        session = self._open(models, tokens, deadline)
        delivered = 0
        link = self._link
        try:
            while True:
                decision = await session.next()
                if isinstance(decision, Finish):
                    return
                if isinstance(decision, Fail):
                    raise session.error(decision)
                claim = (None if link is None
                         else await self._admit(decision, tokens, True, attempt_timeout))
                if claim is False:  # a shared budget is full: withdrawn, not sent
                    continue
                started = self._clock()
                result = _StreamResult()
                attempt = self._stream_attempt(
                    session, decision, payload, tokens, attempt_timeout,
                    session.attempt_timeout(attempt_timeout, started), result)
                try:
                    async with contextlib.aclosing(attempt) as chunks:
                        async for chunk in chunks:
                            delivered += 1
                            yield chunk
                except BaseException:
                    if link is not None and claim:
                        link.settle(claim, OutcomeKind.CONNECTION_ERROR)
                    if session.take_abort():
                        raise UsageError(_CLOSED) from None
                    raise
                classified = result.classified
                if link is not None and claim:
                    link.settle(claim, classified.outcome.kind)
                # A safety stop on the last chunk is an answer (as for `generate`), not a break.
                broken = delivered > 0 and classified.outcome.kind not in (
                    OutcomeKind.SUCCESS, OutcomeKind.BLOCKED)
                classified = session.report(decision, classified, started, final=broken,
                                            timed=False)
                if broken:
                    # Chunks already reached the caller: no transparent failover any more.
                    raise StreamInterruptedError(
                        f"the stream from {decision.model} via {decision.key.label} broke after "
                        f"{delivered} chunk(s): {classified.outcome.kind.value}"
                        f"{f' ({classified.message})' if classified.message else ''}",
                        chunks_delivered=delivered, status=classified.status or None,
                        google_status=classified.google_status,
                        service_message=classified.message, model=decision.model,
                        key=decision.key.label, attempts=session.records)
        finally:
            session.close()

    async def count_tokens(self, contents: str | Sequence[Mapping[str, Any]], *,
                           model: str | None = None,
                           timeout: float | datetime.timedelta | None = None,
                           deadline: float | datetime.timedelta | None = None) -> int:
        """Count the input tokens of `contents` for `model` (default: the best model).

        Scheduled on the pool like any call (failover, cooldowns), but not counted against the
        known limits: countTokens is believed not to spend generateContent quota.
        """
        body = count_tokens_body(contents)
        model = model or self._models[0]
        value = await self._call_json(model, "countTokens", body, parse_count_tokens, timeout,
                                      deadline, spends_quota=False)
        return int(value)

    async def embed(self, texts: Sequence[str], *, model: str | None = None,
                    timeout: float | datetime.timedelta | None = None,
                    deadline: float | datetime.timedelta | None = None) -> list[list[float]]:
        """Embed `texts`, in batches of at most 100 per call, split transparently.

        Returns:
            One vector per text, in order.
        """
        if (isinstance(texts, str) or not isinstance(texts, Sequence)
                or not all(isinstance(text, str) for text in texts)):
            raise UsageError("texts must be a sequence of strings")
        if model is not None and not isinstance(model, str):
            raise UsageError(f"model must be a model name, got {type(model).__name__}")
        model = (model or self._embedding_model).removeprefix("models/")
        batches = [list(texts[i:i + EMBED_BATCH_LIMIT])
                   for i in range(0, len(texts), EMBED_BATCH_LIMIT)]

        async def one(batch: list[str]) -> list[list[float]]:
            vectors: list[list[float]] = await self._call_json(model, "batchEmbedContents",
                                            batch_embed_body(model, batch), parse_embeddings,
                                            timeout, deadline)
            if len(vectors) != len(batch):
                raise ServiceError(f"{model} returned {len(vectors)} embeddings for "
                                   f"{len(batch)} texts", model=model)
            return vectors

        if len(batches) <= 1:
            return await one(batches[0]) if batches else []
        # Not a TaskGroup: it would wrap a failure in an ExceptionGroup, and callers expect the
        # `ServiceError` itself.  The first failure cancels the other batches and is raised.
        import asyncio

        tasks = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [vector for vectors in results for vector in vectors]

    def snapshot(self) -> PoolSnapshot:
        """The pool now: every lane's state, cooldown and counters (labels only)."""
        return self._core.snapshot(self._clock())

    def events(self) -> list[PoolEvent]:
        """The most recent pool events, oldest first (the last `EVENT_HISTORY` of them).

        Keys disabled, quota groups and models cooled, fallbacks and returns to the best
        model, each with its time on the client's clock and its reason: what a dashboard or
        `sim.plots.plot_cooldowns` needs to draw the pool over time.
        """
        return list(self._history)

    def transport(self, *, fallback: bool = True) -> httpx.AsyncBaseTransport:
        """An httpx transport over this pool, for an SDK's httpx client (same event loop).

        Each model call the SDK sends is scheduled like `generate` (see
        `keysched._integrations`); `fallback` lets a call fall back along the pool's models.
        """
        from keysched._integrations import PoolTransport

        transport = PoolTransport(self, fallback=fallback)
        self._transports.append(transport)  # `aclose` closes what it opened
        return transport

    @property
    def models(self) -> tuple[str, ...]:
        """The generation models, best first."""
        return self._models

    # ------------------------------------------------------------------ internals

    def _attempt_timeout(self, timeout: float | datetime.timedelta | None) -> float:
        return self._timeout if timeout is None else _timeout("timeout", timeout)

    def _open(self, models: Sequence[str] | None, tokens: int,
              deadline: float | datetime.timedelta | None,
              spends_quota: bool = True) -> _Session:
        if self._closed:
            raise UsageError("the client is closed")
        if deadline is not None:
            # The checked value goes on: a `timedelta` becomes seconds here, at the edge.
            deadline = _positive("deadline", deadline)
        return _Session(self, self._models if models is None else models, tokens, deadline,
                        spends_quota)

    async def _call_json(self, model: str, method: str, body: dict[str, Any],
                         parse: Callable[[Any], Any],
                         timeout: float | datetime.timedelta | None,
                         deadline: float | datetime.timedelta | None, *,
                         spends_quota: bool = True) -> Any:
        def read(status: int, raw: bytes, headers: Mapping[str, str],
                 tokens: int) -> tuple[Classified, Any]:
            return classify_json_response(status, raw, headers, parse=parse)

        payload = _encode(body)
        _, _, value, _ = await self._call([model], method, payload, estimate_tokens(body), read,
                                          timeout, deadline, spends_quota=spends_quota)
        return value

    async def _call(
        self, models: Sequence[str] | None, method: str, payload: bytes, tokens: int,
        read: Callable[[int, bytes, Mapping[str, str], int], tuple[Classified, Any]] | None,
        timeout: float | datetime.timedelta | None, deadline: float | datetime.timedelta | None,
        *, spends_quota: bool = True,
    ) -> tuple[Dispatch, Classified, Any, tuple[AttemptRecord, ...]]:
        """Run one request (not a stream) to its end: the answering attempt, or a raised error.

        `read` classifies an HTTP answer (given the request's token estimate) and extracts its
        value (the embeddings, the count); None reads a generateContent answer (no value).
        """
        attempt_timeout = self._attempt_timeout(timeout)
        session = self._open(models, tokens, deadline, spends_quota)
        clock = self._clock
        current_task = self._current_task
        items = session.items
        urls = self._urls[method]
        link = self._link
        try:
            while True:
                # A decision already there was posted by this task's own pump, just now (the
                # attempt was in flight before): take it without the wait and its checks.
                decision = items.pop(0) if items else await session.next()
                if isinstance(decision, Dispatch):
                    claim = (None if link is None else
                             await self._admit(decision, tokens, spends_quota, attempt_timeout))
                    if claim is False:  # a shared budget is full: withdrawn, not sent
                        continue
                    started = clock()
                    bound = session.attempt_timeout(attempt_timeout, started)
                    session.task = current_task()  # for `aclose` to cancel
                    try:
                        status, headers, raw = await self._backend.post(
                            urls.get(decision.model) or self._url(decision.model, method),
                            self._headers[decision.key.label], payload, bound)
                    except TransportTimeout:
                        classified = _failure(OutcomeKind.TIMEOUT,
                                              f"no answer within {bound:.1f}s")
                        session.value = None
                    except TransportFailure as exc:
                        classified = _failure(OutcomeKind.CONNECTION_ERROR,
                                              f"{exc} before an answer arrived")
                        session.value = None
                    except ResponseTooLarge as exc:
                        classified = _too_large(session, exc)
                    except BaseException:
                        if link is not None and claim:
                            link.settle(claim, OutcomeKind.CONNECTION_ERROR)
                        if session.take_abort():
                            raise UsageError(_CLOSED) from None
                        raise
                    else:
                        if read is None:
                            classified = classify(status, raw, headers, input_tokens=tokens)
                        else:
                            classified, session.value = read(status, raw, headers, tokens)
                    finally:
                        session.io_ended()
                    if link is not None and claim:
                        link.settle(claim, classified.outcome.kind)
                    session.report(decision, classified, started)
                elif isinstance(decision, Finish):
                    session.open = False
                    last = session.last
                    assert last is not None
                    return last[0], last[1], session.value, tuple(session.records)
                else:
                    session.open = False
                    raise session.error(decision)
        finally:
            session.close()

    async def _stream_attempt(self, session: _Session, dispatch: Dispatch, payload: bytes,
                              tokens: int, timeout: float, first_timeout: float,
                              result: _StreamResult) -> AsyncGenerator[StreamChunk, None]:
        """Yield one attempt's chunks; leave its classification in `result`.

        The first chunk must arrive within `first_timeout` of the start (the attempt's timeout,
        capped by the request's deadline), each later one within `timeout` of the one before.
        Every wait for the server is bounded by that, not by the library's per-read timers:
        bytes that complete no chunk are not progress.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        wait = first_timeout
        due = loop.time() + wait
        url = self._url(dispatch.model, "streamGenerateContent")
        label = dispatch.key.label or ""
        delivered = 0
        usage = None
        blocked: str | None = None
        finished = False  # the last chunk (one with a finishReason) has arrived
        task = session.task = self._current_task()
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout_at(due):
                    response = await stack.enter_async_context(
                        self._backend.stream(url, self._headers[label], payload, timeout))
                    if response.status != 200:
                        raw = await response.read()
                        result.classified = classify(response.status, raw, response.headers,
                                                     input_tokens=tokens)
                        return
                parser = SSEParser()
                pieces = await stack.enter_async_context(contextlib.aclosing(
                    response.iter_bytes()))
                while True:
                    async with asyncio.timeout_at(due):
                        data = await anext(pieces, None)
                    for event in parser.close() if data is None else parser.feed(data):
                        if event.classified is not None:
                            result.classified = event.classified
                            return
                        usage = event.usage or usage
                        if event.finish_reason is not None:
                            finished = True
                            if event.finish_reason in SAFETY_FINISH_REASONS:
                                blocked = event.finish_reason
                        session.task = None  # the caller's own code runs: not ours to cancel
                        yield StreamChunk(text=event.text, model=dispatch.model, key=label,
                                          index=delivered, finish_reason=event.finish_reason,
                                          usage=event.usage, raw=event.json)
                        if session.closed:
                            raise UsageError(_CLOSED)
                        session.task = task
                        delivered += 1
                        wait = timeout
                        due = loop.time() + wait
                    if data is None:
                        break
        except (TransportTimeout, TimeoutError):
            if not finished:
                result.classified = _failure(OutcomeKind.TIMEOUT,
                                             f"no chunk within {wait:.1f}s")
                return
        except TransportFailure as exc:
            if not finished:  # a failure after the last chunk loses nothing
                result.classified = _failure(OutcomeKind.CONNECTION_ERROR,
                                             f"{exc} while streaming")
                return
        except ResponseTooLarge as exc:
            result.classified = _too_large(session, exc)
            return
        finally:
            session.io_ended()
        if blocked is not None:
            result.classified = Classified(outcome=Outcome(kind=OutcomeKind.BLOCKED), status=200,
                                           finish_reason=blocked)
        elif delivered == 0:
            result.classified = _failure(OutcomeKind.EMPTY, "the stream ended without a chunk")
        elif not finished:
            result.classified = _failure(OutcomeKind.CONNECTION_ERROR, "the stream ended before "
                                         "its last chunk (no finishReason)")
        else:
            result.classified = Classified(
                outcome=Outcome(kind=OutcomeKind.SUCCESS,
                                input_tokens=usage.prompt_tokens if usage else None,
                                output_tokens=usage.output_tokens if usage else None),
                status=200, usage=usage)

    async def _admit(self, decision: Dispatch, tokens: int, spends_quota: bool,
                     attempt_timeout: float) -> Claim | bool | None:
        """Ask the shared store for the attempt (see `StoreLink.admit`); if it was withdrawn,
        pump, so that the request's next decision is posted."""
        assert self._link is not None
        claim = await self._link.admit(decision, tokens, spends_quota, attempt_timeout)
        if claim is False:
            self._pump()
        return claim

    def _pump(self, now: float | None = None) -> None:
        """Poll the core, deliver its decisions, log pool events, re-arm the timer.

        `now` is the client clock's time if the caller just read it.
        """
        core = self._core
        mailboxes = self._mailboxes
        for decision in core.poll(self._clock() if now is None else now):
            session = mailboxes.get(decision.request)
            if session is not None:
                session.items.append(decision)  # `put`, inlined
                if session.waiter is not None:
                    session.wake()
            elif isinstance(decision, Dispatch):
                # Nobody waits for this request any more (its caller is gone): free the lane.
                core.cancel(decision.request, self._clock())
        # Each event is logged at its own level: a logger set to WARNING must still see
        # disabled keys.  The shortcut skips the loop only when even the most severe level is
        # filtered out.
        events = core.take_events()
        if events:
            if self._link is not None:
                self._link.note(events)
            self._history.extend(events)
            if logger.isEnabledFor(_MOST_SEVERE_EVENT):
                for event in events:
                    level = _EVENT_LEVELS.get(event.kind, logging.INFO)
                    if logger.isEnabledFor(level):
                        self._log(event, level)
        at = core.next_deadline()
        # The timer is re-armed only for an earlier wake-up, or dropped once nothing is pending
        # (a timer is armed exactly when `_timer_at` is finite).
        timer_at = self._timer_at
        if at != timer_at and (at < timer_at or at == _INF):
            self._arm(at)

    def _log(self, event: PoolEvent, level: int) -> None:
        where = " ".join(f"{name}={value}" for name, value in (
            ("key", event.key), ("project", event.project), ("model", event.model))
            if value is not None)
        until = (f" for {event.until - event.time:.1f}s" if event.until is not None
                 and math.isfinite(event.until) else "")
        logger.log(level, "%s %s%s (%s)", event.kind.replace("_", " "), where, until,
                   event.reason)

    def _arm(self, at: float) -> None:
        if at == _INF:
            # Nothing is pending any more: an idle client keeps no task sleeping (a timer left
            # armed for a request that has ended would wake for nothing, and under a virtual
            # clock would make time jump).
            self._drop_timer()
            return
        if self._closed or at >= self._timer_at:
            return
        self._drop_timer()
        self._timer_at = at
        import asyncio

        self._timer = asyncio.get_running_loop().create_task(self._wake(at))

    def _drop_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._stale_timers.add(timer)
            timer.add_done_callback(self._stale_timers.discard)
        self._timer = None
        self._timer_at = math.inf

    async def _wake(self, at: float) -> None:
        import asyncio

        try:
            await self._sleep(max(0.0, at - self._clock()))
        finally:
            if self._timer is asyncio.current_task():
                self._timer = None
                self._timer_at = math.inf
        self._pump()

