"""`KeyedClient` at the transport seam (`httpx.MockTransport`), in virtual time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from helpers import (
    FLASH,
    LITE,
    Server,
    body,
    fixture,
    key_of,
    make_client,
    model_of,
    secret,
    success,
)
from virtual_clock import VirtualClock

from keysched import (
    CapacityError,
    ConfigurationError,
    EmptyResponseError,
    KeyedClient,
    NoUsableKeyError,
    Policy,
    RequestError,
    RetryPolicy,
    StreamInterruptedError,
    UsageError,
)
from keysched._config import Key
from keysched._outcomes import OutcomeKind
from keysched._snapshot import LaneState

K = OutcomeKind


def one_project_per_key(n: int) -> list[Key]:
    return [Key(secret=secret(i), label=f"k{i}", project=f"proj{i}") for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------
# Cooldowns in virtual time


async def test_429_cools_exactly_its_group_for_exactly_the_retry_delay() -> None:
    """A per-minute 429 benches its (project, model) group until t + retryDelay, nothing else."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(429, "429_per_minute_tpm.json") if n == 0
                    else success())
    async with make_client(server, vc) as client:
        result = await client.generate("hi")
        t = result.attempts[0].ended
        assert t == vc.start
        snap = client.snapshot()
        groups = {(g.project, g.model): g for g in snap.groups}
        assert groups[("p1", FLASH)].cooldown_until == t + 26.0
        assert groups[("p1", FLASH)].reason == "rate_limited_minute"
        assert [g for g in snap.groups if g.cooldown_until is not None] == [groups[("p1", FLASH)]]
        for label in ("key#1", "key#2"):
            lane = snap.lane(label, FLASH)
            assert (lane.state, lane.cooldown_until) == (LaneState.COOLING, t + 26.0)
            assert snap.lane(label, LITE).state is LaneState.AVAILABLE
        assert snap.lane("key#3", FLASH).state is LaneState.AVAILABLE
        # The next request avoids the cooling group ...
        await client.generate("again")
        assert server.keys[-1] == secret(3)
        # ... until exactly t + 26: a hair before, still cooling; at t + 26, serving again.
        vc.advance(26.0 - 1e-6)
        assert client.snapshot().lane("key#1", FLASH).state is LaneState.COOLING
        vc.advance(1e-6)
        assert vc.now >= t + 26.0
        assert client.snapshot().lane("key#1", FLASH).state is LaneState.AVAILABLE


async def test_a_waiting_request_is_served_when_the_cooldown_ends() -> None:
    """With the only project cooling, a request waits in virtual time and goes out at t + delay."""
    vc = VirtualClock()
    keys = [Key(secret=secret(1), label="only", project="p")]
    server = Server(lambda request, n: fixture(429, "429_per_minute_tpm.json") if n == 0
                    else success())
    async with make_client(server, vc, keys=keys, models=[FLASH]) as client:
        result = await client.generate("hi")
    first, second = result.attempts
    assert second.started == first.ended + 26.0
    assert result.key == "only"


async def test_per_day_429_benches_the_project_until_midnight_pacific() -> None:
    """A per-day 429 ignores its short retryDelay and benches the group until 00:00 Pacific."""
    vc = VirtualClock()
    vc.advance(3600.0)  # 2025-12-31 17:00 PST: midnight Pacific is 7 hours away
    server = Server(lambda request, n: fixture(429, "429_daily_cap_2026.json") if n == 0
                    else success())
    async with make_client(server, vc) as client:
        result = await client.generate("hi")
        t = result.attempts[0].ended
        assert result.attempts[0].retry_after == 39.0
        groups = {(g.project, g.model): g for g in client.snapshot().groups}
        assert groups[("p1", FLASH)].cooldown_until == t + 7 * 3600
        assert groups[("p1", FLASH)].reason == "rate_limited_day"
        assert groups[("p1", LITE)].cooldown_until is None
        assert result.key == "key#3"


