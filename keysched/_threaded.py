"""`PoolThread`: one pool on a private event-loop thread, for sync code and for any event loop.

Theory of operation: most SDK code is synchronous (``client.models.generate_content``), and
google-genai's ``Client`` has a sync surface and an async one (``.aio``) that should share one
pool.  The core is not thread-safe and a `KeyedClient` lives on one event loop, so the pool runs
on a loop of its own, in a daemon thread.  `PoolThread.transport()` is an `httpx.BaseTransport`
whose ``handle_request`` hands the request to that loop's `PoolTransport` and blocks for the
answer; `PoolThread.async_transport()` does the same from any other event loop without
blocking it.  Only the loop thread ever touches the pool, so any number of threads may send at
once.  A streamed answer is read from the pool's loop one piece at a time.

Decisions where the issue was silent:

- Closing: `PoolThread.close()` ends open calls at once, those sending an attempt too (their
  callers get `UsageError`), closes the `KeyedClient` and stops the thread.  A transport made
  with ``owner=True`` (as `genai_client` makes them) holds the pool open; the pool closes when
  the last such transport closes.
- Calling the pool from its own thread (a callback run on the pool's loop) would deadlock: it
  is a `UsageError` instead.
- Cancelling an async caller cancels its request on the pool's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from keysched._config import Key
from keysched._errors import UsageError
from keysched._snapshot import PoolEvent, PoolSnapshot

if TYPE_CHECKING:
    from keysched._client import KeyedClient
    from keysched._integrations import PoolTransport

__all__ = ["PoolThread", "genai_client"]

_T = TypeVar("_T")
_END = object()


class PoolThread:
    """A `KeyedClient` on a private event-loop thread.

    Args:
        keys, models: as for `KeyedClient`.
        options: any other `KeyedClient` argument (``base_url``, ``retry``, ``limits`` ...).

    Use it as ``with PoolThread(keys=[...]) as pool:``, or call `close()` when done.
    """

    def __init__(self, keys: Sequence[str | Key], models: Sequence[str] | None = None,
                 **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="keysched-pool",
                                        daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._owners = 0
        self._closing = False  # close() has begun: a cancelled call means the pool closed
        self._closed = False
        if models is not None:
            options["models"] = models

        async def make() -> KeyedClient:
            from keysched._client import KeyedClient

            return KeyedClient(keys, **options)

        try:
            self.client = self.run(make())
        except BaseException:
            self._stop()
            raise
        self._transports: dict[bool, PoolTransport] = {}

    def __repr__(self) -> str:
        return f"PoolThread({self.client!r})"

    def __enter__(self) -> PoolThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run `coroutine` on the pool's loop and wait for its result (from any other thread).

        Raises:
            UsageError: the pool was closed before the coroutine ended.
        """
        future = self.submit(coroutine)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._closing:
                raise UsageError("the pool was closed while the call was open") from None
            raise

    def submit(self, coroutine: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Start `coroutine` on the pool's loop; its future (cancel it to cancel the coroutine)."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise UsageError("a PoolThread cannot be waited on from its own thread")
        if self._closed:
            coroutine.close()
            raise UsageError("the pool is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def transport(self, *, fallback: bool = True, owner: bool = False) -> httpx.BaseTransport:
        """A sync httpx transport over the pool, safe to use from many threads at once.

        Args:
            fallback: as for `KeyedClient.transport`.
            owner: closing the transport closes the pool once no other owner is open.
        """
        return _SyncTransport(self, self._inner(fallback), self._own(owner))

    def async_transport(self, *, fallback: bool = True,
                        owner: bool = False) -> httpx.AsyncBaseTransport:
        """An async httpx transport over the pool, for use on any event loop but the pool's."""
        return _HopTransport(self, self._inner(fallback), self._own(owner))

    def snapshot(self) -> PoolSnapshot:
        """`KeyedClient.snapshot`, taken on the pool's thread."""

        async def take() -> PoolSnapshot:
            return self.client.snapshot()

        return self.run(take())

    def events(self) -> list[PoolEvent]:
        """`KeyedClient.events`, taken on the pool's thread."""

        async def take() -> list[PoolEvent]:
            return self.client.events()

        return self.run(take())

    def close(self) -> None:
        """End every open call, close the client and stop the thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            async def shut() -> None:
                for transport in self._transports.values():
                    await transport.aclose()  # what it made itself (an httpx client)
                await self.client.aclose()
                # Calls still sending an attempt end now, not when their answer arrives: their
                # callers (blocked in other threads) get `UsageError` (see `run`).
                this = asyncio.current_task()
                others = [task for task in asyncio.all_tasks() if task is not this]
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

            try:
                self.run(shut())
            finally:
                self._closed = True
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join()
            self._loop.close()

    def _inner(self, fallback: bool) -> PoolTransport:
        from keysched._integrations import PoolTransport

        transport = self._transports.get(fallback)
        if transport is None:
            transport = self._transports[fallback] = PoolTransport(self.client, fallback=fallback)
        return transport

    def _own(self, owner: bool) -> bool:
        if owner:
            with self._lock:
                self._owners += 1
        return owner

    def _release(self) -> None:
        with self._lock:
            self._owners -= 1
            last = self._owners == 0
        if last:
            self.close()


class _SyncTransport(httpx.BaseTransport):
    def __init__(self, pool: PoolThread, inner: PoolTransport, owner: bool) -> None:
        self._pool = pool
        self._inner = inner
        self._owner = owner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        outgoing = httpx.Request(request.method, request.url, headers=request.headers,
                                 content=request.read(), extensions=request.extensions)
        response = self._pool.run(self._inner.handle_async_request(outgoing))
        if isinstance(response.stream, httpx.ByteStream):  # a whole answer: no hop per read
            return response
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_SyncStream(self._pool, response),
                              extensions=response.extensions)

    def close(self) -> None:
        if self._owner:
            self._owner = False
            self._pool._release()


class _HopTransport(httpx.AsyncBaseTransport):
    def __init__(self, pool: PoolThread, inner: PoolTransport, owner: bool) -> None:
        self._pool = pool
        self._inner = inner
        self._owner = owner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        outgoing = httpx.Request(request.method, request.url, headers=request.headers,
                                 content=await request.aread(), extensions=request.extensions)
        response = await _hop(self._pool, self._inner.handle_async_request(outgoing))
        if isinstance(response.stream, httpx.ByteStream):
            return response
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_HopStream(self._pool, response),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        if self._owner:
            self._owner = False
            # Closing the pool joins its thread: not on this loop's thread.
            await asyncio.to_thread(self._pool._release)


async def _hop(pool: PoolThread, coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Await `coroutine` on the pool's loop; cancelling the caller cancels it there."""
    try:
        return await asyncio.wrap_future(pool.submit(coroutine))
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if pool._closing and (task is None or not task.cancelling()):
            raise UsageError("the pool was closed while the call was open") from None
        raise


async def _next_piece(pieces: AsyncIterator[bytes]) -> Any:
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return _END


class _SyncStream(httpx.SyncByteStream):
    """A streamed answer on the pool's loop, read from another thread piece by piece."""

    def __init__(self, pool: PoolThread, response: httpx.Response) -> None:
        self._pool = pool
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        pieces = self._response.aiter_raw()
        while (piece := self._pool.run(_next_piece(pieces))) is not _END:
            yield piece

    def close(self) -> None:
        if not self._pool._closed:
            self._pool.run(self._response.aclose())


class _HopStream(httpx.AsyncByteStream):
    """A streamed answer on the pool's loop, read from another event loop piece by piece."""

    def __init__(self, pool: PoolThread, response: httpx.Response) -> None:
        self._pool = pool
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pieces = self._response.aiter_raw()
        while (piece := await _hop(self._pool, _next_piece(pieces))) is not _END:
            yield piece

    async def aclose(self) -> None:
        if not self._pool._closed:
            await _hop(self._pool, self._response.aclose())


def genai_client(keys: Sequence[str | Key], models: Sequence[str] | None = None, *,
                 fallback: bool = True, api_version: str | None = None,
                 **options: Any) -> Any:
    """A ``google.genai.Client`` whose sync and ``.aio`` calls all go through one pool.

    Args:
        keys, models: as for `KeyedClient`.
        fallback: as for `KeyedClient.transport`.
        api_version: the SDK's API version (its default if None).
        options: any other `KeyedClient` argument; ``base_url`` points both the pool and the
            SDK.

    The pool closes once both surfaces are closed (``client.close()`` and ``await
    client.aio.aclose()``, or the SDK's context managers); until then it runs on a daemon
    thread.  The SDK's own retries stay off: the pool retries.

    Raises:
        ConfigurationError: google-genai is not installed (``pip install 'keysched[sdk]'``).
    """
    try:
        from google import genai
        from google.genai import types
    except ImportError as exc:
        from keysched._errors import ConfigurationError

        raise ConfigurationError("genai_client", "google-genai is not installed: pip install "
                                 "'keysched[sdk]'") from exc
    pool = PoolThread(keys, models, **options)
    # Transports rather than httpx clients: the SDK then makes its clients around them and closes
    # them in ``close()`` / ``aclose()`` (a client handed to it would be left open).
    http_options = types.HttpOptions(
        base_url=options.get("base_url"), api_version=api_version, retry_options=None,
        client_args={"transport": pool.transport(fallback=fallback, owner=True)},
        async_client_args={"transport": pool.async_transport(fallback=fallback, owner=True)})
    # The SDK insists on a key; the pool replaces it on every request.
    return genai.Client(api_key="keysched-pool", http_options=http_options)
