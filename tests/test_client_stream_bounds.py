"""`stream()` before its first chunk is bounded by `timeout` and by `deadline`, whatever a server
sends that is not a chunk, and a stream is complete only when its last chunk says so; over real
loopback HTTP, on both backends.

No assertion here is about wall-clock time: each server misbehaves for 30 s, far longer than
the bounds under test, so a call that was not bounded fails the `asyncio.wait_for` guard.

Every test runs on a `virtual_loop.VirtualTimeLoop`, the client's clock being the loop's
(`virtual_loop.clock`): the server's drips, the timeouts, the deadlines and the guard are all virtual
seconds.  On the wall clock, a busy machine spent the 0.5 s timeout of a second attempt before
its request had even reached the server (two timeouts, one request seen).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import virtual_loop
from raw_server import (
    BACKENDS,
    FLASH,
    RawServer,
    Request,
    drip,
    event,
    head,
    hold,
    interrupted_stream,
    reset,
)

from keysched import (
    AttemptsExhaustedError,
    CapacityError,
    KeyedClient,
    RetryPolicy,
    StreamChunk,
    StreamInterruptedError,
)

GUARD = 15.0  # virtual seconds: only "the call ended at all"

async def unfinished_event(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(head() + b'data: {"candidates": [{"content": ')
    await drip(writer, b" ")  # whitespace: the event never completes


async def keep_alive_comments(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(head())
    await drip(writer, b": keep-alive\r\n\r\n")


async def dripping_error_body(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(head(500, "application/json", content_length=1_000_000) + b'{"error": ')
    await drip(writer, b" ")


async def dripping_json_body(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(head(200, "application/json", transfer_encoding="chunked"))
    await drip(writer, b"1\r\n \r\n")  # a JSON body, not SSE, one blank byte at a time


async def silent_after_head(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(head())
    await hold(writer)


MISBEHAVING = pytest.mark.parametrize("handler", [
    unfinished_event, keep_alive_comments, dripping_error_body, dripping_json_body,
    silent_after_head], ids=lambda handler: handler.__name__)


async def _stream(client: KeyedClient, **bounds: float) -> list[StreamChunk]:
    return [chunk async for chunk in client.stream("hi", **bounds)]


@BACKENDS
@MISBEHAVING
@virtual_loop.on_virtual_time
async def test_timeout_bounds_the_wait_for_the_first_chunk(
        fast: bool, handler: Callable[[Request, asyncio.StreamWriter], Awaitable[None]]) -> None:
    """With a far deadline, each attempt ends after `timeout` without its first chunk, however
    busy the server keeps the connection; the call ends when its attempts are spent."""
    async with RawServer(handler) as server:
        retry = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_cap=0.01, deadline=120.0)
        async with KeyedClient(keys=["AIzaONE"], models=[FLASH], base_url=server.url,
                               clock=virtual_loop.clock(), fast=fast, timeout=0.5, retry=retry) as client:
            with pytest.raises(AttemptsExhaustedError) as caught:
                await asyncio.wait_for(_stream(client), GUARD)
    outcomes = [attempt.outcome.value for attempt in caught.value.attempts]
    assert outcomes == ["timeout", "timeout"]
    assert len(server.requests) == 2


@BACKENDS
@MISBEHAVING
@virtual_loop.on_virtual_time
async def test_the_deadline_bounds_a_stream_until_its_first_chunk(
        fast: bool, handler: Callable[[Request, asyncio.StreamWriter], Awaitable[None]]) -> None:
    """With a long timeout, the call's deadline ends the first attempt and the call."""
    async with RawServer(handler) as server:
        async with KeyedClient(keys=["AIzaONE"], models=[FLASH], base_url=server.url,
                               clock=virtual_loop.clock(), fast=fast, timeout=60.0) as client:
            with pytest.raises(CapacityError) as caught:
                await asyncio.wait_for(_stream(client, deadline=0.3), GUARD)
    [attempt] = caught.value.attempts
    assert attempt.outcome.value == "timeout"


@BACKENDS
@virtual_loop.on_virtual_time
async def test_once_started_a_stream_is_bounded_per_chunk_not_by_the_deadline(fast: bool) -> None:
    """Chunks 1.2 s apart outlast a 2 s deadline (it bounds only the start), each within the
    5 s timeout; keep-alive comments between chunks do not count as chunks."""

    async def slow_chunks(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head())
        for i, finish in enumerate([None, None, "STOP"]):
            writer.write(event(f"{i} ", finish))
            await writer.drain()
            if finish is None:
                await asyncio.sleep(0.6)
                writer.write(b": keep-alive\r\n\r\n")
                await asyncio.sleep(0.6)

    async with RawServer(slow_chunks) as server:
        async with KeyedClient(keys=["AIzaONE"], models=[FLASH], base_url=server.url,
                               clock=virtual_loop.clock(), fast=fast, timeout=5.0) as client:
            chunks = await asyncio.wait_for(_stream(client, deadline=2.0), GUARD)
    assert [chunk.text for chunk in chunks] == ["0 ", "1 ", "2 "]


