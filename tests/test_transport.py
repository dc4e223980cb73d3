"""Both HTTP backends (httpx, and aiohttp for ``fast=True``) against the fake server on loopback."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from keysched import (
    AttemptsExhaustedError,
    KeyedClient,
    OutcomeKind,
    RetryPolicy,
    StreamChunk,
    StreamInterruptedError,
)
from sim.scenario import Scenario, parse_scenario
from sim.server import serve
from sim.world import World

FLASH = "gemini-2.5-flash"
LITE = "gemini-2.5-flash-lite"
BACKENDS = [pytest.param(False, id="httpx"), pytest.param(True, id="aiohttp")]


def _scenario(*faults: dict[str, Any]) -> Scenario:
    """Two projects, fast models, real time (scale 1), `faults` from t=0 on."""
    return parse_scenario({
        "description": "transport test", "start": "2026-05-12T10:00:00-07:00",
        "duration": 3600, "time_scale": 1, "timeout": 5, "error_latency": 0.001,
        "models": [{"name": FLASH, "latency_median": 0.005, "latency_sigma": 0.1,
                    "stream_chunks": 3},
                   {"name": LITE, "latency_median": 0.005, "latency_sigma": 0.1}],
        "projects": [{"name": "alpha", "keys": 2}, {"name": "beta", "keys": 1}],
        "faults": list(faults),
    }, source="<transport test>")


async def _client(scenario: Scenario, base_url: str, fast: bool, **kwargs: Any) -> KeyedClient:
    return KeyedClient(keys=scenario.pool_keys(), models=scenario.models_best_first,
                       base_url=base_url, fast=fast,
                       retry=kwargs.pop("retry", RetryPolicy(backoff_base=0.01, jitter=0.0)),
                       **kwargs)


async def _stream(client: KeyedClient, sink: list[StreamChunk]) -> None:
    async for chunk in client.stream("tell me a story"):
        sink.append(chunk)


async def _chunks(stream: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("fast", BACKENDS)
async def test_success_and_a_revoked_key(fast: bool) -> None:
    """A revoked key is refused once, disabled, and the request is served by another key."""
    scenario = _scenario({"kind": "key_revoked", "key": "alpha-1", "start": 0})
    world = World(scenario, seed=1)
    async with serve(world) as server:
        async with await _client(scenario, server.base_url, fast) as client:
            first = await client.generate("hello")
            second = await client.generate("again")
            lanes = client.snapshot()
    assert [a.outcome for a in first.attempts] == [OutcomeKind.KEY_INVALID, OutcomeKind.SUCCESS]
    assert first.attempts[0].key == "alpha-1"
    assert first.key != "alpha-1"
    assert first.text
    assert second.key != "alpha-1"
    assert len(second.attempts) == 1
    assert lanes.lane("alpha-1", FLASH).state.value == "disabled"
    counters = world.counters()
    assert counters["alpha-1"][FLASH]["requests"] == 1
    assert counters["alpha-1"][FLASH]["key_invalid"] == 1


@pytest.mark.parametrize("fast", BACKENDS)
async def test_connection_resets_are_retried(fast: bool) -> None:
    """A connection reset becomes a CONNECTION_ERROR attempt; the retries use up the budget."""
    scenario = _scenario({"kind": "reset", "start": 0, "end": 3600})
    async with serve(World(scenario, seed=1)) as server:
        async with await _client(scenario, server.base_url, fast,
                                 retry=RetryPolicy(max_attempts=3, backoff_base=0.01,
                                                   jitter=0.0)) as client:
            with pytest.raises(AttemptsExhaustedError) as caught:
                await client.generate("hello")
            assert client.snapshot().in_flight == 0
    outcomes = [a.outcome for a in caught.value.attempts]
    assert outcomes == [OutcomeKind.CONNECTION_ERROR] * 3


@pytest.mark.parametrize("fast", BACKENDS)
async def test_a_hanging_server_times_out(fast: bool) -> None:
    """A server that never answers in time gives TIMEOUT attempts, bounded by the timeout."""
    scenario = _scenario({"kind": "timeout", "start": 0, "end": 3600})
    async with serve(World(scenario, seed=1)) as server:
        async with await _client(scenario, server.base_url, fast, timeout=0.05,
                                 retry=RetryPolicy(max_attempts=2, backoff_base=0.01,
                                                   jitter=0.0)) as client:
            with pytest.raises(AttemptsExhaustedError) as caught:
                await client.generate("hello")
    assert [a.outcome for a in caught.value.attempts] == [OutcomeKind.TIMEOUT] * 2


@pytest.mark.parametrize("fast", BACKENDS)
async def test_streams_deliver_chunks_and_report_a_break(fast: bool) -> None:
    """A healthy stream delivers every chunk; one that errs after a chunk raises, chunks intact."""
    healthy = _scenario()
    async with serve(World(healthy, seed=1)) as server:
        async with await _client(healthy, server.base_url, fast) as client:
            chunks = await _chunks(client.stream("tell me a story"))
    assert len(chunks) == 3
    assert [c.index for c in chunks] == [0, 1, 2]
    assert chunks[-1].finish_reason == "STOP"

    broken = _scenario({"kind": "stream_error", "start": 0, "end": 3600, "after_chunks": 1})
    async with serve(World(broken, seed=1)) as server:
        async with await _client(broken, server.base_url, fast) as client:
            delivered: list[StreamChunk] = []
            with pytest.raises(StreamInterruptedError) as caught:
                await _stream(client, delivered)
            assert client.snapshot().in_flight == 0
    assert caught.value.chunks_delivered == 1
    assert len(delivered) == 1
    assert delivered[0].text


async def test_fast_path_needs_no_httpx_client() -> None:
    """``fast=True`` with a caller's own transport keeps the caller's transport (httpx)."""
    import httpx

    from keysched._transport import AiohttpBackend, HttpxBackend

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"candidates": [{"content": {"parts": [{"text": "ok"}]},
                                                         "finishReason": "STOP"}]})

    async with KeyedClient(keys=["AIzaONE"], models=[FLASH], fast=True,
                           transport=httpx.MockTransport(handler)) as client:
        assert isinstance(client._backend, HttpxBackend)
        assert (await client.generate("hi")).text == "ok"
    async with KeyedClient(keys=["AIzaONE"], models=[FLASH], fast=True) as client:
        assert isinstance(client._backend, AiohttpBackend)


async def test_the_default_backend_is_aiohttp_when_installed_else_httpx(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No `fast` picks aiohttp if it imports, httpx if not; ``fast=True`` without it is an error."""
    from keysched import ConfigurationError
    from keysched._transport import AiohttpBackend, HttpxBackend

    async with KeyedClient(keys=["AIzaONE"], models=[FLASH]) as client:
        assert isinstance(client._backend, AiohttpBackend)
    async with KeyedClient(keys=["AIzaONE"], models=[FLASH], fast=False) as client:
        assert isinstance(client._backend, HttpxBackend)
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if it were not installed
    async with KeyedClient(keys=["AIzaONE"], models=[FLASH]) as client:
        assert isinstance(client._backend, HttpxBackend)
    with pytest.raises(ConfigurationError, match="fast"):
        KeyedClient(keys=["AIzaONE"], models=[FLASH], fast=True)


