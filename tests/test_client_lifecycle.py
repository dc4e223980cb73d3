"""Closing the client mid-call, safety stops in streams, bodies JSON cannot carry, countTokens and
embedding quotas, and the attempt timeout against a server that drips its answer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import virtual_loop
from helpers import FLASH, Server, fixture, make_client, success
from virtual_clock import VirtualClock

from keysched import (
    CapacityError,
    KeyedClient,
    Limit,
    RetryPolicy,
    UsageError,
)

SAFETY_STREAM = b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in (
    {"candidates": [{"content": {"parts": [{"text": "Hello "}], "role": "model"}, "index": 0}]},
    {"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"},
                     "finishReason": "SAFETY", "index": 0}]},
))


class HeldServer:
    """A MockTransport handler that holds every request until `release` is set.

    `sent` is set when a request arrives; `prompts` lists the prompt of each, in order.
    """

    def __init__(self) -> None:
        self.sent = asyncio.Event()
        self.release = asyncio.Event()
        self.prompts: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.prompts.append(json.loads(request.content)["contents"][0]["parts"][0]["text"])
        self.sent.set()
        await self.release.wait()
        return success()


async def test_aclose_ends_a_call_waiting_in_backoff() -> None:
    """A call backing off when the client closes raises UsageError at once and holds nothing."""
    gate = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        gate.set()
        return fixture(500, "500_internal.json")

    client = KeyedClient(keys=["AIzaONE"], models=[FLASH], transport=httpx.MockTransport(handler),
                         retry=RetryPolicy(backoff_base=30.0, backoff_cap=30.0, jitter=0.0))
    call = asyncio.ensure_future(client.generate("hi"))
    await gate.wait()
    await asyncio.sleep(0)  # the 500 is reported; the request now backs off for 30 s
    await client.aclose()
    with pytest.raises(UsageError, match="closed"):
        await asyncio.wait_for(call, 5)
    snap = client.snapshot()
    assert (snap.in_flight, snap.waiting, snap.requests_cancelled) == (0, 0, 1)


async def test_aclose_during_an_attempt_raises_usage_error() -> None:
    """A call whose attempt is in flight when the client closes raises UsageError, not httpx's."""
    server = HeldServer()
    transport = httpx.MockTransport(server)
    async with httpx.AsyncClient(transport=transport) as http:  # ours to close, not the client's
        client = KeyedClient(keys=["AIzaONE"], models=[FLASH], http_client=http)
        call = asyncio.ensure_future(client.generate("hi"))
        await server.sent.wait()
        await client.aclose()
        server.release.set()
        with pytest.raises(UsageError, match="closed"):
            await asyncio.wait_for(call, 5)
        assert client.snapshot().in_flight == 0


async def test_aclose_before_a_waiting_call_takes_its_dispatch_raises_usage_error() -> None:
    """A call woken with a dispatch but not yet run when the client closes raises the closed
    client's UsageError (not one about an attempt no longer in flight), and sends nothing."""
    server = HeldServer()
    client = KeyedClient(keys=["AIzaONE"], models=[FLASH], max_in_flight_per_key=1,
                         transport=httpx.MockTransport(server))

    async def first_then_close() -> None:
        await client.generate("first")  # its answer freed the key: the second call's
        await client.aclose()           # dispatch is posted; close before that call runs

    first = asyncio.ensure_future(first_then_close())
    second = asyncio.ensure_future(client.generate("second"))  # waits: the one key is busy
    await server.sent.wait()
    await asyncio.sleep(0)  # the second call submits
    assert client.snapshot().waiting == 1
    server.release.set()
    with pytest.raises(UsageError, match="the client was closed"):
        await asyncio.wait_for(second, 5)
    await first
    assert server.prompts == ["first"]
    snap = client.snapshot()
    assert (snap.in_flight, snap.waiting, snap.requests_finished, snap.requests_cancelled) == (
        0, 0, 1, 1)


