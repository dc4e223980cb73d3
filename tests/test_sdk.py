"""The official SDKs (google-genai, openai) through the pool, over loopback HTTP to `sim serve`.

Each test serves a scenario on 127.0.0.1 (`e2e_support.running_server`), builds a pool in the
scenario's virtual time and hands `KeyedClient.transport()` (or `PoolThread`'s transports) to
the real SDK, as a user would.  Both sides are checked: what the SDK returned or raised, and
what the server counted (``GET /_sim/counters``).  Nothing asserts on wall-clock time.

A test whose pool and server share its loop runs on a `virtual_loop.VirtualTimeLoop` at time
scale 1 (`e2e_support.virtual_server`), so a busy machine changes nothing the scenario sees.
The `PoolThread` tests cannot (the pool has a loop of its own, in its own thread): they run on
the wall clock at scale 100, with bounds that only catch a hang (`HANG_GUARD`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from typing import Any

import httpx
import openai
import pytest
import virtual_loop
from e2e_support import (
    ScaledTimeouts,
    ScenarioTime,
    running_server,
    server_counters,
    virtual_server,
)
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from sdk_support import (
    CALLER_KEY,
    EMBED,
    FLASH,
    LITE,
    Counting,
    Tap,
    hostile_scenario,
    outcomes,
    pool_for,
    pool_options,
    requests_of,
)

from keysched import (
    ConfigurationError,
    LaneState,
    PoolThread,
    RetryPolicy,
    UsageError,
    genai_client,
)
from sim.httpserver import SimServer
from sim.server import SimApp, make_app, serve
from sim.world import World


def app_of(server: SimServer) -> SimApp:
    assert isinstance(server.app, SimApp)
    return server.app


def genai_async(base_url: str, transport: httpx.AsyncBaseTransport) -> genai.Client:
    """google-genai's client on `transport`, retries off (its default, stated explicitly)."""
    return genai.Client(api_key=CALLER_KEY, http_options=types.HttpOptions(
        base_url=base_url, api_version="v1beta", retry_options=None,
        async_client_args={"transport": transport}))


def openai_async(base_url: str, transport: httpx.AsyncBaseTransport) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=CALLER_KEY, base_url=f"{base_url}/v1beta/openai/",
                              max_retries=0,
                              http_client=httpx.AsyncClient(transport=transport, timeout=None))


async def genai_mix(client: genai.Client, i: int) -> str:
    """One SDK call of four kinds, by `i`; returns a short proof it succeeded."""
    aio = client.aio.models
    match i % 4:
        case 0 | 1:
            answer = await aio.generate_content(model=FLASH, contents=f"question {i}")
            assert answer.text
            return answer.text
        case 2:
            pieces = [chunk.text async for chunk in await aio.generate_content_stream(
                model=FLASH, contents=f"stream {i}")]
            assert len(pieces) == 3
            return "".join(p or "" for p in pieces)
        case _:
            vectors = await aio.embed_content(model=EMBED, contents=[f"a {i}", f"b {i}"])
            assert vectors.embeddings is not None
            assert len(vectors.embeddings) == 2
            return "embedded"


@pytest.mark.parametrize("fast", [False, True], ids=["httpx", "aiohttp"])
def test_genai_async_every_call_succeeds_and_the_revoked_key_is_hit_once(fast: bool) -> None:
    """On a `virtual_loop.VirtualTimeLoop` at scale 1 (fast=True: the pool sends through
    aiohttp, whose timeouts then run on the same virtual clock).  On the wall clock at scale 100
    the pool's 30 s timeout and 60 s deadline were 0.3 s and 0.6 s of real time, which a loaded
    machine overran: calls failed that the scenario lets succeed."""
    virtual_loop.run(lambda: genai_async_run(fast))