@BACKENDS
@virtual_loop.on_virtual_time
async def test_keep_alive_comments_after_a_chunk_do_not_hold_the_stream(fast: bool) -> None:
    """After a chunk, `timeout` bounds the wait for the next chunk, not for the next byte (a
    comment every 20 ms, a 1 s timeout)."""

    async def chunk_then_comments(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head() + event("first "))
        await drip(writer, b": keep-alive\r\n\r\n")

    async with RawServer(chunk_then_comments) as server:
        async with KeyedClient(keys=["AIzaONE"], models=[FLASH], base_url=server.url,
                               clock=virtual_loop.clock(), fast=fast, timeout=1.0) as client:
            with pytest.raises(StreamInterruptedError) as caught:
                await asyncio.wait_for(_stream(client), GUARD)
    assert caught.value.chunks_delivered == 1
    assert caught.value.attempts[-1].outcome.value == "timeout"


# ----------------------------------------------------------------- complete only with finishReason

TWO_CHUNKS = event("Hello ") + event("world")
FINISHED = event("Hello ") + event("world", "STOP")


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


def _framed(framing: str, body: bytes, *, complete: bool) -> bytes:
    """`body` in `framing`: a complete HTTP body, or one whose end never comes (the caller then
    resets the connection)."""
    if framing == "content-length":
        declared = len(body) if complete else len(body) + 100
        return head(content_length=declared) + body
    if framing == "chunked":
        return head(transfer_encoding="chunked") + _chunked(body) + (b"0\r\n\r\n" if complete
                                                                     else b"")
    return head(connection="close") + body  # close-delimited: the body ends with the connection


FRAMINGS = pytest.mark.parametrize("framing", ["content-length", "chunked", "close-delimited"])


def _serving(payload: bytes, *, then_reset: bool) -> Callable[[Request, asyncio.StreamWriter],
                                                                 Awaitable[None]]:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        await asyncio.sleep(0.05)  # let the client read the chunks before the end comes
        if then_reset:
            reset(writer)

    return handle


@BACKENDS
@FRAMINGS
@pytest.mark.parametrize("ending", ["clean", "reset"])
@virtual_loop.on_virtual_time
async def test_a_stream_without_its_last_chunk_is_interrupted(fast: bool, framing: str,
                                                              ending: str) -> None:
    """Two chunks without a finishReason, then the body ends cleanly or the connection is
    reset: the stream was cut short, whatever the framing and the backend."""
    payload = _framed(framing, TWO_CHUNKS, complete=ending == "clean")
    seen = await interrupted_stream(_serving(payload, then_reset=ending == "reset"), fast, GUARD,
                                    timeout=5.0, clock=virtual_loop.clock())
    assert seen.texts == ["Hello ", "world"]
    assert seen.error.chunks_delivered == 2
    assert len(seen.server.requests) == 1  # chunks were delivered: never replayed elsewhere
    snap = seen.snapshot
    assert (snap.requests_finished, snap.requests_failed) == (0, 1)


@BACKENDS
@FRAMINGS
@pytest.mark.parametrize("ending", ["clean", "reset"])
@virtual_loop.on_virtual_time
async def test_a_stream_with_its_last_chunk_is_complete(fast: bool, framing: str,
                                                        ending: str) -> None:
    """The last chunk carries a finishReason: the answer is whole, even if the connection is
    reset before the HTTP body's own end."""
    payload = _framed(framing, FINISHED, complete=ending == "clean")
    async with RawServer(_serving(payload, then_reset=ending == "reset")) as server:
        async with KeyedClient(keys=["AIzaONE"], models=[FLASH], base_url=server.url,
                               clock=virtual_loop.clock(), fast=fast, timeout=5.0) as client:
            chunks = await asyncio.wait_for(_stream(client), GUARD)
            snap = client.snapshot()
    assert [(chunk.text, chunk.finish_reason) for chunk in chunks] == [
        ("Hello ", None), ("world", "STOP")]
    assert (snap.requests_finished, snap.requests_failed) == (1, 0)


@BACKENDS
@virtual_loop.on_virtual_time
async def test_a_stream_cut_before_its_first_chunk_fails_over(fast: bool) -> None:
    """A reset before any chunk is not an interruption: the call moves to the next key."""

    async def first_resets(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.key == "AIzaONE":
            writer.write(head(connection="close") + b": nothing yet\r\n\r\n")
            await writer.drain()
            reset(writer)
        else:
            writer.write(head(content_length=len(FINISHED)) + FINISHED)

    async with RawServer(first_resets) as server:
        async with KeyedClient(keys=["AIzaONE", "AIzaTWO"], models=[FLASH],
                               base_url=server.url, fast=fast, timeout=5.0,
                               clock=virtual_loop.clock(),
                               retry=RetryPolicy(backoff_base=0.01, backoff_cap=0.01)) as client:
            chunks = await asyncio.wait_for(_stream(client), GUARD)
    assert [chunk.key for chunk in chunks] == ["key#2", "key#2"]

