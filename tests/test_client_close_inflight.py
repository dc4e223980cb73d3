"""`aclose()` with calls in flight over real loopback HTTP, on both backends: every caller ends
with `UsageError` at once (not at its own timeout, not with the HTTP library's error), and no
connection outlives `aclose`, counted on the server's side.

The client's timeout is 60 s and the server holds every answer for 30 s: a caller that is not
ended by `aclose` fails the 10 s guard.  No other assertion is about time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from raw_server import BACKENDS, FLASH, RawServer, Request, event, head, hold

from keysched import KeyedClient, UsageError

GUARD = 10.0
EACH = 5  # calls of each kind


async def held(request: Request, writer: asyncio.StreamWriter) -> None:
    """Answer as far as the prompt says, then hold the connection."""
    if request.prompt == "mid-read":  # a generate whose answer stopped halfway
        writer.write(head(200, "application/json", content_length=1000) + b'{"candidates": ')
    elif request.prompt == "first-chunk":  # a stream that has delivered one chunk
        writer.write(head() + event("Hello "))
    elif request.prompt == "headers":  # a stream that has not started
        writer.write(head())
    await writer.drain()  # "silent": nothing at all
    await hold(writer)


async def _consume(client: KeyedClient, prompt: str, got_chunk: asyncio.Event) -> None:
    async for _ in client.stream(prompt):
        got_chunk.set()


@BACKENDS
@pytest.mark.parametrize("moment", ["at-once", "connecting", "reading"])
async def test_aclose_ends_every_call_in_flight_and_closes_every_connection(
        fast: bool, moment: str) -> None:
    """Generates and streams, closed while connecting (httpx kept those connections open and
    their callers waiting) or while reading (aiohttp left readers stuck)."""
    async with RawServer(held) as server:
        client = KeyedClient(keys=["AIzaONE", "AIzaTWO"], models=[FLASH], base_url=server.url,
                             fast=fast, timeout=60.0)
        chunk_events = [asyncio.Event() for _ in range(EACH)]
        calls: list[asyncio.Future[Any]] = []
        for i in range(EACH):
            calls.append(asyncio.ensure_future(client.generate("mid-read")))
            calls.append(asyncio.ensure_future(client.generate("silent")))
            calls.append(asyncio.ensure_future(_consume(client, "first-chunk", chunk_events[i])))
            calls.append(asyncio.ensure_future(_consume(client, "headers", asyncio.Event())))
        if moment == "connecting":
            for _ in range(3):  # the calls have opened their sockets; no request arrived yet
                await asyncio.sleep(0)
        elif moment == "reading":
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in chunk_events)), GUARD)
            await asyncio.wait_for(server.until_requests(4 * EACH), GUARD)
            assert server.open_connections() == 4 * EACH

        await asyncio.wait_for(client.aclose(), GUARD)
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), GUARD)
        still_open = await server.until_closed(GUARD)

    assert [type(result).__name__ for result in results] == ["UsageError"] * (4 * EACH)
    assert all("closed" in str(result) for result in results)
    assert still_open == 0
    snap = client.snapshot()
    assert (snap.in_flight, snap.requests_cancelled) == (0, 4 * EACH)


@BACKENDS
async def test_a_consumer_busy_with_a_chunk_gets_usage_error_on_its_next_read(fast: bool) -> None:
    """A stream's consumer in its own code when the client closes gets `UsageError` on its next
    iteration, not the HTTP library's error about a connection that is gone."""
    async with RawServer(held) as server:
        client = KeyedClient(keys=["AIzaONE"], models=[FLASH], base_url=server.url, fast=fast,
                             timeout=60.0)
        stream = client.stream("first-chunk")
        first = await asyncio.wait_for(anext(stream), GUARD)
        await client.aclose()  # while the consumer holds its chunk
        with pytest.raises(UsageError, match="closed"):
            await asyncio.wait_for(anext(stream), GUARD)
        assert await server.until_closed(GUARD) == 0
    assert first.text == "Hello "


@BACKENDS
async def test_a_call_cancelled_by_its_caller_as_the_client_closes_stays_cancelled(
        fast: bool) -> None:
    """`aclose` takes back only its own cancellation: a caller cancelled at the same time by its
    own code sees `CancelledError`, as it asked."""
    async with RawServer(held) as server:
        client = KeyedClient(keys=["AIzaONE"], models=[FLASH], base_url=server.url, fast=fast,
                             timeout=60.0)
        call = asyncio.ensure_future(client.generate("silent"))
        await asyncio.wait_for(server.arrived.wait(), GUARD)
        closing = asyncio.ensure_future(client.aclose())
        await asyncio.sleep(0)  # aclose has cancelled the attempt
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, GUARD)
        await asyncio.wait_for(closing, GUARD)
        assert await server.until_closed(GUARD) == 0
