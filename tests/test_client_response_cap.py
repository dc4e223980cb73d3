"""`max_response_bytes` caps what a call reads, decompressed, over real loopback HTTP on both
backends: a long answer, an answer without a length, a gzip bomb and a long stream each fail the
call with `ResponseTooLargeError`, without a retry on another key and without blaming the key;
compressed answers within the cap are inflated by keysched itself (aiohttp's own automatic
decompression is off)."""

from __future__ import annotations

import asyncio
import functools
import zlib

import pytest
from raw_server import (
    BACKENDS,
    FLASH,
    Handle,
    RawServer,
    Request,
    answer,
    event,
    gzipped,
    head,
    interrupted_stream,
)

from keysched import (
    ConfigurationError,
    KeyedClient,
    LaneState,
    RequestError,
    ResponseTooLargeError,
)

GUARD = 30.0  # seconds: only "the call ended at all"
MiB = 1024 * 1024
CAP = 64 * 1024


@functools.cache
def bomb() -> tuple[bytes, int]:
    """A gzip answer of about 100 KB that inflates to 100 MiB of JSON, and that size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    prefix, suffix = b'{"candidates": [{"content": {"parts": [{"text": "', b'"}]}}]}'
    parts = [compressor.compress(prefix)]
    piece = b"a" * MiB
    parts += [compressor.compress(piece) for _ in range(100)]
    parts += [compressor.compress(suffix), compressor.flush()]
    return b"".join(parts), len(prefix) + 100 * MiB + len(suffix)


async def _over_cap(handle: Handle, fast: bool, **cap: int) -> ResponseTooLargeError:
    """`generate` from a server answering with `handle` fails as too large, once, and no key is
    blamed; `cap` is the client's ``max_response_bytes`` if given."""
    async with RawServer(handle) as server:
        async with KeyedClient(keys=["AIzaONE", "AIzaTWO"], models=[FLASH],
                               base_url=server.url, fast=fast, **cap) as client:
            with pytest.raises(ResponseTooLargeError) as caught:
                await asyncio.wait_for(client.generate("hi"), GUARD)
            snap = client.snapshot()
    error = caught.value
    assert isinstance(error, RequestError)
    assert "max_response_bytes" in str(error)
    assert len(server.requests) == 1  # not retried on the other key: it would get the same
    assert all(lane.state is LaneState.AVAILABLE for lane in snap.lanes)  # no key blamed
    assert (snap.requests_failed, snap.in_flight) == (1, 0)
    return error


@BACKENDS
async def test_an_answer_declared_longer_than_the_cap_is_refused(fast: bool) -> None:
    big = answer("a" * (2 * CAP))

    async def long_answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, "application/json", content_length=len(big)) + big)

    await _over_cap(long_answer, fast, max_response_bytes=CAP)


@BACKENDS
async def test_an_endless_answer_without_a_length_is_cut_at_the_cap(fast: bool) -> None:
    """A chunked answer that never ends: reading stops at the cap, not at the server's end."""

    async def endless(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, "application/json", transfer_encoding="chunked"))
        piece = b'{"candidates": [' + b" " * (16 * 1024)
        for _ in range(100_000):  # 1.6 GB if nobody stops reading
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()

    await _over_cap(endless, fast, max_response_bytes=CAP)


@BACKENDS
async def test_a_gzip_bomb_is_stopped_at_the_cap_once_inflated(fast: bool) -> None:
    """100 KB on the wire that inflates to 100 MiB, under the default 32 MiB cap: the call fails
    instead of returning a 100-million-character answer."""
    compressed, inflated = bomb()
    assert len(compressed) < 32 * MiB < inflated

    async def gzip_bomb(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, "application/json", content_encoding="gzip",
                          content_length=len(compressed)) + compressed)

    error = await _over_cap(gzip_bomb, fast)  # the default cap
    assert str(32 * MiB) in str(error)


@BACKENDS
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_a_compressed_answer_within_the_cap_is_inflated(fast: bool, encoding: str) -> None:
    """keysched asks for gzip and deflate only, and inflates them itself (deflate both
    zlib-wrapped and raw, as servers send it)."""
    text = "compressed " * 2000
    plain = answer(text)
    if encoding == "gzip":
        body = gzipped(plain)
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS if encoding == "deflate"
                                      else -zlib.MAX_WBITS)
        body = compressor.compress(plain) + compressor.flush()

    async def compressed(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, "application/json", content_length=len(body),
                          content_encoding=encoding.removeprefix("raw-")) + body)

    async with RawServer(compressed) as server:
        async with KeyedClient(keys=["AIzaONE"], models=[FLASH], base_url=server.url,
                               fast=fast, max_response_bytes=len(plain)) as client:
            result = await asyncio.wait_for(client.generate("hi"), GUARD)
    assert result.text == text
    assert server.requests[0].headers["accept-encoding"] == "gzip, deflate"


@BACKENDS
async def test_a_stream_is_capped_as_a_whole(fast: bool) -> None:
    """Past the cap a stream breaks: after chunks, as an interrupted stream whose last attempt
    says why; the key is not blamed."""
    chunk = event("x" * 1000)

    async def long_stream(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head() + chunk * 5)  # within the cap: these reach the caller
        await writer.drain()
        await asyncio.sleep(0.1)
        for _ in range(1000):
            writer.write(chunk)
            await writer.drain()
        writer.write(event("", "STOP"))

    seen = await interrupted_stream(long_stream, fast, GUARD, max_response_bytes=10 * len(chunk))
    assert 1 <= seen.error.chunks_delivered == len(seen.texts) <= 10
    assert "max_response_bytes" in str(seen.error)
    assert seen.error.attempts[-1].outcome.value == "request_error"
    assert len(seen.server.requests) == 1
    snap = seen.snapshot
    assert all(lane.state is LaneState.AVAILABLE for lane in snap.lanes)


@BACKENDS
async def test_a_stream_over_the_cap_before_its_first_chunk_fails_the_call(fast: bool) -> None:
    big = event("x" * (2 * CAP), "STOP")

    async def one_big_event(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(connection="close") + big)

    async with RawServer(one_big_event) as server:
        async with KeyedClient(keys=["AIzaONE", "AIzaTWO"], models=[FLASH],
                               base_url=server.url, fast=fast,
                               max_response_bytes=CAP) as client:
            with pytest.raises(ResponseTooLargeError):
                await asyncio.wait_for(client.stream("hi").__anext__(), GUARD)
    assert len(server.requests) == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "32MiB", None])
def test_max_response_bytes_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_response_bytes"):
        KeyedClient(keys=["AIzaONE"], max_response_bytes=bad)  # type: ignore[arg-type]
