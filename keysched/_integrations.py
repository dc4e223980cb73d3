"""The pool under an SDK: `PoolTransport`, an httpx transport that schedules each request.

Theory of operation: google-genai, the openai SDK and the frameworks on them send through an
httpx client they accept from the caller.  `KeyedClient.transport()` gives a transport for such
a client.  For each request, `keysched._routes.route` tells a model call the pool schedules
from one it passes through.  A scheduled call opens a request on the client's core, exactly as
`KeyedClient.generate` does, and the transport is its driver: each `Dispatch` is sent through
the client's own HTTP backend with the chosen key and model, the answer is classified by the
same wire rules and reported, and the core decides what follows (another key, a fallback
model, a backoff, waiting for a cooldown).  The SDK gets the answer that ended the request.

Decisions where the issue was silent:

- On failure the SDK gets the last HTTP answer (status, headers and body, with every key of
  the pool replaced by its label wherever it appears, as in the client's own errors), so it
  raises its own error type.  If the last attempt got no answer (a reset, a timeout), httpx's
  own `ConnectError` or `ReadTimeout` is raised instead, as the SDK would have seen it.  A
  request that ended before any attempt (every key disabled or cooling until its deadline)
  gets a Google error made here: 429 ``RESOURCE_EXHAUSTED`` (with ``RetryInfo`` when the pool
  knows when capacity returns) or 403 ``PERMISSION_DENIED`` when no usable key is left.  The
  message is the one `generate` would raise.
- Every answer carries ``x-keysched-model``, ``x-keysched-key`` (the label) and
  ``x-keysched-attempts`` headers.
- Time: each attempt is bounded by the client's ``timeout`` and the whole call by its
  ``retry.deadline``, as for `generate`; the SDK's own httpx timeouts are not read (for a
  stream, ``timeout`` bounds connecting and each wait for more bytes).
- A stream is answered once its first event has arrived: an error event, or a stream that ends
  without one, fails over like any failed attempt.  After that the bytes are relayed as they
  come; a break is reported to the core (no failover any more) and reaches the SDK as the
  httpx error it would have seen.  A stream the SDK closes early ends the request as cancelled.
- Pass-through requests (anything `route` does not schedule) go out once, with the first key
  the pool has not disabled, through the client's httpx client (or one of the transport's own
  when the client sends through aiohttp).  An answer naming the key as unusable (invalid,
  leaked, a refused key type) disables it in the pool as a scheduled call's refusal would, and
  the request goes out again with the next key; any other answer (a 403 about another
  project's resource, say) reaches the SDK as it came, and so does the last refusal.
  Files and cached contents belong to the Google project of the key that made them; a pool
  spanning several projects should not rely on a generation call finding a file another
  project's key uploaded.
- `aclose()` of the transport closes only what it made; the `KeyedClient` stays the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

from keysched._config import Key
from keysched._decisions import Dispatch, Fail, FailReason
from keysched._errors import ServiceError, UsageError
from keysched._outcomes import OutcomeKind
from keysched._routes import Route, attempt_headers, response_headers, route
from keysched._session import Session, failure
from keysched._snapshot import LaneState
from keysched._sse import SSEParser, StreamEvent
from keysched._streaming import answered
from keysched._transport import HttpxBackend, StreamResponse, TransportFailure, TransportTimeout
from keysched._wire import SAFETY_FINISH_REASONS, Classified, classify

if TYPE_CHECKING:
    from keysched._client import KeyedClient

__all__ = ["PoolTransport"]

HttpAnswer = tuple[int, Mapping[str, str], bytes]

_SYNTHESIZED = {FailReason.NO_USABLE_LANE: (403, "PERMISSION_DENIED")}
_CAPACITY = (429, "RESOURCE_EXHAUSTED")
# Answers that name the key itself as unusable, whatever the route.  `KEY_FORBIDDEN` is not
# among them: the wire gives it to any 403 PERMISSION_DENIED and 400 FAILED_PRECONDITION, which
# on a pass-through route are about the resource asked for.
_KEY_REFUSALS = frozenset({OutcomeKind.KEY_INVALID, OutcomeKind.KEY_LEAKED,
                           OutcomeKind.KEY_TYPE_UNSUPPORTED})


class _Answer(NamedTuple):
    """The last HTTP answer of a request (status 0: the attempt got none)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    dispatch: Dispatch
    kind: OutcomeKind


class PoolTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends every request through a `KeyedClient`'s pool.

    Use it on the event loop the client runs on::

        async with KeyedClient(keys=[...]) as pool:
            http = httpx.AsyncClient(transport=pool.transport(), timeout=None)

    Args:
        client: the pool.
        fallback: whether a generation call may fall back along the pool's model list (the
            request header ``x-keysched-fallback: off`` pins one call to its model).
    """

    def __init__(self, client: KeyedClient, *, fallback: bool = True) -> None:
        if not isinstance(fallback, bool):
            raise UsageError(f"fallback must be True or False, got {type(fallback).__name__}")
        self._client = client
        self._fallback = fallback
        backend = client._backend
        self._http = backend.client if isinstance(backend, HttpxBackend) else None
        self._own_http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"PoolTransport({self._client!r}, fallback={self._fallback})"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        client = self._client
        if client._closed:
            raise UsageError("the client is closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None:  # the pool's timers and connections live on one loop
                raise UsageError("a KeyedClient's transport serves the event loop it was first "
                                 "used on; for other loops or threads use keysched.PoolThread")
            self._loop = loop
        body = await request.aread()
        raw_path, _, query = request.url.raw_path.decode("ascii").partition("?")
        call = route(request.method, raw_path, query, body, request.headers,
                     client._models, client._config.models, fallback=self._fallback)
        if call is None:
            return await self._pass_through(request, body)
        return await _Call(client, request, call, body).run()

    async def aclose(self) -> None:
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None

    async def _pass_through(self, request: httpx.Request, body: bytes) -> httpx.Response:
        """Send a request the pool does not schedule with the first key it has not disabled.

        An answer that says the key itself is unusable (`_KEY_REFUSALS`: invalid, leaked, a
        type the API refuses; the server refused it before doing anything) disables the key in
        the pool, as a scheduled call's refusal would, and the request goes out with the next
        key.  Any other answer reaches the SDK as it came: on a pass-through route a 403 or a
        400 FAILED_PRECONDITION is about the resource (another project's tuned model, a batch
        already ended), not the key.  When every key was refused, the last refusal reaches it.
        """
        client = self._client
        refused: set[str] = set()
        key = self._pass_through_key(refused)
        if key is None:
            raise UsageError("no usable key is left in the pool for a pass-through request")
        while True:
            response = await self._send_once(request, body, key)
            marks = {"x-keysched-key": key.label or "",
                     "x-keysched-attempts": str(len(refused) + 1)}
            redactor = client._redactor
            if response.is_success:
                return httpx.Response(
                    response.status_code,
                    headers=[(n, redactor.redact(v)) for n, v in response.headers.multi_items()]
                    + list(marks.items()),
                    stream=_Relay(response), extensions=response.extensions)
            try:
                raw = await response.aread()
            finally:
                await response.aclose()
            answer = httpx.Response(response.status_code,
                                    headers=response_headers(response.headers.multi_items(),
                                                             redactor.redact, marks),
                                    content=redactor.redact_bytes(raw))
            kind = classify(response.status_code, raw, response.headers).outcome.kind
            label = key.label or ""
            if kind not in _KEY_REFUSALS or not client._pump.key_refused(label, kind):
                return answer
            refused.add(label)
            key = self._pass_through_key(refused)
            if key is None:
                return answer

    def _pass_through_key(self, refused: set[str]) -> Key | None:
        """The first key of the pool neither disabled nor `refused` (None: none is left)."""
        snapshot = self._client.snapshot()
        disabled = {lane.key for lane in snapshot.lanes if lane.state is LaneState.DISABLED}
        return next((key for key in self._client._config.keys
                     if key.label not in disabled and key.label not in refused), None)

    async def _send_once(self, request: httpx.Request, body: bytes, key: Key) -> httpx.Response:
        bearer = "/openai/" in request.url.path
        headers = attempt_headers(request.headers.multi_items(), key.secret, bearer=bearer)
        params = [(k, v) for k, v in request.url.params.multi_items() if k != "key"]
        outgoing = httpx.Request(request.method, request.url.copy_with(params=params),
                                 headers=headers, content=body, extensions=request.extensions)
        http = self._http
        if http is None:
            http = self._own_http = self._own_http or httpx.AsyncClient(follow_redirects=False)
        return await http.send(outgoing, stream=True)


class _Relay(httpx.AsyncByteStream):
    """A pass-through answer's bytes, as they come (still encoded: the SDK's httpx decodes)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self._response.aiter_raw():
            yield data

    async def aclose(self) -> None:
        await self._response.aclose()


