"""The HTTP seam of `KeyedClient`: one small interface, an httpx backend and an aiohttp backend.

The client needs exactly two things from HTTP: POST a body and read the whole answer, or POST
and read the answer's bytes as they arrive.  Each backend maps its library's failures to three
exceptions, `TransportTimeout`, `TransportFailure` and `ResponseTooLarge`, whose messages name
only the kind of failure (never a URL, a header or a key).

What is read is capped: no answer (a whole body, an error body, or all of a stream) may exceed
``max_response_bytes`` once decompressed.  Both backends read the raw bytes and decompress them
here, through one `_Body` per answer, rather than letting their library inflate a body without a
bound (a small gzip body can inflate a thousandfold): keysched asks for ``gzip, deflate`` only,
inflates at most one byte past the room left, and stops reading once the cap is passed.  An
answer that declares a longer ``content-length`` is refused before its body is read.  An
encoding other than gzip or deflate (which keysched does not ask for) is a `TransportFailure`.

- `HttpxBackend` sends through httpx: the caller's own client or transport plugs in here, and
  `httpx.MockTransport` / `httpx.ASGITransport` work as usual.  When keysched makes the clients
  itself it spreads requests over several small ones (`SHARD_LOAD` requests in flight each, a
  new client when all are busy): httpcore's pool walks every connection, checking each idle
  one's socket, on each request and each response (encode/httpx#3215), so one pool's cost per
  request grows with the connections it holds; small pools keep it at the low-concurrency cost.
- `AiohttpBackend` (chosen by default when aiohttp is installed: ``pip install keysched[fast]``)
  talks to aiohttp directly.  Even with small pools, httpx builds its URL, header and response
  models on every request, several times aiohttp's own cost per request (see
  benchmarks/bench_client.py for the figures of each design, measured side by side).
"""

from __future__ import annotations

import contextlib
import functools
import math
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, Protocol

import httpx

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "SHARD_LOAD", "AiohttpBackend", "Backend", "HttpxBackend",
           "ResponseTooLarge", "StreamResponse", "TransportFailure", "TransportTimeout"]

DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""The most one answer may hold, decompressed: far above any real Gemini answer (a whole
65k-token output is well under a megabyte), far below what would hurt a server's memory."""

# The encodings `_Body` inflates, and so the only ones keysched asks for.
_ACCEPT_ENCODING = "gzip, deflate"

# Requests in flight per httpx client that keysched makes itself.  Measured side by side at 16
# and 64 concurrent (benchmarks/bench_client.py's server): clients of 2, 4 and 8 served about
# alike, clients of 16 lost half of that, and one client of 64 cost 3.6x the CPU per request.
SHARD_LOAD = 4


class TransportTimeout(Exception):
    """No (complete) answer arrived within the attempt's timeout."""


class TransportFailure(Exception):
    """The connection failed before or while the answer arrived."""


class ResponseTooLarge(Exception):
    """The answer holds more than ``max_response_bytes`` (decompressed); reading stopped there."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        super().__init__(f"the answer exceeds max_response_bytes ({cap} bytes)")


class _Body:
    """One answer's body as it arrives: inflated if it is compressed, and counted against the cap.

    `take` turns each piece of raw bytes into the answer's bytes; `end` flushes the rest.  Both
    raise `ResponseTooLarge` as soon as the answer passes `cap`, so that neither the bytes kept
    nor the bytes inflated ever exceed it by more than one piece's worth of raw input.
    """

    __slots__ = ("_inflater", "_room", "cap", "deflate")

    def __init__(self, headers: Mapping[str, str], cap: int) -> None:
        self.cap = cap
        self._room = cap
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise ResponseTooLarge(cap)  # refused before a byte of the body is read
        encoding = headers.get("content-encoding")
        self._inflater: Any = None
        self.deflate = False
        if encoding is not None:
            encoding = encoding.strip().lower()
            if encoding in ("gzip", "x-gzip"):
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                self._inflater = zlib.decompressobj(zlib.MAX_WBITS)
                self.deflate = True
            elif encoding not in ("", "identity"):
                raise TransportFailure(f"the answer has an encoding keysched did not ask for "
                                       f"({encoding[:20]!r})")

    def take(self, data: bytes) -> bytes:
        """The answer's bytes carried by `data`, the next raw bytes of the body."""
        inflater = self._inflater
        if inflater is not None:
            data = self._inflate(inflater, data)
        self._room -= len(data)
        if self._room < 0:
            raise ResponseTooLarge(self.cap)
        return data

    def end(self) -> bytes:
        """What the inflater still holds at the end of the body."""
        inflater = self._inflater
        if inflater is None:
            return b""
        try:
            rest: bytes = inflater.flush()
        except zlib.error:
            raise TransportFailure("the answer's compressed body is corrupt") from None
        self._room -= len(rest)
        if self._room < 0:
            raise ResponseTooLarge(self.cap)
        return rest

    def _inflate(self, inflater: Any, data: bytes) -> bytes:
        # At most one byte past the room: a bomb is caught after inflating `cap + 1` bytes, not
        # all of it.
        try:
            out: bytes = inflater.decompress(data, self._room + 1)
        except zlib.error:
            if not self.deflate:
                raise TransportFailure("the answer's compressed body is corrupt") from None
            # "deflate" is sent both zlib-wrapped (as the RFC says) and raw (as some servers do).
            self.deflate = False
            self._inflater = inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inflate(inflater, data)
        self.deflate = False  # the first piece decided which form it is
        return out


