"""A small HTTP/1.1 server for ASGI apps, on asyncio streams and h11, bound to loopback.

Why not uvicorn: the fake Gemini server must misbehave on purpose, resetting a connection before
any response and cutting a chunked stream midway, and with h11 every byte on the socket is ours.
h11 is already installed (httpx depends on it through httpcore); the ``sim`` extra names it.

Theory of operation: one task per connection runs h11's server state machine.  It reads a
request and its whole body, calls the app with a ``receive`` that hands the body over once, and
translates the app's ``send`` messages: a response with a single body part gets a
``content-length``, one sent in parts is chunked and each part is flushed as it comes, so SSE
events reach the client at the pace the app sleeps.  After a complete exchange the connection is
reused (keep-alive) until the client closes it.  If the app raises `SimulatedDisconnect`, the
socket is closed with ``SO_LINGER`` 0, so the client sees a TCP reset, whether or not part of
the response was already sent.  Any other exception gives a plain 500 if nothing was sent yet,
else the same reset.

`SimServer` runs inside the caller's event loop (``async with``) or in a background thread with
its own loop (``with``), for synchronous code and for clients that block.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import struct
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any

import h11
import httpx

__all__ = ["ASGIApp", "SimServer", "SimulatedDisconnect"]

Message = MutableMapping[str, Any]
ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]


class SimulatedDisconnect(httpx.ReadError):
    """Raised by an app to drop the connection (a reset, a hang that ends, a cut stream).

    A subclass of `httpx.ReadError` on purpose: in-process, through `httpx.ASGITransport`, the
    exception reaches the client as the network error a real socket would have produced.
    """


_READ_SIZE = 65_536


class _Exchange:
    """One request/response on a connection: the app's ``send`` and ``receive``."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, body: bytes) -> None:
        self.conn = conn
        self.writer = writer
        self.body: bytes | None = body
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.sent_head = False
        self.finished = False
        self.done = asyncio.Event()

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.done.wait()
        return {"type": "http.disconnect"}

    def _write(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            return
        if message["type"] != "http.response.body" or self.finished:
            return
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self.sent_head:
            headers = [*self.headers, (b"server", b"keysched-sim")]
            if not more:
                headers.append((b"content-length", str(len(body)).encode()))
            self._write(h11.Response(status_code=self.status, headers=headers,
                                     reason=_reason(self.status)))
            self.sent_head = True
        if body:
            self._write(h11.Data(data=body))
        if not more:
            self._write(h11.EndOfMessage())
            self.finished = True
            self.done.set()
        await self.writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN: what a crashed or cut-off server looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class SimServer:
    """An HTTP/1.1 server for one ASGI app on `host` (loopback by default) and `port`.

    ``port=0`` picks a free port; read `port` / `base_url` once started.  Use it as
    ``async with SimServer(app) as server:`` in a running loop, or ``with SimServer(app) as
    server:`` to run it in a background thread.
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *,
                 backlog: int = 1024) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()  # connections their handler has not closed
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connections = 0
        """Connections accepted so far (tests use it to see keep-alive at work)."""

    @property
    def port(self) -> int:
        """The port it listens on (the chosen one when started with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        """``http://host:port``, the base URL to give a client."""
        return f"http://{self.host}:{self.port}"

    # -- asyncio ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening in the running loop."""
        self._server = await asyncio.start_server(self._accept, self.host, self._port,
                                                  backlog=self._backlog)

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):  # a handler cancelled before it first ran
            _reset(writer)
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    # -- background thread ---------------------------------------------------------------------

    def start_in_thread(self, timeout: float = 10.0) -> SimServer:
        """Run the server in a daemon thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # handed to the caller below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.aclose())
                loop.close()

        self._thread = threading.Thread(target=run, name="sim-http-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the server thread did not start in time")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop a server started with `start_in_thread` and wait for its thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> SimServer:
        return self.start_in_thread()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- one connection -------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection came in: start its handler.  Both are known at once, not when the
        handler first runs, so `aclose` ends a connection accepted just as it closes (such a
        handler was left unstarted when the loop ended: "coroutine never awaited" and an
        unclosed transport, seen on a busy machine)."""
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        reset = False
        try:
            while True:
                event = await self._next(conn, reader)
                if not isinstance(event, h11.Request):
                    break  # ConnectionClosed, or the client went away mid-request
                body = bytearray()
                while True:
                    part = await self._next(conn, reader)
                    if isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                reset = not await self._exchange(conn, writer, event, bytes(body))
                if reset or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, OSError):
            pass
        except asyncio.CancelledError:
            # `aclose` cancels open connections.  Ending normally matters: on Python 3.11 the
            # stream protocol's done-callback calls `task.exception()`, which raises for a
            # cancelled task and logs a spurious "Unhandled exception".
            reset = True
        finally:
            self._writers.discard(writer)
            if reset:
                _reset(writer)
            else:
                writer.close()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await reader.read(_READ_SIZE))

    async def _exchange(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                        request: h11.Request, body: bytes) -> bool:
        """Run the app for one request; False means "reset the connection"."""
        target = request.target
        path, _, query = target.partition(b"?")
        peer = writer.get_extra_info("peername")
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode(), "method": request.method.decode(),
            "scheme": "http", "path": _unquote(path), "raw_path": path, "query_string": query,
            "root_path": "", "headers": [(k.lower(), v) for k, v in request.headers],
            "server": (self.host, self.port), "client": peer[:2] if peer else None,
        }
        exchange = _Exchange(conn, writer, body)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except SimulatedDisconnect:
            return False
        except Exception:
            if exchange.sent_head:
                return False
            exchange.status = 500
            exchange.headers = [(b"content-type", b"text/plain")]
            await exchange.send({"type": "http.response.body", "body": b"Internal Server Error"})
            return True
        finally:
            exchange.done.set()
        if not exchange.finished:
            if not exchange.sent_head:
                exchange.status = exchange.status or 500
            await exchange.send({"type": "http.response.body", "body": b""})
        return True


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _unquote(raw: bytes) -> str:
    return urllib.parse.unquote(raw.decode("latin-1"))