async def genai_async_run(fast: bool) -> None:
    backend: dict[str, Any] = {"fast": True, "transport": None} if fast else {}
    async with virtual_server(hostile_scenario()) as (server, _world):
        async with pool_for(app_of(server), server.base_url, max_in_flight_per_key=1,
                            **backend) as pool:
            counting = Counting(pool.transport())
            client = genai_async(server.base_url, counting)
            answers = await asyncio.gather(*(genai_mix(client, i) for i in range(16)))
            total = await client.aio.models.count_tokens(model=FLASH, contents="four words here")
            listed = [model.name async for model in await client.aio.models.list()]
            await client.aio.aclose()  # closes the transport (and what it made for passing through)
            snapshot = pool.snapshot()
        counters = await server_counters(server)
    assert len(answers) == 16
    assert all(answers)
    assert total.total_tokens is not None
    assert total.total_tokens > 0
    assert f"models/{FLASH}" in listed
    assert counting.requests == 18  # one transport request per SDK call: no SDK retries
    assert requests_of(counters, "revoked-1") == 1
    assert snapshot.lane("revoked-1", LITE).state is LaneState.DISABLED
    # The scenario did bite: the best model answered 503 and the tight project 429.
    assert outcomes(counters, "overloaded") >= 1
    assert outcomes(counters, "rate_limited_minute") >= 1
    assert snapshot.in_flight == 0
    assert snapshot.waiting == 0


def test_openai_async_every_call_succeeds_and_the_revoked_key_is_hit_once() -> None:
    """On a `virtual_loop.VirtualTimeLoop` at scale 1, for the reason the genai test is."""
    virtual_loop.run(openai_async_run)


async def openai_async_run() -> None:
    async with virtual_server(hostile_scenario()) as (server, _world):
        async with pool_for(app_of(server), server.base_url, max_in_flight_per_key=1) as pool:
            counting = Counting(pool.transport())
            client = openai_async(server.base_url, counting)

            async def one(i: int) -> str:
                messages: Any = [{"role": "user", "content": f"question {i}"}]
                if i % 3 == 0:
                    stream = await client.chat.completions.create(
                        model=FLASH, messages=messages, stream=True)
                    return "".join([c.choices[0].delta.content or "" async for c in stream])
                if i % 3 == 1:
                    vectors = await client.embeddings.create(model=EMBED, input=[f"x {i}"])
                    return str(len(vectors.data))
                answer = await client.chat.completions.create(model=FLASH, messages=messages)
                return answer.choices[0].message.content or ""

            answers = await asyncio.gather(*(one(i) for i in range(12)))
            listed = [model.id async for model in client.models.list()]
            snapshot = pool.snapshot()
        counters = await server_counters(server)
    assert all(answers)
    assert f"models/{FLASH}" in listed
    assert counting.requests == 13
    assert requests_of(counters, "revoked-1") == 1
    assert outcomes(counters, "overloaded") >= 1
    assert snapshot.in_flight == 0


HANG_GUARD: dict[str, Any] = {"timeout": 3000.0, "retry": RetryPolicy(deadline=6000.0)}
"""Pool options for the tests whose pool runs on a `PoolThread`: its own loop, in its own thread,
cannot share a `virtual_loop.VirtualTimeLoop`, so they stay on the wall clock at the scenario's
scale (100).  There the default 30 s timeout and 120 s deadline were 0.3 s and 1.2 s of real
time, which a loaded machine could overrun (an attempt timed out, a call failed).  3,000 and 6,000
virtual seconds are 30 s and 60 s of real time: they only bound a hang; no check of these tests
depends on how fast an answer comes."""