class _Held:
    """An ASGI app that holds requests until `release` is set; `all_in` once `expected` came."""

    def __init__(self, expected: int) -> None:
        self.arrived = 0
        self.expected = expected
        self.all_in = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        self.arrived += 1
        if self.arrived == self.expected:
            self.all_in.set()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


async def test_our_httpx_clients_each_carry_a_few_requests() -> None:
    """Concurrent requests spread over clients of SHARD_LOAD each; later ones reuse them."""
    from keysched._transport import SHARD_LOAD, HttpxBackend
    from sim.httpserver import SimServer

    app = _Held(expected=2 * SHARD_LOAD + 1)
    backend = HttpxBackend()
    headers = backend.headers({"content-type": "application/json"})
    async with SimServer(app) as server:
        url = f"{server.base_url}/v1beta/models/{FLASH}:generateContent"
        calls = [asyncio.ensure_future(backend.post(url, headers, b"{}", 5.0))
                 for _ in range(app.expected)]
        await asyncio.wait_for(app.all_in.wait(), 30)
        assert [shard.load for shard in backend._shards] == [SHARD_LOAD, SHARD_LOAD, 1]
        app.release.set()
        assert [status for status, _, _ in await asyncio.gather(*calls)] == [200] * len(calls)
        assert [shard.load for shard in backend._shards] == [0, 0, 0]
        again = [backend.post(url, headers, b"{}", 5.0) for _ in range(SHARD_LOAD)]
        await asyncio.gather(*again)
        assert len(backend._shards) == 3  # no new client: the free ones were reused
        clients = [shard.client for shard in backend._shards]
        await backend.aclose()
    assert all(client.is_closed for client in clients)


async def test_a_callers_httpx_client_carries_everything_and_stays_open() -> None:
    """The caller's client is the only one used, however many requests, and is not closed."""
    import httpx

    from keysched._transport import SHARD_LOAD, HttpxBackend

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as own:
        backend = HttpxBackend(own)
        headers = backend.headers({})
        await asyncio.gather(*(backend.post("http://x.invalid/", headers, b"{}", 5.0)
                               for _ in range(3 * SHARD_LOAD)))
        assert [shard.client for shard in backend._shards] == [own]
        await backend.aclose()
        assert not own.is_closed
    assert len(seen) == 3 * SHARD_LOAD


class _Proxy:
    """An ASGI app standing in for an HTTP proxy: records each request's target, answers ok."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        self.targets.append(scope["path"])
        body = (b'{"candidates": [{"content": {"parts": [{"text": "via proxy"}]}, '
                b'"finishReason": "STOP"}]}')
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("fast", BACKENDS)
async def test_both_backends_honour_a_proxy_from_the_environment(
        fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY in the environment routes calls through the proxy, whichever backend sends."""
    from sim.httpserver import SimServer

    proxy = _Proxy()
    async with SimServer(proxy) as server:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, server.base_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with KeyedClient(keys=["AIzaONE"], models=[FLASH], fast=fast,
                               base_url="http://gemini.invalid") as client:
            assert (await client.generate("hi")).text == "via proxy"
    assert proxy.targets == [f"http://gemini.invalid/v1beta/models/{FLASH}:generateContent"]


def test_the_cached_aiohttp_timeout_is_the_one_aiohttp_would_build() -> None:
    """The aiohttp backend's cached whole-exchange timeout equals ``ClientTimeout(total=s)``,
    for a bound seen before and for new ones."""
    import aiohttp

    from keysched._transport import _total_timeout

    for seconds in (60.0, 0.001, 2.5, 60.0, 1e9, 2.5):
        timeout = _total_timeout(seconds)
        assert timeout == aiohttp.ClientTimeout(total=seconds)
        assert (timeout.total, timeout.connect, timeout.sock_read) == (seconds, None, None)