async def test_model_fallback_and_return_to_the_best_model() -> None:
    """A 503 that trips the breaker (here at one) falls back to the next model; once the
    overload cooldown passes, the best returns."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(503, "503_overloaded.json") if n == 0
                    else success())
    async with make_client(server, vc, policy=Policy(overload_trip=1)) as client:
        first = await client.generate("one")
        assert [a.model for a in first.attempts] == [FLASH, LITE]
        t = first.attempts[0].ended
        cooldown = RetryPolicy().overload_cooldown
        assert client.snapshot().lane("key#2", FLASH).cooldown_until == t + cooldown
        during = await client.generate("two")
        assert during.model == LITE
        vc.advance(cooldown)
        after = await client.generate("three")
        assert after.model == FLASH
        assert len(after.attempts) == 1


async def test_deadline_bounds_the_total_time_when_everything_cools() -> None:
    """Everything cooling past the deadline: the call fails with CapacityError at once (the
    core knows the return time), saying when; cooling within it, the call waits and is served."""
    vc = VirtualClock()
    keys = [Key(secret=secret(1), label="only", project="p")]
    server = Server(lambda request, n: fixture(429, "429_per_minute_tpm.json"))
    async with make_client(server, vc, keys=keys, models=[FLASH]) as client:
        start = vc.now
        with pytest.raises(CapacityError) as caught:
            await client.generate("hi", deadline=10.0)
        assert vc.now == start  # the group is benched 26 s: nothing to wait for
        error = caught.value
        assert error.retry_at == start + 26.0
        assert len(server.requests) == 1
        assert "capacity returns in 26.0s" in str(error)
        assert error.status == 429
        snap = client.snapshot()
        assert (snap.in_flight, snap.waiting, snap.requests_failed) == (0, 0, 1)


async def test_attempt_timeout_is_bounded_by_the_deadline() -> None:
    """Each attempt's HTTP timeout is the smaller of `timeout` and the time left."""
    vc = VirtualClock()
    seen: list[dict[str, float]] = []

    def respond(request: httpx.Request, n: int) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return success()

    async with make_client(Server(respond), vc, timeout=30.0) as client:
        await client.generate("hi", deadline=7.0)
        await client.generate("hi", deadline=70.0)
        await client.generate("hi", timeout=3.0)
    assert [t["read"] for t in seen] == [7.0, 30.0, 3.0]


# ---------------------------------------------------------------------------------------------
# Keys


async def test_an_invalid_key_is_used_once_and_never_again() -> None:
    """After API_KEY_INVALID, the key is disabled and no later request carries it."""
    vc = VirtualClock()
    bad = secret(1)
    server = Server(lambda request, n: fixture(400, "400_api_key_invalid.json")
                    if key_of(request) == bad else success())
    async with make_client(server, vc) as client:
        results = [await client.generate(f"q{i}") for i in range(20)]
        results += await asyncio.gather(*(client.generate(f"p{i}") for i in range(20)))
        snap = client.snapshot()
    assert server.keys.count(bad) == 1
    assert all(r.key != "key#1" for r in results)
    assert snap.lane("key#1", FLASH).state is LaneState.DISABLED
    assert snap.lane("key#1", FLASH).reason == "key_invalid"