def test_sync_genai_client_from_8_threads_shares_one_pool() -> None:
    """32 sync SDK calls from 8 threads through one `PoolThread`, then one on the ``.aio``
    surface: every call succeeds, the revoked key is hit once for them all (a pool per thread
    would hit it once each), and closing the client ends the pool's thread."""
    world = World(hostile_scenario())
    app = make_app(world)
    with serve(app) as server:
        client = genai_client(base_url=server.base_url, api_version="v1beta",
                              **pool_options(app, max_in_flight_per_key=1, **HANG_GUARD))

        def one(i: int) -> str:
            if i % 4 == 3:
                chunks = list(client.models.generate_content_stream(model=FLASH,
                                                                    contents=f"s {i}"))
                return "".join(chunk.text or "" for chunk in chunks)
            answer = client.models.generate_content(model=FLASH, contents=f"question {i}")
            return answer.text or ""

        with concurrent.futures.ThreadPoolExecutor(8) as threads:
            answers = list(threads.map(one, range(32)))
        listed = [model.name for model in client.models.list()]  # passed through, streamed

        async def from_a_loop() -> str:  # the .aio surface shares the same pool
            answer = await client.aio.models.generate_content(model=FLASH, contents="async")
            await client.aio.aclose()
            return answer.text or ""

        answers.append(asyncio.run(from_a_loop()))
        pool_threads = [t for t in threading.enumerate()
                        if t.name == "keysched-pool"]
        client.close()  # both surfaces closed: the pool closes and its thread ends
        counters = world.counters()
    assert len(answers) == 33
    assert all(answers)
    assert f"models/{FLASH}" in listed
    assert requests_of(counters, "revoked-1") == 1
    assert outcomes(counters, "overloaded") >= 1
    assert pool_threads
    assert not any(t.is_alive() for t in pool_threads)


@virtual_loop.on_virtual_time
async def test_a_stream_failing_before_its_first_chunk_succeeds_on_another_key() -> None:
    faults = ({"kind": "stream_error", "key": "open-1", "after_chunks": 0, "code": 500},
              {"kind": "stream_cut", "key": "tight-1", "after_chunks": 0})
    async with virtual_server(hostile_scenario(overloaded=False, faults=faults)) as (server, _):
        async with pool_for(app_of(server), server.base_url, max_in_flight_per_key=1) as pool:
            client = genai_async(server.base_url, pool.transport())
            texts = []
            for i in range(6):  # sequential: each key takes its turn, the bad ones too
                chunks = [c async for c in await client.aio.models.generate_content_stream(
                    model=LITE, contents=f"stream {i}")]
                texts.append("".join(c.text or "" for c in chunks))
            oa = openai_async(server.base_url, pool.transport())
            stream = await oa.chat.completions.create(
                model=LITE, messages=[{"role": "user", "content": "hi"}], stream=True)
            texts.append("".join([c.choices[0].delta.content or "" async for c in stream]))
            snapshot = pool.snapshot()
        counters = await server_counters(server)
    assert all(text.startswith(f"[{LITE} #") for text in texts)
    assert counters["open-1"][LITE].get("server_error", 0) >= 1  # tried, failed, failed over
    assert counters["tight-1"][LITE].get("connection_error", 0) >= 1
    assert snapshot.in_flight == 0


@virtual_loop.on_virtual_time
async def test_a_stream_cut_after_a_chunk_raises_the_sdks_error_without_failover() -> None:
    faults = ({"kind": "stream_cut", "after_chunks": 1},)
    async with virtual_server(hostile_scenario(overloaded=False, faults=faults)) as (server, _):
        async with pool_for(app_of(server), server.base_url,
                            keys=[k for k in app_of(server).world.scenario.pool_keys()
                                  if k.label == "open-1"]) as pool:
            client = genai_async(server.base_url, pool.transport())
            received: list[str | None] = []

            async def read_all() -> None:
                async for chunk in await client.aio.models.generate_content_stream(
                        model=FLASH, contents="cut me"):
                    received.append(chunk.text)

            with pytest.raises(httpx.TransportError) as caught:
                await read_all()
            snapshot = pool.snapshot()
        counters = await server_counters(server)
    assert len(received) == 1
    assert "broke" in str(caught.value)
    assert "open-1" in str(caught.value)
    assert counters["open-1"][FLASH]["requests"] == 1  # no failover after a chunk was given
    assert snapshot.requests_failed == 1
    assert snapshot.in_flight == 0


