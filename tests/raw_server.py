"""A misbehaving HTTP/1.1 server on loopback, for what only the wire can show: answers dripped
byte by byte, held mid-body, framed in every way, reset, or compressed.

Each request is answered by ``handle(request, writer)``; a handler that returns True keeps the
connection for the next request.  `open_connections()` counts the connections the client has
not closed yet, seen from the server's side: what "no socket stays open" is measured by.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from keysched import KeyedClient, PoolSnapshot, StreamInterruptedError

FLASH = "gemini-2.5-flash"
BACKENDS = pytest.mark.parametrize("fast", [False, True], ids=["httpx", "aiohttp"])
"""Run a test on both of KeyedClient's backends: httpx, and aiohttp (``fast=True``)."""

Handle = Callable[["Request", asyncio.StreamWriter], Awaitable[bool | None]]


class Request:
    """One request as the server read it (header names lowercased)."""

    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.line = lines[0]
        self.headers = {name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines[1:] if line)}
        self.body = body

    @property
    def key(self) -> str:
        return self.headers.get("x-goog-api-key", "")

    @property
    def prompt(self) -> str:
        text: str = json.loads(self.body)["contents"][0]["parts"][0]["text"]
        return text


class RawServer:
    """``async with RawServer(handle) as server:`` serves on ``server.url`` until the block ends."""

    def __init__(self, handle: Handle) -> None:
        self._handle = handle
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.requests: list[Request] = []
        self.arrived = asyncio.Event()  # a request has been read
        self._counted = asyncio.Condition()
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._connections):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def open_connections(self) -> int:
        """Connections the client has neither closed nor reset (nor the server closed)."""
        return sum(1 for writer, reader in self._connections.items()
                   if not (reader.at_eof() or reader.exception() is not None
                           or writer.transport.is_closing()))

    async def until_closed(self, guard: float = 5.0) -> int:
        """Wait (at most `guard` seconds) for the client to close every connection; return how
        many are still open."""
        loop = asyncio.get_running_loop()
        end = loop.time() + guard
        # Polled: a client's FIN or RST reaches the server's streams with no event to await.
        while self.open_connections() and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return self.open_connections()

    async def until_requests(self, count: int) -> None:
        """Wait until `count` requests have been read."""
        async with self._counted:
            await self._counted.wait_for(lambda: len(self.requests) >= count)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._connections[writer] = reader
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = Request(head, b"")
                request.body = await reader.readexactly(
                    int(request.headers.get("content-length", "0")))
                self.requests.append(request)
                self.arrived.set()
                async with self._counted:
                    self._counted.notify_all()
                if not await self._handle(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def drip(writer: asyncio.StreamWriter, piece: bytes, every: float = 0.02,
               limit: float = 30.0) -> None:
    """Write `piece` every `every` seconds until the client goes (or `limit` seconds pass)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(every)


async def hold(writer: asyncio.StreamWriter, limit: float = 30.0) -> None:
    """Keep the connection open, sending nothing more, until the client goes."""
    await asyncio.sleep(limit)


def reset(writer: asyncio.StreamWriter) -> None:
    """Reset the connection (TCP RST): what a crashed server or a proxy's timeout does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def head(status: int = 200, content_type: str = "text/event-stream", **fields: str | int) -> bytes:
    """A response head; `fields` become headers (``content_length=3`` -> content-length: 3)."""
    reason = {200: "OK", 500: "Internal Server Error"}.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_response(status: int, body: bytes, **fields: str | int) -> bytes:
    """A whole JSON response: its head (with its length and `fields` as headers) and `body`."""
    return head(status, "application/json", content_length=len(body), **fields) + body


def event(text: str, finish: str | None = None) -> bytes:
    """One SSE event carrying one chunk of a streamed answer."""
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                 "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return b"data: " + json.dumps({"candidates": [candidate]}).encode() + b"\r\n\r\n"


def answer(text: str) -> bytes:
    """A whole generateContent answer."""
    return json.dumps({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                                       "finishReason": "STOP", "index": 0}]}).encode()


def gzipped(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


class Interrupted:
    """What `interrupted_stream` saw: the texts received, the error, the pool and the server."""

    def __init__(self, texts: list[str], error: StreamInterruptedError, snapshot: PoolSnapshot,
                 server: RawServer) -> None:
        self.texts = texts
        self.error = error
        self.snapshot = snapshot
        self.server = server


async def interrupted_stream(handle: Handle, fast: bool, guard: float,
                             **options: Any) -> Interrupted:
    """Stream from a server answering with `handle` (two keys; `options` for the client) and
    expect `StreamInterruptedError` within `guard` seconds."""
    texts: list[str] = []
    async with RawServer(handle) as server:
        async with KeyedClient(keys=["AIzaONE", "AIzaTWO"], models=[FLASH],
                               base_url=server.url, fast=fast, **options) as client:

            async def consume() -> None:
                async for chunk in client.stream("hi"):
                    texts.append(chunk.text)

            with pytest.raises(StreamInterruptedError) as caught:
                await asyncio.wait_for(consume(), guard)
            snapshot = client.snapshot()
    return Interrupted(texts, caught.value, snapshot, server)