class StreamResponse(Protocol):
    """An answer being streamed."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def iter_bytes(self) -> AsyncGenerator[bytes, None]: ...


class Backend(Protocol):
    """What `KeyedClient` needs from an HTTP library."""

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """One key's request headers as this backend sends them (built once per key)."""
        ...

    async def post(self, url: str, headers: Mapping[str, str], payload: bytes,
                   timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        """POST and read the whole answer; `timeout` bounds the whole exchange."""
        ...

    def stream(self, url: str, headers: Mapping[str, str], payload: bytes,
               timeout: float) -> contextlib.AbstractAsyncContextManager[StreamResponse]:
        """POST and stream the answer; `timeout` bounds the connection and each read."""
        ...

    async def aclose(self) -> None: ...


class _HttpxStream:
    def __init__(self, response: httpx.Response, cap: int) -> None:
        self._response = response
        self._cap = cap
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        with _httpx_errors():
            return await _read_httpx(self._response, self._cap)

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        with _httpx_errors():
            response = self._response
            if response.is_stream_consumed:  # built whole: see `_read_httpx`
                yield _checked(response.content, self._cap)
                return
            async for data in _inflated(response.aiter_raw(), self.headers, self._cap):
                yield data


async def _inflated(raw: AsyncIterator[bytes], headers: Mapping[str, str],
                    cap: int) -> AsyncIterator[bytes]:
    """The answer's bytes as they arrive, from its raw bytes (see `_Body`)."""
    body = _Body(headers, cap)
    async for data in raw:
        data = body.take(data)
        if data:
            yield data
    rest = body.end()
    if rest:
        yield rest


def _checked(content: bytes, cap: int) -> bytes:
    if len(content) > cap:
        raise ResponseTooLarge(cap)
    return content


async def _read_httpx(response: httpx.Response, cap: int) -> bytes:
    """The whole body of `response`, inflated and capped (its raw bytes: see `_Body`)."""
    if response.is_stream_consumed:
        # A response built whole (`httpx.MockTransport` and the like) that httpx has already
        # read and decoded: only its size is left to check.
        return _checked(response.content, cap)
    body = _Body(response.headers, cap)
    parts = [body.take(data) async for data in response.aiter_raw()]
    parts.append(body.end())
    return b"".join(parts)


@contextlib.contextmanager
def _httpx_errors() -> Any:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransportTimeout(type(exc).__name__) from None
    except httpx.RequestError as exc:  # connect, read, write, protocol and decoding errors
        raise TransportFailure(type(exc).__name__) from None


class _Shard:
    """One httpx client and how many requests it carries now."""

    __slots__ = ("client", "load")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.load = 0


class HttpxBackend:
    """Send through httpx: the caller's client, or clients we make (and close in `aclose`).

    Args:
        client: the caller's own `httpx.AsyncClient`, used as given and never closed.
        transport: with no `client`, the caller's httpx transport; one client of ours wraps it
            (a transport is one pool, so spreading over several clients would not help it).
        max_response_bytes: the most one answer may hold, decompressed.
        shard_load: with neither, requests in flight per client of ours before another is made.
    """

    def __init__(self, client: httpx.AsyncClient | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 shard_load: int = SHARD_LOAD) -> None:
        self._owned = client is None
        self._transport = transport
        self._cap = max_response_bytes
        # One client carries everything when it is the caller's or wraps the caller's transport.
        self._shard_load = shard_load if client is None and transport is None else math.inf
        self._shards = [_Shard(client)] if client is not None else []

    def _new_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        return httpx.AsyncClient(transport=self._transport, limits=limits, follow_redirects=False)

    @contextlib.contextmanager
    def _client(self) -> Iterator[httpx.AsyncClient]:
        """The first client with room (so connections are reused), a new one if none has."""
        for shard in self._shards:
            if shard.load < self._shard_load:
                break
        else:
            shard = _Shard(self._new_client())
            self._shards.append(shard)
        shard.load += 1
        try:
            yield shard.client
        finally:
            shard.load -= 1

    @property
    def client(self) -> httpx.AsyncClient:
        """An httpx client it sends through (`PoolTransport` passes requests through it): the
        caller's, or the first of ours (pass-through requests are rare; they count toward no
        client's load)."""
        if not self._shards:
            self._shards.append(_Shard(self._new_client()))
        return self._shards[0].client

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        return {**headers, "accept-encoding": _ACCEPT_ENCODING}

    async def post(self, url: str, headers: Mapping[str, str], payload: bytes,
                   timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        import asyncio

        # httpx's timeouts bound each phase, not the whole exchange (a server that drips bytes
        # would outlast them): the outer bound does that.  (Each phase gets the same bound, so
        # a transport sees the attempt's timeout in its request's extensions.)
        try:
            async with asyncio.timeout(timeout):
                with _httpx_errors(), self._client() as client:
                    request = client.build_request("POST", url, content=payload, headers=headers,
                                                   timeout=timeout)
                    response = await client.send(request, stream=True)
                    try:
                        body = await _read_httpx(response, self._cap)
                    finally:
                        await response.aclose()
        except TimeoutError:
            raise TransportTimeout("TimeoutError") from None
        return response.status_code, response.headers, body

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: Mapping[str, str], payload: bytes,
                     timeout: float) -> AsyncIterator[StreamResponse]:
        with self._client() as client:  # the stream holds its client's connection throughout
            with _httpx_errors():
                request = client.stream("POST", url, content=payload, headers=headers,
                                        timeout=timeout)
                response = await request.__aenter__()
            try:
                yield _HttpxStream(response, self._cap)
            finally:
                with _httpx_errors():
                    await request.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._owned:
            shards, self._shards = self._shards, []
            for shard in shards:
                await shard.client.aclose()


class _AiohttpStream:
    def __init__(self, response: Any, cap: int) -> None:
        self._response = response
        self._cap = cap
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        with _aiohttp_errors():
            return await _read_aiohttp(self._response, self._cap)

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        with _aiohttp_errors():
            async for data in _inflated(self._response.content.iter_any(), self.headers, self._cap):
                yield data


async def _read_aiohttp(response: Any, cap: int) -> bytes:
    """The whole body of `response`, inflated and capped (its raw bytes: see `_Body`)."""
    body = _Body(response.headers, cap)
    content = response.content
    parts = []
    while data := await content.readany():
        parts.append(body.take(data))
    parts.append(body.end())
    return b"".join(parts)


# A speed trick, kept for bench_client's target (default KeyedClient >= 0.9x raw aiohttp) and
# its measure of keysched's own CPU per request (benchmarks/profile_client.py): building
# aiohttp's ClientTimeout (a frozen class) for every attempt was a sizeable part of what keysched
# adds to a request, and an attempt's bound is the client's timeout until a deadline nears.  The
# reference is ``ClientTimeout(total=seconds)``; tests/test_transport.py holds the two equal.
@functools.lru_cache(maxsize=64)
def _total_timeout(seconds: float) -> Any:
    """aiohttp's timeout bounding a whole exchange by `seconds`: one timer, as for httpx (see
    `HttpxBackend.post`), not aiohttp's timer per read."""
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


@contextlib.contextmanager
def _aiohttp_errors() -> Any:
    import aiohttp

    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise TransportTimeout(type(exc).__name__) from None
    except aiohttp.ClientError as exc:
        raise TransportFailure(type(exc).__name__) from None


class AiohttpBackend:
    """Send through one `aiohttp.ClientSession`, created on first use inside the event loop."""

    def __init__(self, *, max_connections: int = 1000,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        try:
            import aiohttp
        except ImportError as exc:  # turned into a ConfigurationError by the client
            raise ImportError("the aiohttp backend needs: pip install 'keysched[fast]'") from exc
        self._aiohttp = aiohttp
        self._max = max_connections
        self._cap = max_response_bytes
        self._session: Any = None

    def _get_session(self) -> Any:
        if self._session is None:
            aiohttp = self._aiohttp
            # No per-host limit (aiohttp's default): all requests go to one host anyway, so the
            # total limit is the one that counts.
            connector = aiohttp.TCPConnector(limit=self._max)
            # Proxies from the environment (HTTP(S)_PROXY, NO_PROXY), as httpx, the other
            # backend, honours them: a user behind a proxy must not lose it because aiohttp is
            # installed.  Only when one is set: aiohttp then reads the environment per request.
            import urllib.request

            trust_env = bool(urllib.request.getproxies())
            # No cookies: an API client, not a browser.  No automatic decompression: aiohttp
            # would inflate a body without a bound; `_Body` inflates it within the cap.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  trust_env=trust_env,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        return {**headers, "accept-encoding": _ACCEPT_ENCODING}

    async def post(self, url: str, headers: Mapping[str, str], payload: bytes,
                   timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        session = self._get_session()
        aiohttp = self._aiohttp
        try:
            async with session.post(url, data=payload, headers=headers, allow_redirects=False,
                                    timeout=_total_timeout(timeout)) as response:
                body = await _read_aiohttp(response, self._cap)
                return response.status, response.headers, body
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise TransportFailure(type(exc).__name__) from None

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: Mapping[str, str], payload: bytes,
                     timeout: float) -> AsyncIterator[StreamResponse]:
        session = self._get_session()
        # A stream may run long: bound getting a connection (a free one from the pool, or a new
        # one) and each read, not the whole answer.
        limits = self._aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        with _aiohttp_errors():
            request = session.post(url, data=payload, headers=headers, allow_redirects=False,
                                   timeout=limits)
            response = await request.__aenter__()
        try:
            yield _AiohttpStream(response, self._cap)
        finally:
            await request.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