async def test_a_dispatch_on_a_key_disabled_while_it_waited_is_never_sent() -> None:
    """A waiting request handed a key by another task's answer gets it back unsent if a refusal
    disables that key before the request's own task runs."""
    vc = VirtualClock(autojump=False)  # time stands still while the answers are held
    gates = {secret(i): asyncio.Event() for i in (1, 2, 3)}

    async def respond(request: httpx.Request) -> httpx.Response:
        await gates[key_of(request)].wait()
        if key_of(request) == secret(2):  # key#2's project p1 (key#1 too) is disabled
            return fixture(403, "403_service_disabled.json")
        return success()

    server = Server(lambda request, n: respond(request))
    async with make_client(server, vc, max_in_flight_per_key=1) as client:
        calls = [asyncio.ensure_future(client.generate(f"q{i}")) for i in range(4)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert sorted(server.keys) == [secret(1), secret(2), secret(3)]  # q3 waits
        # key#1's success hands key#1 to q3; key#2's refusal, handled next in the same turn of
        # the loop, disables key#1 before q3's task runs.
        gates[secret(1)].set()
        gates[secret(2)].set()
        for _ in range(20):
            await asyncio.sleep(0)
        gates[secret(3)].set()
        results = await asyncio.gather(*calls)
    assert server.keys.count(secret(1)) == 1
    assert server.keys.count(secret(2)) == 1
    assert all(result.text for result in results)
    assert sorted(result.key for result in results) == ["key#1", "key#3", "key#3", "key#3"]


async def test_every_key_invalid_is_no_usable_key() -> None:
    """When every key is invalid, the call fails with NoUsableKeyError, each key tried once."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(400, "400_api_key_invalid.json"))
    async with make_client(server, vc) as client:
        with pytest.raises(NoUsableKeyError):
            await client.generate("hi")
        with pytest.raises(NoUsableKeyError):
            await client.generate("hi")
    assert sorted(server.keys) == [secret(1), secret(2), secret(3)]


async def test_keys_travel_in_the_header_never_in_the_url() -> None:
    """Every call sends its key in x-goog-api-key; no URL carries a key."""
    vc = VirtualClock()

    def respond(request: httpx.Request, n: int) -> httpx.Response:
        path = request.url.path
        if path.endswith(":countTokens"):
            return httpx.Response(200, json={"totalTokens": 5})
        if path.endswith(":batchEmbedContents"):
            count = len(json.loads(request.content)["requests"])
            return httpx.Response(200, json={"embeddings": [{"values": [1.0]}] * count})
        if path.endswith(":streamGenerateContent"):
            return httpx.Response(200, content=sse(CHUNK_A, CHUNK_B))
        return success()

    server = Server(respond)
    async with make_client(server, vc) as client:
        await client.generate("hi")
        await client.count_tokens("hi")
        await client.embed(["a", "b"])
        assert [c.text async for c in client.stream("hi")] == ["1\n2\n", "3\n4\n5"]
    assert len(server.requests) == 4
    for request in server.requests:
        assert key_of(request) in {secret(1), secret(2), secret(3)}
        url = str(request.url)
        assert "key=" not in url
        assert not any(s in url for s in (secret(1), secret(2), secret(3)))
        assert request.url.host == "generativelanguage.googleapis.com"
    assert server.requests[3].url.params["alt"] == "sse"


# ---------------------------------------------------------------------------------------------
# Empty answers


async def test_empty_200_is_retried_once_on_another_key_then_fails() -> None:
    """A 200 without content is retried once on another key, then raised as EmptyResponseError."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(200, "200_empty.json"))
    async with make_client(server, vc) as client:
        with pytest.raises(EmptyResponseError) as caught:
            await client.generate("hi")
    assert len(server.requests) == 2
    assert server.keys[0] != server.keys[1]
    assert [a.outcome for a in caught.value.attempts] == [K.EMPTY, K.EMPTY]


# ---------------------------------------------------------------------------------------------
# Streaming

CHUNK_A = ('{"candidates": [{"content": {"parts": [{"text": "1\\n2\\n"}],"role": "model"},'
           '"index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 3,'
           '"totalTokenCount": 11},"modelVersion": "gemini-2.5-flash",'
           '"responseId": "WhmlabShCNjv-8YPl_D1gAo"}')
CHUNK_B = ('{"candidates": [{"content": {"parts": [{"text": "3\\n4\\n5"}],"role": "model"},'
           '"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 8,'
           '"candidatesTokenCount": 8,"totalTokenCount": 16},"modelVersion": "gemini-2.5-flash",'
           '"responseId": "WhmlabShCNjv-8YPl_D1gAo"}')


def sse(*events: str) -> bytes:
    """An SSE body with CRLF framing, as Google sends it."""
    return b"".join(f"data: {event}\r\n\r\n".encode() for event in events)


async def drain(stream: AsyncIterator[object]) -> None:
    async for _ in stream:
        pass


async def settle(done: Callable[[], bool], rounds: int = 10_000) -> None:
    """Let other tasks run until `done()` (no wall-clock sleeping)."""
    for _ in range(rounds):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the tasks did not settle")


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("size", [1, 7, 10_000])
async def test_stream_delivers_chunks_with_crlf_framing(size: int) -> None:
    """SSE events framed with CRLF arrive as chunks, however the bytes are split."""
    vc = VirtualClock()
    server = Server(lambda request, n: httpx.Response(200, content=pieces(sse(CHUNK_A, CHUNK_B),
                                                                          size)))
    async with make_client(server, vc) as client:
        chunks = [chunk async for chunk in client.stream("count")]
        snap = client.snapshot()
    assert [c.text for c in chunks] == ["1\n2\n", "3\n4\n5"]
    assert [c.index for c in chunks] == [0, 1]
    assert chunks[-1].finish_reason == "STOP"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens == 8
    assert {c.key for c in chunks} == {"key#1"}
    assert server.requests[0].url.path.endswith("/models/gemini-2.5-flash:streamGenerateContent")
    assert (snap.in_flight, snap.requests_finished) == (0, 1)
    assert snap.lane("key#1", FLASH).succeeded == 1


async def test_stream_fails_over_before_the_first_chunk() -> None:
    """An error before the first chunk (HTTP status or in-stream) fails over transparently (a
    breaker that trips at one 503 sends the retry to the next model)."""
    vc = VirtualClock()
    error_in_stream = b"\r\n".join(body("503_overloaded.json").splitlines()) + b"\r\n"
    answers = [lambda: fixture(429, "429_per_minute_tpm.json"),
               lambda: httpx.Response(200, content=error_in_stream),
               lambda: httpx.Response(200, content=sse(CHUNK_A, CHUNK_B))]
    server = Server(lambda request, n: answers[n]())
    async with make_client(server, vc, policy=Policy(overload_trip=1)) as client:
        chunks = [chunk async for chunk in client.stream("count")]
        snap = client.snapshot()
    assert [c.text for c in chunks] == ["1\n2\n", "3\n4\n5"]
    assert server.models == [FLASH, FLASH, LITE]
    assert server.keys[:2] == [secret(1), secret(3)]
    assert chunks[0].model == LITE
    assert snap.in_flight == 0


async def test_stream_interrupted_after_a_chunk_by_a_bare_json_error() -> None:
    """A bare JSON error after a delivered chunk raises StreamInterruptedError, no failover."""
    vc = VirtualClock()
    broken = sse(CHUNK_A) + b"\r\n".join(body("503_overloaded.json").splitlines()) + b"\r\n"
    server = Server(lambda request, n: httpx.Response(200, content=broken))
    async with make_client(server, vc, policy=Policy(overload_trip=1)) as client:
        got: list[str] = []

        async def consume() -> None:
            async for chunk in client.stream("count"):
                got.append(chunk.text)

        with pytest.raises(StreamInterruptedError) as caught:
            await consume()
        snap = client.snapshot()
    error = caught.value
    assert got == ["1\n2\n"]
    assert error.chunks_delivered == 1
    assert error.status == 503
    assert error.google_status == "UNAVAILABLE"
    assert (error.model, error.key) == (FLASH, "key#1")
    assert len(server.requests) == 1
    assert snap.in_flight == 0
    assert all(lane.in_flight == 0 for lane in snap.lanes)
    assert snap.lane("key#1", FLASH).state is LaneState.COOLING  # the 503 still cools the model


async def test_stream_abandoned_by_the_caller_releases_the_lane() -> None:
    """Closing a stream after one chunk releases its lane and counts the request cancelled."""
    vc = VirtualClock()
    server = Server(lambda request, n: httpx.Response(200, content=sse(CHUNK_A, CHUNK_B)))
    async with make_client(server, vc) as client:
        stream = client.stream("count")
        first = await anext(stream)  # type: ignore[arg-type]
        await stream.aclose()  # type: ignore[attr-defined]
        snap = client.snapshot()
    assert first.text == "1\n2\n"
    assert (snap.in_flight, snap.requests_cancelled) == (0, 1)


async def test_stream_request_error_is_raised() -> None:
    """A 400 before the stream starts raises RequestError after one attempt."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(400, "400_token_count.json"))
    async with make_client(server, vc) as client:
        with pytest.raises(RequestError):
            await drain(client.stream("count"))
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------------------------
# count_tokens and embed


async def test_count_tokens() -> None:
    """count_tokens posts the contents to :countTokens and returns totalTokens, after a retry."""
    vc = VirtualClock()
    answers = [lambda: fixture(503, "503_overloaded.json"),
               lambda: httpx.Response(200, json={"totalTokens": 31})]
    server = Server(lambda request, n: answers[min(n, 1)]())
    async with make_client(server, vc) as client:
        start = vc.now
        # One 503 is noise: the call retries at once on another key of the same model.
        assert await client.count_tokens("hello there", model=LITE) == 31
        assert vc.now == start
    assert len({request.headers["x-goog-api-key"] for request in server.requests}) == 2
    assert server.bodies()[-1] == {"contents": [{"role": "user",
                                                 "parts": [{"text": "hello there"}]}]}
    assert server.requests[-1].url.path.endswith("/models/gemini-2.5-flash-lite:countTokens")


async def test_count_tokens_request_error() -> None:
    """A refused countTokens call raises RequestError."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(400, "400_invalid_argument.json"))
    async with make_client(server, vc) as client:
        with pytest.raises(RequestError):
            await client.count_tokens("hi")


async def test_embed_250_texts_in_batches_of_100_100_50_in_order() -> None:
    """250 texts go out as batches of 100, 100 and 50, and the vectors come back in order."""
    vc = VirtualClock()

    def respond(request: httpx.Request, n: int) -> httpx.Response:
        items = json.loads(request.content)["requests"]
        vectors = [{"values": [float(item["content"]["parts"][0]["text"])]} for item in items]
        return httpx.Response(200, json={"embeddings": vectors})

    server = Server(respond)
    texts = [str(i) for i in range(250)]
    async with make_client(server, vc) as client:
        vectors = await client.embed(texts)
    assert vectors == [[float(i)] for i in range(250)]
    batches = [[item["content"]["parts"][0]["text"] for item in b["requests"]]
               for b in server.bodies()]
    assert [len(b) for b in batches] == [100, 100, 50]
    assert batches == [texts[0:100], texts[100:200], texts[200:250]]
    assert set(server.models) == {"gemini-embedding-001"}
    assert all(r.url.path.endswith(":batchEmbedContents") for r in server.requests)
    assert server.bodies()[0]["requests"][0]["model"] == "models/gemini-embedding-001"


async def test_embed_error_is_a_service_error_not_an_exception_group() -> None:
    """A failed batch raises the ServiceError itself, and the other batches are not left behind."""
    vc = VirtualClock()
    server = Server(lambda request, n: fixture(400, "400_batch_limit.json") if n == 1
                    else httpx.Response(200, json={"embeddings": [{"values": [0.0]}] * 100}))
    async with make_client(server, vc) as client:
        with pytest.raises(RequestError):
            await client.embed(["t"] * 250)
        snap = client.snapshot()
    assert snap.in_flight == 0


async def test_embed_nothing_and_bad_input() -> None:
    """No texts embed to no vectors without a call; a bare string is a UsageError."""
    vc = VirtualClock()
    server = Server()
    async with make_client(server, vc) as client:
        assert await client.embed([]) == []
        with pytest.raises(UsageError):
            await client.embed("text")  # type: ignore[arg-type]
    assert server.requests == []


# ---------------------------------------------------------------------------------------------
# Configuration


def test_from_env_reads_keys_and_models() -> None:
    """from_env splits GEMINI_API_KEYS on commas and newlines and reads GEMINI_MODELS."""
    env = {"GEMINI_API_KEYS": f" {secret(1)},{secret(2)}\n{secret(3)} ,",
           "GEMINI_MODELS": "gemini-2.5-pro, gemini-2.5-flash"}
    client = KeyedClient.from_env(env, transport=httpx.MockTransport(lambda r: success()))
    assert client.models == ("gemini-2.5-pro", "gemini-2.5-flash")
    assert [lane.key for lane in client.snapshot().lanes[::3]] == ["key#1", "key#2", "key#3"]
    asyncio.run(client.aclose())


async def test_from_env_default_models_and_serves() -> None:
    """Without GEMINI_MODELS the default models are used, and the client serves."""
    server = Server()
    async with KeyedClient.from_env({"GEMINI_API_KEYS": secret(1)},
                                    transport=httpx.MockTransport(server)) as client:
        assert client.models == ("gemini-2.5-flash", "gemini-2.5-flash-lite")
        assert (await client.generate("hi")).key == "key#1"
    assert server.keys == [secret(1)]


@pytest.mark.parametrize(("env", "field"), [
    ({}, "GEMINI_API_KEYS"),
    ({"GEMINI_API_KEYS": ""}, "GEMINI_API_KEYS"),
    ({"GEMINI_API_KEYS": " ,\n, "}, "GEMINI_API_KEYS"),
    ({"GEMINI_API_KEYS": secret(1), "GEMINI_MODELS": " , "}, "GEMINI_MODELS"),
    ({"GEMINI_API_KEYS": f"{secret(1)},{secret(1)}"}, "keys[1]"),
    ({"GEMINI_API_KEYS": secret(1) + "\x00"}, "keys[0]"),
])
def test_from_env_bad(env: dict[str, str], field: str) -> None:
    """Bad environments fail with a ConfigurationError naming the variable or field."""
    with pytest.raises(ConfigurationError) as caught:
        KeyedClient.from_env(env, transport=httpx.MockTransport(lambda r: success()))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert secret(1) not in str(caught.value)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"keys": []}, "keys"),
    ({"keys": "AIzaSingleStringKey0123456789"}, "keys"),
    ({"keys": ["has space"]}, "keys[0]"),
    ({"keys": [secret(1), 5]}, "keys[1]"),
    ({"models": []}, "models"),
    ({"models": [FLASH, FLASH]}, "models[1]"),
    ({"models": [""]}, "models[0]"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": float("nan")}, "timeout"),
    ({"timeout": True}, "timeout"),
    ({"base_url": "ftp://example.org"}, "base_url"),
    ({"embedding_model": " "}, "embedding_model"),
    ({"max_in_flight_per_key": 0}, "max_in_flight_per_key"),
    ({"retry": "fast"}, "retry"),
])
def test_configuration_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    """Each bad constructor argument fails at construction with its field named."""
    args: dict[str, object] = {"keys": [secret(1)], "models": [FLASH]}
    args.update(kwargs)
    with pytest.raises(ConfigurationError) as caught:
        KeyedClient(**args)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize(("retry", "field"), [
    ({"max_attempts": 0}, "retry.max_attempts"),
    ({"deadline": -1.0}, "retry.deadline"),
    ({"jitter": 2.0}, "retry.jitter"),
])
def test_retry_policy_errors_name_the_field(retry: dict[str, float], field: str) -> None:
    """A bad retry policy names its field."""
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**retry)  # type: ignore[arg-type]
    assert caught.value.field == field