class _Call:
    """One scheduled request: the driver loop around its `Session`."""

    def __init__(self, client: KeyedClient, request: httpx.Request, call: Route,
                 body: bytes) -> None:
        self.client = client
        self.request = request
        self.call = call
        self.body = body
        self.base = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
        self.caller_headers = request.headers.multi_items()
        self.last: _Answer | None = None

    async def run(self) -> httpx.Response:
        client = self.client
        call = self.call
        session = client._open(call.models, call.tokens, None, call.spends_quota)
        handed_over = False
        try:
            async for dispatch in session:
                response = await self._attempt(session, dispatch)
                if response is not None:  # a stream has started: it ends the request
                    handed_over = True
                    return response
        except ServiceError as error:
            if session.failure is None:
                raise
            return self._failed(session, session.failure, error)
        finally:
            if not handed_over:
                session.close()
        return self._answer(session)

    async def _attempt(self, session: Session, dispatch: Dispatch) -> httpx.Response | None:
        """Send one attempt and report it; a started stream is returned instead."""
        client = self.client
        call = self.call
        started = client._clock()
        bound = session.attempt_timeout(client._timeout, started)
        url = call.url(self.base, dispatch.model)
        payload = call.body(self.body, dispatch.model)
        headers = client._backend.headers(attempt_headers(
            self.caller_headers, dispatch.key.secret, bearer=call.openai))
        if call.stream:
            started_stream = await session.send(
                self._stream(session, dispatch, url, headers, payload, bound, started), bound)
            if not isinstance(started_stream, Classified):
                return started_stream  # a started stream, or None: the attempt was reported
            answer: HttpAnswer | Classified = started_stream
        else:
            answer = await session.send(client._backend.post(url, headers, payload, bound), bound)
        session.report(dispatch, self._classified(dispatch, answer), started)
        return None

    def _classified(self, dispatch: Dispatch, answer: HttpAnswer | Classified) -> Classified:
        """Classify an answer (a failure to get one comes classified); keep it as the last."""
        if isinstance(answer, Classified):
            self.last = _Answer(0, [], b"", dispatch, answer.outcome.kind)
            return answer
        status, headers, raw = answer
        classified = self.call.classify(status, raw, headers)
        self.last = _Answer(status, list(_items(headers)), raw, dispatch, classified.outcome.kind)
        return classified

    async def _stream(self, session: Session, dispatch: Dispatch, url: str,
                      headers: Mapping[str, str], payload: bytes, bound: float,
                      started: float) -> httpx.Response | None:
        """Start a stream attempt: a response once its first event is a chunk, else None."""
        exits = contextlib.AsyncExitStack()
        handed_over = False
        try:
            response = await exits.enter_async_context(
                self.client._backend.stream(url, headers, payload, bound))
            answer_headers = list(_items(response.headers))
            if response.status != 200:
                raw = await response.read()
                classified = self.call.classify(response.status, raw, response.headers)
                self.last = _Answer(response.status, answer_headers, raw, dispatch,
                                    classified.outcome.kind)
                session.report(dispatch, classified, started)
                return None
            relay = _StreamRelay(self, session, dispatch, started, response, exits)
            first = await relay.first_event()
            if first is None or first.classified is not None:
                classified = failure(OutcomeKind.EMPTY, "the stream ended without a chunk")
                if first is not None and first.classified is not None:
                    classified = first.classified
                self.last = _Answer(200, answer_headers, relay.prefix(), dispatch,
                                    classified.outcome.kind)
                session.report(dispatch, classified, started)
                return None
            handed_over = True
            return httpx.Response(200, headers=response_headers(
                answer_headers, self.client._redactor.redact,
                self._marks(dispatch, len(session.records) + 1)), stream=relay)
        finally:
            if not handed_over:
                # The attempt was reported already: a failure to close it changes nothing.
                with contextlib.suppress(TransportFailure, TransportTimeout):
                    await exits.aclose()

    @staticmethod
    def _marks(dispatch: Dispatch, attempts: int) -> dict[str, str]:
        return {"x-keysched-model": dispatch.model, "x-keysched-key": dispatch.key.label or "",
                "x-keysched-attempts": str(attempts)}

    def _answer(self, session: Session) -> httpx.Response:
        """The answer that ended the request, for the SDK (every secret of the pool redacted)."""
        last = self.last
        assert last is not None
        assert last.status
        redactor = self.client._redactor
        return httpx.Response(last.status, headers=response_headers(
            last.headers, redactor.redact, self._marks(last.dispatch, len(session.records))),
            content=redactor.redact_bytes(last.body))

    def _failed(self, session: Session, fail: Fail, error: ServiceError) -> httpx.Response:
        if session.oversized:  # no answer to hand over: the typed error names the cap
            raise error
        last = self.last
        if last is not None and last.status:
            return self._answer(session)
        if last is not None:  # the last attempt got no answer: the SDK sees what httpx raises
            kind = (httpx.ReadTimeout if last.kind is OutcomeKind.TIMEOUT
                    else httpx.ConnectError)
            raise kind(str(error), request=self.request)
        status, google_status = _SYNTHESIZED.get(fail.reason, _CAPACITY)
        body: dict[str, Any] = {"code": status, "message": str(error), "status": google_status}
        if fail.retry_at is not None and status == 429:
            delay = max(0.0, fail.retry_at - self.client._clock())
            body["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{delay:.3f}s"}]
        content = json.dumps({"error": body}).encode()
        if self.call.openai:
            content = b"[" + content + b"]"  # the OpenAI-compatible endpoint wraps its errors
        return httpx.Response(status, headers=[("content-type", "application/json"),
                                               ("x-keysched-attempts", "0")], content=content)