@virtual_loop.on_virtual_time
async def test_no_request_leaving_the_pool_carries_the_callers_key_or_a_key_in_the_url() -> None:
    tap = Tap()
    async with virtual_server(hostile_scenario(overloaded=False)) as (server, _):
        app = app_of(server)
        secrets = {key.secret for key in app.world.scenario.pool_keys()}
        async with pool_for(app, server.base_url, transport=ScaledTimeouts(SCALE_OF(app), tap)
                            ) as pool:
            client = genai_async(server.base_url, pool.transport())
            await client.aio.models.generate_content(model=FLASH, contents="one")
            [c async for c in await client.aio.models.generate_content_stream(
                model=FLASH, contents="two")]
            await client.aio.models.count_tokens(model=FLASH, contents="three")
            [m async for m in await client.aio.models.list()]  # passed through
            oa = openai_async(server.base_url, pool.transport())
            await oa.chat.completions.create(model=FLASH, messages=[{"role": "user",
                                                                      "content": "four"}])
            [m async for m in oa.models.list()]  # passed through
            async with httpx.AsyncClient(transport=pool.transport()) as raw:
                answer = await raw.post(
                    f"{server.base_url}/v1beta/models/{FLASH}:generateContent",
                    params={"key": CALLER_KEY},
                    headers={"x-goog-api-key": CALLER_KEY,
                             "authorization": f"Bearer {CALLER_KEY}"},
                    json={"contents": [{"parts": [{"text": "five"}]}]})
                assert answer.status_code == 200
    assert len(tap.seen) >= 7
    for request in tap.seen:
        wire = (str(request.url) + json.dumps(request.headers.multi_items())
                + request.content.decode())
        assert CALLER_KEY not in wire
        assert "key" not in request.url.params
        assert not any(secret in str(request.url) for secret in secrets)
        sent = [value.removeprefix("Bearer ") for name, value in request.headers.multi_items()
                if name.lower() in ("x-goog-api-key", "authorization")]
        assert len(sent) == 1
        assert sent[0] in secrets
        openai_path = "/openai/" in request.url.path
        assert ("authorization" in request.headers) == openai_path


def SCALE_OF(app: SimApp) -> float:
    return ScenarioTime(app).scale


@virtual_loop.on_virtual_time
async def test_fallback_along_the_pool_list_is_switchable() -> None:
    async with virtual_server(hostile_scenario()) as (server, _):
        app = app_of(server)
        retry = RetryPolicy(max_attempts=5)  # two 503s on the best model move a call on
        async with pool_for(app, server.base_url, retry=retry) as pool:
            falls = genai_async(server.base_url, pool.transport())
            answer = await falls.aio.models.generate_content(model=FLASH, contents="x")
            assert answer.text
            assert answer.text.startswith(f"[{LITE} #")
            assert answer.sdk_http_response is not None
            headers = answer.sdk_http_response.headers or {}
            assert headers.get("x-keysched-model") == LITE
            assert int(headers["x-keysched-attempts"]) >= 2  # the best model's 503 first
            pinned = genai_async(server.base_url, pool.transport(fallback=False))
            with pytest.raises(genai_errors.APIError) as caught:
                await pinned.aio.models.generate_content(model=FLASH, contents="y")
            one_call = genai.Client(api_key=CALLER_KEY, http_options=types.HttpOptions(
                base_url=server.base_url, api_version="v1beta",
                headers={"x-keysched-fallback": "off"},
                async_client_args={"transport": pool.transport()}))
            with pytest.raises(genai_errors.APIError) as caught_too:
                await one_call.aio.models.generate_content(model=FLASH, contents="z")
    # Pinned to the overloaded best model: the last refusal reaches the SDK (a 503, or the
    # tight project's 429), never an answer from the model after it.
    for error in (caught.value, caught_too.value):
        assert error.code in (429, 503)
        assert error.response is not None
        assert error.response.headers["x-keysched-model"] == FLASH


