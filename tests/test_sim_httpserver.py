"""The fake server's lifecycle: `aclose` ends every connection, even one accepted just as it
closes, whose handler has not run yet.  On a busy machine such a handler was left unstarted when
the test's loop ended ("coroutine 'SimServer._connection' was never awaited", an unclosed
transport), and the warnings failed whichever test ran when they were collected."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from typing import Any

from sim.httpserver import SimServer


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_aclose_ends_a_connection_whose_handler_never_ran() -> None:
    server = SimServer(_app)
    await server.start()
    ours, theirs = socket.socketpair()
    try:
        reader, writer = await asyncio.open_connection(sock=ours)
        server._accept(reader, writer)  # as the listening socket does, just before the close
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await server.aclose()  # the handler has not taken a step yet
            gc.collect()
        assert writer.transport.is_closing()
        assert server.connections == 1
        assert [str(w.message) for w in caught] == []
    finally:
        theirs.close()


async def test_a_request_is_served_and_aclose_leaves_nothing_open() -> None:
    """The ordinary path through `_accept`: a request answered, then every handler ended."""
    async with SimServer(_app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200")
    assert server._tasks == set()
    assert server._writers == set()
    writer.close()