async def test_aclose_after_a_waiting_call_failed_still_raises_its_error() -> None:
    """A call whose deadline failed it just before the client closed (the Fail posted, its task
    not yet run) ends with that CapacityError, as its request did, not with UsageError."""
    vc = VirtualClock()
    server = HeldServer()
    closing: list[asyncio.Future[None]] = []

    async def sleep(seconds: float) -> None:
        await vc.sleep(seconds)
        # The deadline is due: the timer task pumps (posting the Fail) right after this
        # returns; the closer, woken now, runs before the failed call's task does.
        closing.append(asyncio.ensure_future(client.aclose()))

    client = KeyedClient(keys=["AIzaONE"], models=[FLASH], max_in_flight_per_key=1,
                         transport=httpx.MockTransport(server), clock=vc.clock, sleep=sleep)
    first = asyncio.ensure_future(client.generate("first"))
    await server.sent.wait()
    with pytest.raises(CapacityError):
        await asyncio.wait_for(client.generate("second", deadline=5.0), 5)
    await asyncio.gather(*closing)
    server.release.set()
    with pytest.raises(UsageError, match="closed"):
        await first
    snap = client.snapshot()
    assert (snap.requests_failed, snap.requests_cancelled) == (1, 1)


async def test_a_stream_that_ends_on_a_safety_stop_is_an_answer() -> None:
    """A safety finishReason on the last chunk ends the stream normally, as `generate` returns it."""
    vc = VirtualClock()
    server = Server(lambda request, n: httpx.Response(200, content=SAFETY_STREAM))
    async with make_client(server, vc) as client:
        chunks = [chunk async for chunk in client.stream("hi")]
        snap = client.snapshot()
    assert [c.finish_reason for c in chunks] == [None, "SAFETY"]
    assert (snap.requests_finished, snap.requests_failed) == (1, 0)
    assert len(server.requests) == 1  # not retried elsewhere: the verdict would be the same


@pytest.mark.parametrize("bad", [{"when": datetime.date(2026, 1, 1)}, {"tags": {1, 2}},
                                 {"temperature": float("nan")}])
async def test_a_body_json_cannot_carry_is_a_usage_error(bad: dict[str, object]) -> None:
    """Values JSON cannot encode in the request raise UsageError before anything is sent."""
    vc = VirtualClock()
    server = Server(lambda request, n: success())
    async with make_client(server, vc) as client:
        with pytest.raises(UsageError, match="JSON cannot encode"):
            await client.generate("hi", generation_config=bad)
    assert server.requests == []


async def test_count_tokens_does_not_spend_the_known_limits() -> None:
    """countTokens calls are not budgeted against a model's RPD, so generate keeps its quota."""
    vc = VirtualClock()
    server = Server(lambda request, n: httpx.Response(200, json={"totalTokens": 3})
                    if request.url.path.endswith(":countTokens") else success())
    async with make_client(server, vc, keys=["AIzaONE"],
                           limits=[Limit(model=FLASH, rpd=2)]) as client:
        for _ in range(5):
            assert await client.count_tokens("hello") == 3
        first = await client.generate("one")
        second = await client.generate("two")
        with pytest.raises(CapacityError):
            await client.generate("three", models=[FLASH], deadline=1.0)  # the day's two are gone
    assert first.model == second.model == FLASH


async def test_the_embedding_model_can_have_its_own_limit() -> None:
    """A Limit naming the embedding model is accepted and budgets embed calls."""
    vc = VirtualClock()

    def respond(request: httpx.Request, n: int) -> httpx.Response:
        texts = json.loads(request.content)["requests"]
        return httpx.Response(200, json={"embeddings": [{"values": [1.0]} for _ in texts]})

    async with make_client(Server(respond), vc, keys=["AIzaONE"],
                           limits=[Limit(model="gemini-embedding-001", rpm=1)]) as client:
        assert await client.embed(["a", "b"]) == [[1.0], [1.0]]
        with pytest.raises(CapacityError):
            await client.embed(["c"], deadline=1.0)  # one request per minute


