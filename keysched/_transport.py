"""The HTTP seam of `KeyedClient`: one small interface, an httpx backend and an aiohttp backend.

The client needs exactly two things from HTTP: POST a body and read the whole answer, or POST
and read the answer's bytes as they arrive.  Each backend maps its library's failures to two
exceptions, `TransportTimeout` and `TransportFailure`, whose messages name only the kind of
failure (never a URL, a header or a key).

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
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Protocol

import httpx

__all__ = ["SHARD_LOAD", "AiohttpBackend", "Backend", "HttpxBackend", "StreamResponse",
           "TransportFailure", "TransportTimeout"]

# Requests in flight per httpx client that keysched makes itself.  Measured side by side at 16
# and 64 concurrent (benchmarks/bench_client.py's server): clients of 2, 4 and 8 served about
# alike, clients of 16 lost half of that, and one client of 64 cost 3.6x the CPU per request.
SHARD_LOAD = 4


class TransportTimeout(Exception):
    """No (complete) answer arrived within the attempt's timeout."""


class TransportFailure(Exception):
    """The connection failed before or while the answer arrived."""


class StreamResponse(Protocol):
    """An answer being streamed."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def iter_bytes(self) -> AsyncIterator[bytes]: ...


class Backend(Protocol):
    """What `KeyedClient` needs from an HTTP library."""

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """One key's request headers in the form this backend sends fastest (built once)."""
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
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        with _httpx_errors():
            return await self._response.aread()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for data in self._response.aiter_bytes():
                yield data


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
        shard_load: with neither, requests in flight per client of ours before another is made.
    """

    def __init__(self, client: httpx.AsyncClient | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 shard_load: int = SHARD_LOAD) -> None:
        self._owned = client is None
        self._transport = transport
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

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        return httpx.Headers(headers)  # merged into the client's own without re-encoding

    async def post(self, url: str, headers: Mapping[str, str], payload: bytes,
                   timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        import asyncio

        # httpx's timeouts bound each phase, not the whole exchange (a server that drips bytes
        # would outlast them): the outer bound does that.  (Each phase gets the same bound, so
        # a transport sees the attempt's timeout in its request's extensions.)
        try:
            async with asyncio.timeout(timeout):
                with _httpx_errors(), self._client() as client:
                    response = await client.post(url, content=payload, headers=headers,
                                                 timeout=timeout)
        except TimeoutError:
            raise TransportTimeout("TimeoutError") from None
        return response.status_code, response.headers, response.content

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: Mapping[str, str], payload: bytes,
                     timeout: float) -> AsyncIterator[StreamResponse]:
        with self._client() as client:  # the stream holds its client's connection throughout
            with _httpx_errors():
                request = client.stream("POST", url, content=payload, headers=headers,
                                        timeout=timeout)
                response = await request.__aenter__()
            try:
                yield _HttpxStream(response)
            finally:
                with _httpx_errors():
                    await request.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._owned:
            shards, self._shards = self._shards, []
            for shard in shards:
                await shard.client.aclose()


class _AiohttpStream:
    def __init__(self, response: Any) -> None:
        self._response = response
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        with _aiohttp_errors():
            data: bytes = await self._response.read()
            return data

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        with _aiohttp_errors():
            async for data in self._response.content.iter_any():
                yield data


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

    def __init__(self, *, max_connections: int = 1000) -> None:
        try:
            import aiohttp
        except ImportError as exc:  # turned into a ConfigurationError by the client
            raise ImportError("the aiohttp backend needs: pip install 'keysched[fast]'") from exc
        self._aiohttp = aiohttp
        self._max = max_connections
        self._session: Any = None
        self._timeouts = (TimeoutError, aiohttp.ServerTimeoutError)
        self._failures = aiohttp.ClientError
        self._limits: dict[float, Any] = {}  # ClientTimeout by seconds

    def _get_session(self) -> Any:
        if self._session is None:
            aiohttp = self._aiohttp
            # No per-host limit: at most the total limit anyway, and its bookkeeping costs
            # about 3.5k instructions per request.
            connector = aiohttp.TCPConnector(limit=self._max)
            # Proxies from the environment (HTTP(S)_PROXY, NO_PROXY), as httpx, the other
            # backend, honours them: a user behind a proxy must not lose it because aiohttp is
            # installed.  Only when one is set: aiohttp then reads the environment per request.
            import urllib.request

            trust_env = bool(urllib.request.getproxies())
            # No automatic decompression surprises, no cookies: an API client, not a browser.
            self._session = aiohttp.ClientSession(connector=connector, trust_env=trust_env,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        # aiohttp copies a dict into a CIMultiDict on every request, but not a multidict.
        from multidict import CIMultiDict, CIMultiDictProxy

        return CIMultiDictProxy(CIMultiDict(headers))

    async def post(self, url: str, headers: Mapping[str, str], payload: bytes,
                   timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        session = self._session or self._get_session()
        # One timer for the whole exchange.  Building a ClientTimeout costs a dataclass init,
        # and an attempt's timeout is the same value until the request's deadline nears.
        limits = self._limits.get(timeout)
        if limits is None:
            if len(self._limits) >= 64:
                self._limits.clear()
            limits = self._limits[timeout] = self._aiohttp.ClientTimeout(total=timeout)
        # The errors are mapped here rather than by `_aiohttp_errors`: a context manager per
        # request costs a generator and two calls.
        try:
            async with session.post(url, data=payload, headers=headers, allow_redirects=False,
                                    timeout=limits) as response:
                body: bytes = await response.read()
                return response.status, response.headers, body
        except self._timeouts as exc:
            raise TransportTimeout(type(exc).__name__) from None
        except self._failures as exc:
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
            yield _AiohttpStream(response)
        finally:
            await request.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
