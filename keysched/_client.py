"""`KeyedClient`: the asyncio driver around the scheduling core, for users.

Theory of operation: every call (`generate`, `stream`, `count_tokens`, `embed`) builds one
`_Request` (the encoded body, its token estimate, its bounds), opens a `Session` on the core for
it and runs the driver loop of `keysched._session`: for each attempt the core dispatches, the
calling task sends it itself (so cancelling the caller cancels the attempt), classifies the
answer with the pure wire layer and reports the outcome; the loop ends with the answer or raises
the typed error.  The attempt is the only part that differs: `_post` reads a whole answer,
`keysched._streaming.StreamAttempt` relays a stream chunk by chunk.  The session, the pump and
the timer that wakes the core live in `keysched._session`; HTTP goes through the seam in
`keysched._transport`.

Decisions where the issue was silent:

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

import contextlib
import json
import os
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import httpx

if TYPE_CHECKING:
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
from keysched._decisions import Dispatch
from keysched._errors import ConfigurationError, ServiceError, UsageError
from keysched._outcomes import OutcomeKind
from keysched._recorder import Recorder, RecordTarget
from keysched._redact import Redactor
from keysched._results import GenerateResult, StreamChunk
from keysched._selection import Policy
from keysched._session import CLOSED, Pump, Session
from keysched._sharing import StoreLink
from keysched._snapshot import PoolEvent, PoolSnapshot
from keysched._store import Store
from keysched._streaming import StreamAttempt, interrupted
from keysched._transport import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AiohttpBackend,
    Backend,
    HttpxBackend,
)
from keysched._wire import (
    API_BASE,
    EMBED_BATCH_LIMIT,
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

EVENT_HISTORY = 1000
"""How many recent pool events `KeyedClient.events()` keeps."""
# How long `aclose` waits for cancelled attempts to let go of their connections.  They do so as
# soon as their tasks run; the bound only keeps a task that never yields from holding `aclose`.
_UNWIND_WAIT = 5.0

_V = TypeVar("_V")

Reader = Callable[[int, bytes, Mapping[str, str], int], tuple[Classified, Any]]
"""Classifies a whole answer (status, body, headers, the request's token estimate) and extracts
its value (the count, the embeddings; None for generateContent)."""


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


def _check_embedding_model(embedding_model: object) -> None:
    if not isinstance(embedding_model, str) or not embedding_model.strip():
        raise ConfigurationError("embedding_model", f"expected a model name, got "
                                 f"{embedding_model!r}")


def _check_max_response_bytes(max_response_bytes: object) -> None:
    if (isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int)
            or max_response_bytes < 1):
        raise ConfigurationError("max_response_bytes", f"expected an integer number of bytes "
                                 f">= 1, got {max_response_bytes!r}"[:200])


def _check_texts(texts: object, model: object) -> None:
    """`embed`'s arguments: a sequence of strings, and a model name or None."""
    if (isinstance(texts, str) or not isinstance(texts, Sequence)
            or not all(isinstance(text, str) for text in texts)):
        raise UsageError("texts must be a sequence of strings")
    if model is not None and not isinstance(model, str):
        raise UsageError(f"model must be a model name, got {type(model).__name__}")


def _encode(body: dict[str, Any]) -> bytes:
    """The request body as JSON; a value JSON cannot carry is the caller's error."""
    try:
        return json.dumps(body, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # the value itself is not shown: it may be anything
        raise UsageError(f"the request holds a value JSON cannot encode ({type(exc).__name__})"
                         ) from None


def _encoded(body: dict[str, Any]) -> tuple[bytes, int]:
    """`body` as JSON, and its input-token estimate."""
    return _encode(body), estimate_tokens(body)


def _generation(contents: str | Sequence[Mapping[str, Any]],
                generation_config: Mapping[str, Any] | None,
                system_instruction: str | Mapping[str, Any] | None,
                safety_settings: Sequence[Mapping[str, Any]] | None,
                tools: Sequence[Mapping[str, Any]] | None) -> tuple[bytes, int]:
    """The body of `generate` and `stream`, as JSON, and its input-token estimate.

    Raises:
        UsageError: an argument has the wrong shape, or holds a value JSON cannot carry.
    """
    if (isinstance(contents, str) and generation_config is None and system_instruction is None
            and safety_settings is None and tools is None):
        return _prompt_payload(contents), tokens_for_chars(len(contents))
    return _encoded(generate_body(contents, generation_config=generation_config,
                                  system_instruction=system_instruction,
                                  safety_settings=safety_settings, tools=tools))


# A speed trick, kept for bench_client's target (default KeyedClient >= 0.9x raw aiohttp) and
# its measure of keysched's own CPU per request (benchmarks/profile_client.py): the general path
# for a bare prompt, the common call, builds the body dict, encodes it and walks it for the token
# estimate, which took about a quarter of keysched's own CPU per request.  The reference is
# `_encoded(generate_body(prompt))`; tests/test_client_results.py holds the two equal.
def _prompt_payload(prompt: str) -> bytes:
    """``_encode(generate_body(prompt))`` for a bare prompt string, byte for byte."""
    return b"".join((b'{"contents": [{"role": "user", "parts": [{"text": ',
                     encode_basestring_ascii(prompt).encode(), b"}]}]}"))


def _read_answer(status: int, raw: bytes, headers: Mapping[str, str],
                 tokens: int) -> tuple[Classified, Any]:
    """The `Reader` of generateContent: the classification is the answer."""
    return classify(status, raw, headers, input_tokens=tokens), None


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


async def _all_or_first_error(calls: Sequence[Awaitable[_V]]) -> list[_V]:
    """Await `calls` concurrently: all their results, in order, or the first failure raised.

    Not a TaskGroup: it would wrap a failure in an ExceptionGroup, and callers expect the
    `ServiceError` itself.  The first failure cancels the other calls.
    """
    import asyncio

    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@attrs.frozen(kw_only=True)
class _Request:
    """One call, ready for the driver loop: what to send, to which method, within which bounds.

    Attributes:
        method: the API method (``generateContent``, ``countTokens`` ...).
        payload: the JSON body.
        tokens: its input-token estimate, for the known limits.
        models: the models it may use, best first.
        timeout: the longest one attempt may take (a stream: each wait for a chunk), checked.
        deadline: the longest the whole call may take, as the caller gave it (`_open` checks it).
        spends_quota: whether it counts against the known limits.
    """

    method: str
    payload: bytes
    tokens: int
    models: Sequence[str]
    timeout: float
    deadline: float | datetime.timedelta | None
    spends_quota: bool = True


def _keys_from_env(env: Mapping[str, str], kwargs: dict[str, Any]) -> list[str]:
    """The keys of ``GEMINI_API_KEYS``; ``GEMINI_MODELS``, if set, goes into `kwargs`."""
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
    return keys


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
        store, pool_name: share the pool with other processes: a ``redis://`` URL and the pool's
            name in it, or a `Store` (see "Many processes, one pool" in the README).
        record: where to write the outcome trace (`keysched.trace`): a path, file, callable or `Recorder`.

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
        store: str | Store | None = None, pool_name: str = "keysched",
        record: RecordTarget | Recorder | None = None,
    ) -> None:
        _check_base_url(base_url)
        _check_embedding_model(embedding_model)
        self._timeout = _timeout("timeout", timeout)
        _check_max_response_bytes(max_response_bytes)
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
        self._base_url = base_url
        self._clock = clock
        if sleep is None:
            import asyncio  # here, not at the top: see `keysched._session`

            sleep = asyncio.sleep
        now = clock()
        self._core = Scheduler(config, rng=rng or random.Random(), policy=policy,
                               wall_epoch=wall_clock() - now)
        # Headers per key, built once: the key is checked and copied into them a single time
        # (before an HTTP client exists that a failure here would leave open).
        headers = {key.label: request_headers(key.secret) for key in config.keys}
        self._redactor = Redactor(config.keys)
        self._pump = Pump(self._core, clock, sleep, deadline=config.retry.deadline,
                          redactor=self._redactor, history=EVENT_HISTORY)
        if record is not None:  # the outcome trace
            self._pump.watch(Recorder.bound(record, config, now, wall_clock(), self._redactor))
        self._transports: list[httpx.AsyncBaseTransport] = []  # handed out by `transport()`
        self._backend = _make_backend(http_client, transport, fast, max_response_bytes)
        self._headers = {label: self._backend.headers(each) for label, each in headers.items()}
        self._urls: dict[tuple[str, str], str] = {}  # by (method, model), built on first use
        self._pump.link = None if store is None else StoreLink.open(
            store, pool_name, self._core, clock, wall_clock, self._timeout, max_in_flight_per_key)

    def _url(self, model: str, method: str) -> str:
        url = self._urls.get((method, model))
        if url is None:  # endpoint_url refuses a method the API does not have
            url = self._urls[method, model] = endpoint_url(self._base_url, model, method)
        return url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> KeyedClient:
        """Build a client from ``GEMINI_API_KEYS`` (commas or newlines) and ``GEMINI_MODELS``.

        Raises:
            ConfigurationError: the variables are missing or hold no keys.
        """
        return cls(keys=_keys_from_env(os.environ if environ is None else environ, kwargs),
                   **kwargs)

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

        unwinding = self._pump.close()
        # Wait for the cancelled timers, so that no task of this client outlives `aclose`.
        await self._pump.timer.aclose()
        if unwinding:
            await asyncio.wait(unwinding, timeout=_UNWIND_WAIT)
        for transport in self._transports:  # their own clients for pass-through requests
            await transport.aclose()
        await self._backend.aclose()
        if self._pump.link is not None:
            await self._pump.link.aclose()
        await self._pump.stop_recording()  # the trace's last lines written, its file closed

    @property
    def _closed(self) -> bool:
        return self._pump.closed

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
        request = self._request("generateContent", _generation(
            contents, generation_config, system_instruction, safety_settings, tools),
            models, timeout, deadline)
        session = await self._call(request, _read_answer)
        assert session.last is not None
        dispatch, answer = session.last
        return GenerateResult(
            text=answer.text, model=dispatch.model, key=dispatch.key.label or "",
            attempts=tuple(session.records), usage=answer.usage,
            finish_reason=answer.finish_reason, block_reason=answer.block_reason,
            raw=answer.json)

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
        request = self._request("streamGenerateContent", _generation(
            contents, generation_config, system_instruction, safety_settings, tools),
            models, timeout, deadline)
        delivered = 0
        with self._open(request.models, request.tokens, request.deadline,
                        request.spends_quota) as session:
            async for dispatch in session:
                started = self._clock()
                attempt = StreamAttempt(
                    session, dispatch, tokens=request.tokens, timeout=request.timeout,
                    first_timeout=session.attempt_timeout(request.timeout, started))
                opening = self._backend.stream(
                    self._url(dispatch.model, request.method), self._headers[dispatch.key.label],
                    request.payload, request.timeout)
                try:
                    async with contextlib.aclosing(attempt.chunks(opening)) as chunks:
                        async for chunk in chunks:
                            delivered += 1
                            yield chunk
                except BaseException:
                    if session.take_abort():
                        raise UsageError(CLOSED) from None
                    raise
                # A safety stop on the last chunk is an answer (as for `generate`), not a break.
                broken = delivered > 0 and attempt.classified.outcome.kind not in (
                    OutcomeKind.SUCCESS, OutcomeKind.BLOCKED)
                classified = session.report(dispatch, attempt.classified, started, final=broken,
                                            stream=True)
                if broken:
                    # Chunks already reached the caller: no transparent failover any more.
                    raise interrupted(dispatch, classified, delivered, session.records)

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
        _check_texts(texts, model)
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
        results = await _all_or_first_error([one(batch) for batch in batches])
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
        return list(self._pump.history)

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

    def _request(self, method: str, encoded: tuple[bytes, int], models: Sequence[str] | None,
                 timeout: float | datetime.timedelta | None,
                 deadline: float | datetime.timedelta | None, *,
                 spends_quota: bool = True) -> _Request:
        """The `_Request` of one call: `encoded` is its JSON body and token estimate.

        Raises:
            ConfigurationError: `timeout` is not a positive duration.
        """
        payload, tokens = encoded
        return _Request(method=method, payload=payload, tokens=tokens,
                        models=self._models if models is None else models,
                        timeout=self._timeout if timeout is None else _timeout("timeout", timeout),
                        deadline=deadline, spends_quota=spends_quota)

    def _open(self, models: Sequence[str], tokens: int,
              deadline: float | datetime.timedelta | None, spends_quota: bool) -> Session:
        """Submit a request to the core: its session (close it to end the request)."""
        if self._closed:
            raise UsageError("the client is closed")
        # The checked value goes on: a `timedelta` becomes seconds here, at the edge.  (The
        # config's own check turns an int beyond float range or a NaN into a
        # ConfigurationError, and never prints a huge value whole.)
        seconds = None if deadline is None else _duration("deadline", deadline)
        return Session(self._pump, models, tokens, seconds, spends_quota)

    async def _call_json(self, model: str, method: str, body: dict[str, Any],
                         parse: Callable[[Any], Any],
                         timeout: float | datetime.timedelta | None,
                         deadline: float | datetime.timedelta | None, *,
                         spends_quota: bool = True) -> Any:
        def read(status: int, raw: bytes, headers: Mapping[str, str],
                 tokens: int) -> tuple[Classified, Any]:
            return classify_json_response(status, raw, headers, parse=parse)

        request = self._request(method, _encoded(body), [model], timeout, deadline,
                                spends_quota=spends_quota)
        return (await self._call(request, read)).value

    async def _call(self, request: _Request, read: Reader) -> Session:
        """Run one request (not a stream) to its end: its session, answered, or a raised error.

        `read` classifies each answer and extracts its value (`Session.value`).
        """
        with self._open(request.models, request.tokens, request.deadline,
                        request.spends_quota) as session:
            async for dispatch in session:
                await self._post(session, dispatch, request, read)
        return session

    async def _post(self, session: Session, dispatch: Dispatch, request: _Request,
                    read: Reader) -> None:
        """One attempt of a call: POST, read the whole answer, classify it, report it."""
        started = self._clock()
        bound = session.attempt_timeout(request.timeout, started)
        answer = await session.send(self._backend.post(
            self._url(dispatch.model, request.method), self._headers[dispatch.key.label],
            request.payload, bound), bound)
        if isinstance(answer, Classified):  # no answer came
            classified = answer
        else:
            status, headers, raw = answer
            classified, session.value = read(status, raw, headers, request.tokens)
        session.report(dispatch, classified, started)