@virtual_loop.on_virtual_time
async def test_a_model_outside_the_pool_passes_through_once() -> None:
    async with virtual_server(hostile_scenario(overloaded=False)) as (server, _):
        usable = [k for k in app_of(server).world.scenario.pool_keys()
                  if k.label != "revoked-1"]
        async with pool_for(app_of(server), server.base_url, keys=usable) as pool:
            client = genai_async(server.base_url, pool.transport())
            with pytest.raises(genai_errors.ClientError) as caught:
                await client.aio.models.generate_content(model="gemini-9-ultra", contents="?")
            snapshot = pool.snapshot()
        counters = await server_counters(server)
    assert caught.value.code == 404
    assert sum(requests_of(counters, label) for label in counters) == 1
    assert snapshot.requests_submitted == 0  # not scheduled: passed through


@virtual_loop.on_virtual_time
async def test_when_every_key_is_refused_the_sdk_raises_its_own_error_for_the_last_answer() -> None:
    async with virtual_server(hostile_scenario(overloaded=False)) as (server, _):
        app = app_of(server)
        revoked = [k for k in app.world.scenario.pool_keys() if k.label == "revoked-1"]
        async with pool_for(app, server.base_url, keys=revoked) as pool:
            client = genai_async(server.base_url, pool.transport())
            with pytest.raises(genai_errors.ClientError) as first:
                await client.aio.models.generate_content(model=FLASH, contents="a")
            with pytest.raises(genai_errors.ClientError) as second:  # no attempt left to make
                await client.aio.models.generate_content(model=FLASH, contents="b")
        counters = await server_counters(server)
    assert first.value.code == 400
    assert first.value.status == "INVALID_ARGUMENT"
    assert second.value.code == 403
    assert "no usable key" in (second.value.message or "")
    assert requests_of(counters, "revoked-1") == 1


async def test_an_error_body_echoing_the_key_reaches_the_sdk_redacted() -> None:
    secret = "AIzaECHOEDsecret00000000000000000000000"

    def echo(request: httpx.Request) -> httpx.Response:
        sent = request.headers["x-goog-api-key"]
        return httpx.Response(400, headers={"x-echo": sent}, json={"error": {
            "code": 400, "status": "INVALID_ARGUMENT",
            "message": f"Bad request made with key {sent}"}})

    from keysched import KeyedClient

    async with KeyedClient(keys=[secret], base_url="http://echo.invalid",
                           transport=httpx.MockTransport(echo)) as pool:
        client = genai_async("http://echo.invalid", pool.transport())
        with pytest.raises(genai_errors.ClientError) as caught:
            await client.aio.models.generate_content(model=FLASH, contents="x")
    error = caught.value
    assert error.response is not None
    shown = str(error) + repr(error.details) + json.dumps(dict(error.response.headers))
    assert secret not in shown
    assert "key#1" in (error.message or "")  # the label stands where the key was


async def test_pool_thread_async_transport_serves_another_loop() -> None:
    """A `PoolThread`'s async transport serves SDK calls made on another loop (this test's):
    every call is answered and the pool counts them.  Wall clock, `HANG_GUARD` bounds."""
    async with running_server(hostile_scenario(overloaded=False)) as (server, _):
        app = app_of(server)
        pool = await asyncio.to_thread(PoolThread, base_url=server.base_url,
                                       **pool_options(app, **HANG_GUARD))
        try:
            client = genai_async(server.base_url, pool.async_transport())
            answers = await asyncio.gather(*(client.aio.models.generate_content(
                model=LITE, contents=f"q {i}") for i in range(4)))
            streamed = [c.text async for c in await client.aio.models.generate_content_stream(
                model=LITE, contents="s")]
            snapshot = await asyncio.to_thread(pool.snapshot)
        finally:
            await asyncio.to_thread(pool.close)
    assert all(a.text for a in answers)
    assert len(streamed) == 3
    assert snapshot.requests_finished == 5
    assert snapshot.in_flight == 0