async def test_bad_call_arguments() -> None:
    """Bad per-call timeouts, deadlines and models are refused before anything is sent."""
    vc = VirtualClock()
    server = Server()
    async with make_client(server, vc) as client:
        with pytest.raises(ConfigurationError, match=r"^timeout"):
            await client.generate("hi", timeout=-1.0)
        with pytest.raises(ConfigurationError, match=r"^deadline"):
            await client.generate("hi", deadline=0.0)
        with pytest.raises(UsageError, match="unknown model"):
            await client.generate("hi", models=["gemini-9"])
        snap = client.snapshot()
    assert server.requests == []
    assert (snap.in_flight, snap.waiting, snap.requests_submitted) == (0, 0, 0)


async def test_closed_client_refuses_calls() -> None:
    """After aclose, calls raise UsageError; aclose is idempotent."""
    vc = VirtualClock()
    client = make_client(Server(), vc)
    await client.aclose()
    await client.aclose()
    with pytest.raises(UsageError, match="closed"):
        await client.generate("hi")


async def test_models_restrict_and_order_the_fallback() -> None:
    """A call's `models` restricts it to those models, best first."""
    vc = VirtualClock()
    server = Server()
    async with make_client(server, vc) as client:
        result = await client.generate("hi", models=[LITE])
    assert result.model == LITE
    assert server.models == [LITE]


