"""The HTTP seam of `KeyedClient`: one small interface, an httpx backend and an aiohttp backend.

The client needs exactly two things from HTTP: POST a body and read the whole answer, or POST
and read the answer's bytes as they arrive.  Each backend maps its library's failures to two
exceptions, `TransportTimeout` and `TransportFailure`, whose messages name only the kind of
failure (never a URL, a header or a key).

- `HttpxBackend` (the default) sends through an `httpx.AsyncClient`: the caller's own client
  or transport plugs in here, and `httpx.MockTransport` / `httpx.ASGITransport` work as usual.
- `AiohttpBackend` (``KeyedClient(fast=True)``, ``pip install keysched[fast]``) talks to aiohttp
  directly.  httpx's own connection pool collapses under high concurrency (encode/httpx#3215),
  and even over an aiohttp-backed httpx transport every request still builds httpx's URL,
  header and response models; going straight to aiohttp removes both costs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import httpx

__all__ = ["AiohttpBackend", "Backend", "HttpxBackend", "StreamResponse", "TransportFailure",
           "TransportTimeout"]


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


class HttpxBackend:
    """Send through an `httpx.AsyncClient` (closed by `aclose` only if we made it)."""

    def __init__(self, client: httpx.AsyncClient, *, owned: bool) -> None:
        self._client = client
        self._owned = owned

    @property
    def client(self) -> httpx.AsyncClient:
        """The httpx client it sends through (`PoolTransport` passes requests through it)."""
        return self._client

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
                with _httpx_errors():
                    response = await self._client.post(url, content=payload, headers=headers,
                                                       timeout=timeout)
        except TimeoutError:
            raise TransportTimeout("TimeoutError") from None
        return response.status_code, response.headers, response.content

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: Mapping[str, str], payload: bytes,
                     timeout: float) -> AsyncIterator[StreamResponse]:
        with _httpx_errors():
            request = self._client.stream("POST", url, content=payload, headers=headers,
                                          timeout=timeout)
            response = await request.__aenter__()
        try:
            yield _HttpxStream(response)
        finally:
            with _httpx_errors():
                await request.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


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
            # No automatic decompression surprises, no cookies: an API client, not a browser.
            self._session = aiohttp.ClientSession(connector=connector,
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