def test_a_pool_thread_with_a_bad_option_raises_and_leaves_no_thread() -> None:
    before = {t.ident for t in threading.enumerate() if t.name == "keysched-pool"}
    with pytest.raises(ConfigurationError, match="timeout"):
        PoolThread(keys=["AIzaONE"], timeout=-1)
    assert not [t for t in threading.enumerate()
                if t.name == "keysched-pool" and t.ident not in before]
    with PoolThread(keys=["AIzaONE"]) as pool:
        transport = pool.transport()
    with pytest.raises(Exception, match="closed"):
        httpx.Client(transport=transport).post("http://x.invalid/v1beta/models/m:generateContent")


@virtual_loop.on_virtual_time
async def test_cancelling_an_sdk_call_releases_its_lane_at_once() -> None:
    slow = ({"kind": "slow", "factor": 1000.0},)  # an attempt takes 1,000 virtual seconds
    async with virtual_server(hostile_scenario(overloaded=False, faults=slow)) as (server, _):
        app = app_of(server)
        async with pool_for(app, server.base_url, timeout=5000.0,
                            retry=RetryPolicy(deadline=5000.0)) as pool:
            client = genai_async(server.base_url, pool.transport())
            call = asyncio.ensure_future(client.aio.models.generate_content(model=LITE,
                                                                            contents="slow"))
            while pool.snapshot().in_flight == 0:  # noqa: ASYNC110 - waiting for the dispatch
                await asyncio.sleep(0.001)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            snapshot = pool.snapshot()
    assert snapshot.in_flight == 0
    assert snapshot.requests_cancelled == 1


def test_closing_a_pool_thread_ends_the_calls_waiting_in_other_threads() -> None:
    """Two calls from other threads are in flight when the pool closes: both end at once with
    the pool's "closed" error, not with an answer or after their timeout (a close that left
    them to their attempts would fail this either way).  An answer would take 50,000 virtual
    seconds, 500 s of real time: however busy the machine, the close comes first (at factor
    1,000 an answer took 5 s, which a starved test thread could have waited through)."""
    slow = ({"kind": "slow", "factor": 100_000.0},)
    world = World(hostile_scenario(overloaded=False, faults=slow))
    app = make_app(world)
    with serve(app) as server:
        pool = PoolThread(base_url=server.base_url,
                          **pool_options(app, timeout=5000.0, retry=RetryPolicy(deadline=5000.0)))
        http = httpx.Client(transport=pool.transport())
        with concurrent.futures.ThreadPoolExecutor(2) as threads:
            calls = [threads.submit(http.post, f"{server.base_url}/v1beta/models/{LITE}"
                                    ":generateContent", json={"contents": [{"parts": [
                                        {"text": f"slow {i}"}]}]}) for i in range(2)]
            while pool.snapshot().in_flight < 2:
                threading.Event().wait(0.001)
            pool.close()
            # A generous guard only: the calls end as soon as the pool cancels them.
            errors = [call.exception(timeout=60) for call in calls]
    assert all(isinstance(error, UsageError) and "closed" in str(error) for error in errors)


def test_a_clients_transport_refuses_a_second_event_loop() -> None:
    from keysched import KeyedClient

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"candidates": [{"content": {"parts": [{"text": "ok"}]}}]})

    pool = KeyedClient(keys=["AIzaONE"], base_url="http://mock.invalid",
                       transport=httpx.MockTransport(answer))
    transport = pool.transport()

    async def call() -> int:
        async with httpx.AsyncClient(transport=transport) as http:
            response = await http.post(
                f"http://mock.invalid/v1beta/models/{FLASH}:generateContent",
                json={"contents": [{"parts": [{"text": "hi"}]}]})
            return response.status_code

    assert asyncio.run(call()) == 200
    with pytest.raises(UsageError, match="PoolThread"):
        asyncio.run(call())