async def test_connection_errors_and_timeouts_are_retried() -> None:
    """A ConnectError and a ReadTimeout are retried with backoff on another key."""
    vc = VirtualClock()

    def respond(request: httpx.Request, n: int) -> httpx.Response:
        if n == 0:
            raise httpx.ConnectError("refused", request=request)
        if n == 1:
            raise httpx.ReadTimeout("timed out", request=request)
        return success()

    async with make_client(Server(respond), vc) as client:
        result = await client.generate("hi")
    assert [a.outcome for a in result.attempts] == [K.CONNECTION_ERROR, K.TIMEOUT, K.SUCCESS]
    assert result.attempts[1].started == result.attempts[0].ended + 0.5
    assert result.attempts[2].started == result.attempts[1].ended + 1.0


async def test_result_names_model_key_and_attempts() -> None:
    """The result carries text, model, key label, usage and the attempt records."""
    vc = VirtualClock()
    async with make_client(Server(), vc) as client:
        result = await client.generate([{"role": "user", "parts": [{"text": "hi"}]}],
                                       generation_config={"temperature": 0.0},
                                       system_instruction="be brief")
    assert result.text == "AI learns patterns from data to make decisions or predictions."
    assert (result.model, result.key, result.finish_reason) == (FLASH, "key#1", "STOP")
    assert result.usage is not None
    assert result.usage.total_tokens == 848
    assert len(result.attempts) == 1
    assert result.attempts[0].status == 200
    assert not result.blocked


async def test_least_loaded_spreads_concurrent_calls_over_keys() -> None:
    """Concurrent calls spread over the keys evenly."""
    vc = VirtualClock()
    release = asyncio.Event()

    async def slow(request: httpx.Request, n: int) -> httpx.Response:
        await release.wait()
        return success()

    server = Server(slow)
    keys = one_project_per_key(4)
    async with make_client(server, vc, keys=keys) as client:
        tasks = [asyncio.create_task(client.generate(str(i))) for i in range(8)]
        await settle(lambda: len(server.requests) == 8)
        assert client.snapshot().in_flight == 8
        release.set()
        await asyncio.gather(*tasks)
    assert sorted(server.keys.count(k.secret) for k in keys) == [2, 2, 2, 2]
    assert {model_of(r) for r in server.requests} == {FLASH}