@contextlib.asynccontextmanager
async def _serving(handle: Any) -> AsyncIterator[str]:
    """A loopback HTTP/1.1 server whose every connection is `handle(headers, writer)`; yields
    its base URL.  On the way out its handlers are awaited: on a `virtual_loop.VirtualTimeLoop`
    one left sleeping would be a task left behind (`virtual_loop.run` fails on it)."""
    handlers: set[asyncio.Task[Any]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await handle(head.lower(), writer)
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        # A handler ends by itself: the client hung up, or its answer ran out.
        await asyncio.gather(*handlers)
        await server.wait_closed()


ANSWER = json.dumps({"candidates": [{"content": {"parts": [{"text": "ok"}]},
                                     "finishReason": "STOP"}]}).encode()


@pytest.mark.parametrize("fast", [False, True], ids=["httpx", "aiohttp"])
@virtual_loop.on_virtual_time
async def test_timeout_bounds_a_whole_attempt_and_the_call_fails_over(fast: bool) -> None:
    """An answer dripped a few bytes at a time is abandoned after `timeout`, although no single
    read waits that long and the deadline is far; the call fails over to the next key.

    On a `virtual_loop.VirtualTimeLoop`: the drip, the timeout and the attempt's times are
    virtual.  On the wall clock a busy machine could stretch the good key's answer past its
    1 s timeout, or the first attempt past the bound checked below."""

    async def handle(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % len(ANSWER))
        dripping = b"x-goog-api-key: aizadrip" in head
        for i in range(0, len(ANSWER), 4):
            writer.write(ANSWER[i:i + 4])
            await writer.drain()
            if dripping:
                await asyncio.sleep(0.25)  # the whole answer takes 5 s; each read 0.25 s

    async with _serving(handle) as base_url, \
            KeyedClient(keys=["AIzaDRIP", "AIzaGOOD"], models=[FLASH], timeout=1.0,
                        base_url=base_url, fast=fast, clock=virtual_loop.clock()) as client:
        result = await client.generate("hi")
    assert (result.text, result.key) == ("ok", "key#2")
    first, second = result.attempts
    assert (first.key, first.outcome.value, second.outcome.value) == ("key#1", "timeout",
                                                                      "success")
    assert 1.0 <= first.ended - first.started < 1.25  # the timeout, not the 5 s answer


@pytest.mark.parametrize("fast", [False, True], ids=["httpx", "aiohttp"])
@virtual_loop.on_virtual_time
async def test_a_stream_may_outlast_its_timeout_while_chunks_keep_coming(fast: bool) -> None:
    """For a stream, `timeout` bounds each wait for more of the answer, not the whole of it.
    (Virtual time: on the wall clock a busy machine could stretch a 0.3 s gap past 1 s.)"""
    chunks = [b"data: " + json.dumps({"candidates": [{"content": {"parts": [{"text": f"{i} "}]},
                                                      "index": 0, "finishReason": finish}]}
                                     ).encode() + b"\r\n\r\n"
              for i, finish in enumerate([None] * 5 + ["STOP"])]

    async def handle(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"connection: close\r\n\r\n")
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.3)  # 1.8 s in all, past the 1 s timeout

    async with _serving(handle) as base_url, \
            KeyedClient(keys=["AIzaONE"], models=[FLASH], timeout=1.0,
                        base_url=base_url, fast=fast, clock=virtual_loop.clock()) as client:
        texts = [chunk.text async for chunk in client.stream("hi")]
    assert texts == [f"{i} " for i in range(6)]


@pytest.mark.parametrize("fast", [False, True], ids=["httpx", "aiohttp"])
def test_the_deadline_bounds_a_dripping_answer(fast: bool) -> None:
    """A server that sends its answer a few bytes at a time cannot hold a call past its deadline,
    although no single read ever waits as long as the timeout.

    On a `virtual_loop.VirtualTimeLoop`, the client's clock being the loop's: the drip, the
    deadline and the timeout are virtual, so what a first connection costs in real time (aiohttp
    imported and its session made, on a busy machine) does not eat the 0.3 s deadline.  The
    server's handlers are awaited before the loop ends (`virtual_loop.run` fails on a task left
    behind): left sleeping, one was destroyed with the loop and its socket leaked into whichever
    later test ran the garbage collector, failing that test (with ``-k dripping``, the next one).
    """
    body = json.dumps({"candidates": [{"content": {"parts": [{"text": "ok"}]},
                                       "finishReason": "STOP"}]}).encode()
    handlers: set[asyncio.Task[None]] = set()

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 4):
                writer.write(body[i:i + 4])
                await writer.drain()
                await asyncio.sleep(0.05)  # each read is quick; the whole answer is not
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def main() -> CapacityError:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(drip, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with KeyedClient(keys=["AIzaONE"], models=[FLASH], timeout=10.0,
                                   base_url=f"http://127.0.0.1:{port}", fast=fast,
                                   clock=loop.time, sleep=asyncio.sleep) as client:
                with pytest.raises(CapacityError) as caught:
                    await client.generate("hi", deadline=0.3)
        finally:
            server.close()
            # The drip ends by itself (the client hung up, or the answer ran out after 1 s).
            await asyncio.gather(*handlers)
            await server.wait_closed()
        return caught.value

    error = virtual_loop.run(main)
    [attempt] = error.attempts
    assert attempt.outcome.value == "timeout"
    assert attempt.ended <= 0.3 + 1e-6  # the deadline, not the 1 s answer