class _StreamRelay(httpx.AsyncByteStream):
    """A started stream: the bytes read so far, then the rest as it comes; reported at its end.

    It reads the answer with keysched's SSE parser alongside, to learn how the stream ended
    (an error event, a safety stop, a break) and report that to the core when it closes.
    """

    def __init__(self, call: _Call, session: Session, dispatch: Dispatch, started: float,
                 response: StreamResponse, exits: contextlib.AsyncExitStack) -> None:
        self._call = call
        self._session = session
        self._dispatch = dispatch
        self._started = started
        self._chunks = response.iter_bytes().__aiter__()
        self._exits = exits
        self._parser = SSEParser()
        self._read: list[bytes] = []  # bytes read before the SDK took over
        self._relayed = False
        self._error: Classified | None = None  # an error event, or the break
        self._blocked: str | None = None
        self._usage: Any = None
        self._ended = False  # the body was read to its end
        self._closed = False

    def prefix(self) -> bytes:
        return b"".join(self._read)

    async def first_event(self) -> StreamEvent | None:
        """Read until the first event (None: the body ended without one)."""
        while True:
            try:
                data = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                events = self._parser.close()
                if events:
                    self._note(events)
                    return events[0]
                return None
            self._read.append(data)
            events = self._parser.feed(data)
            if events:
                self._note(events)
                return events[0]

    def _note(self, events: list[StreamEvent]) -> None:
        for event in events:
            if event.classified is not None:
                self._error = self._error or event.classified
                continue
            self._usage = event.usage or self._usage
            if event.finish_reason in SAFETY_FINISH_REASONS:
                self._blocked = event.finish_reason

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._relayed:
            raise httpx.StreamConsumed()
        self._relayed = True
        redact = self._call.client._redactor.redact_bytes
        # A secret holds no newline: hold back only a line's unfinished end, so that a secret
        # split across two pieces is still redacted, and no complete event waits.
        pending = b""
        for data in self._read:
            pending += data
        self._read = []
        if self._ended:
            if pending:
                yield redact(pending)
            return
        cut = pending.rfind(b"\n") + 1
        if cut:  # the events read before the SDK took over go at once
            yield redact(pending[:cut])
            pending = pending[cut:]
        request = self._call.request
        try:
            async for data in self._chunks:
                self._note(self._parser.feed(data))
                pending += data
                cut = pending.rfind(b"\n") + 1
                if cut:
                    yield redact(pending[:cut])
                    pending = pending[cut:]
            if pending:
                yield redact(pending)
                pending = b""
        except TransportTimeout:
            self._error = failure(OutcomeKind.TIMEOUT, "no more data within the timeout")
            raise httpx.ReadTimeout(self._broke(), request=request) from None
        except TransportFailure as exc:
            self._error = failure(OutcomeKind.CONNECTION_ERROR, f"{exc} while streaming")
            raise httpx.ReadError(self._broke(), request=request) from None
        self._note(self._parser.close())
        self._ended = True

    def _broke(self) -> str:
        dispatch = self._dispatch
        assert self._error is not None
        return (f"the stream from {dispatch.model} via {dispatch.key.label} broke: "
                f"{self._error.outcome.kind.value} ({self._error.message})")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._exits.aclose()
        finally:
            self._finish()

    def _finish(self) -> None:
        session = self._session
        if self._error is None and not self._ended:
            session.close()  # the SDK stopped reading: the request is cancelled
            return
        classified = (self._error if self._error is not None
                      else answered(self._blocked, self._usage))
        kind = classified.outcome.kind
        try:
            session.report(self._dispatch, classified, self._started,
                           final=kind not in (OutcomeKind.SUCCESS, OutcomeKind.BLOCKED),
                           stream=True)
        except UsageError:
            pass  # the client was closed meanwhile: the request has ended already
        finally:
            session.close()


def _items(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    multi = getattr(headers, "multi_items", None)  # httpx; aiohttp's are a multidict
    if multi is not None:
        items: list[tuple[str, str]] = multi()
        return items
    return [(str(k), str(v)) for k, v in headers.items()]
