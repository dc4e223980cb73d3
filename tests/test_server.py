"""The fake Gemini server: wire format in-process (ASGITransport) and over a loopback socket."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from e2e_support import running_server, scenario_client

from keysched import RetryPolicy
from keysched._outcomes import OutcomeKind
from sim.bodies import Body
from sim.cli import build_parser, main
from sim.scenario import Scenario, builtin_scenarios, load_scenario, parse_scenario
from sim.server import SimApp, SimulatedDisconnect, make_app, serve
from sim.world import Reply, World

try:  # written by another engineer in parallel; only the cross-checks depend on it
    from keysched._sse import SSEParser
    from keysched._wire import classify
except ImportError:  # pragma: no cover - only before keysched._wire exists
    classify = None  # type: ignore[assignment]
    SSEParser = None  # type: ignore[assignment,misc]

K = OutcomeKind
FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
TYPES = "type.googleapis.com/google.rpc."
PROMPT = {"contents": [{"role": "user", "parts": [{"text": "x" * 400}]}]}  # 100 tokens
SCALE = 10.0


class FakeClock:
    """A clock that only moves when slept on, or when a test sets it (starts far from 0)."""

    def __init__(self) -> None:
        self.now = 50_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def scenario() -> Scenario:
    """Faults in separate windows of virtual time, so each test picks one by setting the clock."""
    return parse_scenario({
        "description": "server test", "start": "2026-05-12T10:00:00-07:00", "duration": 3600,
        "time_scale": SCALE, "timeout": 30,
        "models": [{"name": FLASH, "latency_median": 2.0, "stream_chunks": 3},
                   {"name": PRO, "latency_median": 4.0}],
        "quotas": {FLASH: {"rpm": 2, "tpm": 1000, "rpd": 100}, PRO: 0},
        "projects": [{"name": "alpha", "keys": 2}, {"name": "beta", "keys": 1},
                     {"name": "gamma", "keys": 1}, {"name": "delta", "keys": 1}],
        "faults": [
            {"kind": "key_revoked", "key": "alpha-2", "start": 0},
            {"kind": "overloaded", "start": 1000, "end": 1100},
            {"kind": "reset", "start": 1100, "end": 1200},
            {"kind": "stream_error", "start": 1200, "end": 1300, "after_chunks": 1},
            {"kind": "stream_cut", "start": 1300, "end": 1400, "after_chunks": 2},
            {"kind": "timeout", "start": 1400, "end": 1500},
            {"kind": "shared_429", "start": 1500, "end": 1600},
            {"kind": "server_error", "start": 1600, "end": 1700},
            {"kind": "deadline_exceeded", "start": 1700, "end": 1800},
            {"kind": "proxy_refused", "start": 1800, "end": 1900, "code": 401},
            {"kind": "proxy_refused", "start": 1900, "end": 2000},
            {"kind": "file_denied", "start": 2000, "end": 2100},
            {"kind": "key_type_unsupported", "key": "gamma-1"},
            {"kind": "project_denied", "project": "delta"},
            {"kind": "key_leaked", "key": "alpha-1", "start": 3000},
            {"kind": "project_disabled", "project": "beta", "start": 3000},
        ],
    }, source="<server test>")


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock."""
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> SimApp:
    """The app on a fresh world, driven by the fake clock."""
    return make_app(World(scenario(), seed=3), clock=clock, sleep=clock.sleep)


@pytest.fixture
async def client(app: SimApp) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client wired to the app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
        yield http


def at(app: SimApp, clock: FakeClock, virtual: float) -> None:
    """Move the fake clock so the app's virtual time is `virtual`."""
    clock.now = app.started + virtual / app.time_scale


def url(model: str = FLASH, method: str = "generateContent") -> str:
    suffix = "?alt=sse" if method == "streamGenerateContent" else ""
    return f"/v1beta/models/{model}:{method}{suffix}"


def key(label: str) -> dict[str, str]:
    return {"x-goog-api-key": f"fake-{label}"}


def check_classify(response: httpx.Response, kind: OutcomeKind, **kwargs: Any) -> None:
    """The client's own classifier reads the body as the world meant it."""
    if classify is not None:
        got = classify(response.status_code, response.content, dict(response.headers), **kwargs)
        assert got.outcome.kind is kind, got


def detail_types(response: httpx.Response) -> list[str]:
    return [d["@type"].removeprefix(TYPES) for d in response.json()["error"].get("details", [])]


async def test_success_and_latency_on_the_injected_clock(
        app: SimApp, clock: FakeClock, client: httpx.AsyncClient) -> None:
    """A success is Google's pretty JSON; its latency is slept as latency / time_scale."""
    at(app, clock, 10.0)
    response = await client.post(url(), json=PROMPT, headers=key("alpha-1"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.content.startswith(b'{\n  "candidates": [\n')
    body = response.json()
    assert body["usageMetadata"]["promptTokenCount"] == 100
    assert body["modelVersion"] == FLASH
    assert len(clock.slept) == 1
    assert 0 < clock.slept[0] * SCALE < 60  # a log-normal latency around 2 virtual seconds
    check_classify(response, K.SUCCESS)


async def test_error_bodies_over_http(app: SimApp, clock: FakeClock,
                                      client: httpx.AsyncClient) -> None:
    """Every error class arrives with Google's status, detail types and a matching classification."""
    at(app, clock, 10.0)
    cases: list[tuple[str, str, float, int, OutcomeKind, list[str]]] = [
        ("alpha-2", FLASH, 10.0, 400, K.KEY_INVALID, ["ErrorInfo", "LocalizedMessage"]),
        ("alpha-1", PRO, 10.0, 429, K.QUOTA_ZERO, ["Help", "QuotaFailure", "RetryInfo"]),
        ("alpha-1", "gemini-9", 10.0, 404, K.MODEL_NOT_FOUND, []),
        ("alpha-1", FLASH, 1050.0, 503, K.OVERLOADED, []),
        ("alpha-1", FLASH, 1550.0, 429, K.SHARED_CAPACITY, []),
        ("alpha-1", FLASH, 1650.0, 500, K.SERVER_ERROR, []),
        ("alpha-1", FLASH, 1750.0, 504, K.TIMEOUT, []),
        ("alpha-1", FLASH, 3050.0, 403, K.KEY_LEAKED, []),
        ("beta-1", FLASH, 3050.0, 403, K.PROJECT_DISABLED, ["Help", "ErrorInfo"]),
    ]
    for label, model, virtual, status, kind, types in cases:
        at(app, clock, virtual)
        response = await client.post(url(model), json=PROMPT, headers=key(label))
        assert response.status_code == status, (label, model, response.text)
        assert response.content.startswith(b'{\n  "error": {\n    "code": ')
        assert detail_types(response) == types
        check_classify(response, kind)
    disabled = response.json()["error"]["details"][1]
    assert disabled["reason"] == "SERVICE_DISABLED"
    assert disabled["metadata"]["consumer"].startswith("projects/")


async def test_per_minute_429_over_http(app: SimApp, clock: FakeClock,
                                        client: httpx.AsyncClient) -> None:
    """The (R+1)th request in a minute gets the RPM body whose retryDelay ends the window."""
    for virtual in (120.0, 121.0):
        at(app, clock, virtual)
        assert (await client.post(url(), json=PROMPT, headers=key("alpha-1"))).status_code == 200
    at(app, clock, 130.5)
    response = await client.post(url(), json=PROMPT, headers=key("alpha-1"))
    assert response.status_code == 429
    error = response.json()["error"]
    retry = [d for d in error["details"] if d["@type"] == TYPES + "RetryInfo"]
    assert retry == [{"@type": TYPES + "RetryInfo", "retryDelay": "49.5s"}]
    assert error["message"].endswith("Please retry in 49.5s.")
    check_classify(response, K.RATE_LIMITED_MINUTE)
    at(app, clock, 190.0)
    big = {"contents": [{"parts": [{"text": "y" * 4400}]}]}  # 1,100 tokens > TPM 1,000
    response = await client.post(url(), json=big, headers=key("alpha-1"))
    assert response.status_code == 429
    check_classify(response, K.TOO_LARGE_FOR_QUOTA, input_tokens=1100)


async def test_a_stream_without_sse_wraps_its_error_in_an_array(
        app: SimApp, clock: FakeClock, client: httpx.AsyncClient) -> None:
    """Without alt=sse a refused stream is a one-element JSON array, as Google sends it."""
    for virtual in (120.0, 121.0):
        at(app, clock, virtual)
        assert (await client.post(url(), json=PROMPT, headers=key("alpha-1"))).status_code == 200
    at(app, clock, 130.5)
    response = await client.post(url(method="streamGenerateContent").removesuffix("?alt=sse"),
                                 json=PROMPT, headers=key("alpha-1"))
    assert response.status_code == 429
    body = response.json()
    assert isinstance(body, list)
    assert body[0]["error"]["status"] == "RESOURCE_EXHAUSTED"
    check_classify(response, K.RATE_LIMITED_MINUTE)


def _world_replies() -> list[tuple[Reply, int]]:
    world = World(scenario(), seed=3)
    calls = [(10.0, "alpha-1", FLASH, 100), (11.0, "alpha-1", FLASH, 100),
             (12.0, "alpha-1", FLASH, 100), (70.0, "alpha-1", FLASH, 1100),
             (71.0, "alpha-1", FLASH, 990), (72.0, "alpha-1", FLASH, 20),
             (10.0, "alpha-2", FLASH, 1), (10.0, "alpha-1", PRO, 1),
             (10.0, "alpha-1", "gemini-9", 1), (1050.0, "alpha-1", FLASH, 1),
             (1550.0, "alpha-1", FLASH, 1), (1650.0, "alpha-1", FLASH, 1),
             (1750.0, "alpha-1", FLASH, 1), (3050.0, "alpha-1", FLASH, 1),
             (3050.0, "beta-1", FLASH, 1), (1850.0, "alpha-1", FLASH, 1),
             (1950.0, "alpha-1", FLASH, 1), (2050.0, "alpha-1", FLASH, 1),
             (10.0, "gamma-1", FLASH, 1), (10.0, "delta-1", FLASH, 1)]
    replies = [(world.attempt(t, f"fake-{label}", model, size), size)
               for t, label, model, size in calls]
    replies.append((world.attempt(1.0, "", FLASH, 1), 1))
    daily = World(parse_scenario({
        "description": "rpd", "start": "2026-05-12T10:00:00-07:00", "duration": 60,
        "models": [{"name": FLASH}], "quotas": {FLASH: {"rpd": 1}}, "projects": [{"name": "d"}]}))
    replies += [(daily.attempt(t, "fake-d-1", FLASH, 5), 5) for t in (1.0, 2.5)]
    return replies


def test_world_outcomes_agree_with_the_wire_classifier() -> None:
    """For every body the world renders, keysched._wire.classify derives the same outcome."""
    if classify is None:  # pragma: no cover
        pytest.skip("keysched._wire is not there yet")
    replies = _world_replies()
    bodies_seen = {reply.body for reply, _ in replies}
    assert bodies_seen >= set(Body) - {Body.BAD_REQUEST}
    for reply, size in replies:
        status, headers, body = reply.render()
        got = classify(status, body, {k.decode(): v.decode() for k, v in headers},
                       input_tokens=size)
        assert got.outcome.kind is reply.outcome.kind, (reply.body, got)
        assert got.outcome.retry_after == reply.outcome.retry_after, reply.body


async def test_sse_stream_framing(app: SimApp, clock: FakeClock,
                                  client: httpx.AsyncClient) -> None:
    """A stream is text/event-stream with `data: {json}\\r\\n\\r\\n` events, paced over its latency."""
    at(app, clock, 10.0)
    response = await client.post(url(method="streamGenerateContent"), json=PROMPT,
                                 headers=key("alpha-1"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = response.content.split(b"\r\n\r\n")
    assert events[-1] == b""
    assert len(events) == 4
    for event in events[:-1]:
        assert event.startswith(b'data: {"candidates": [{"content": {"parts": [{"text": ')
        assert b"\n" not in event
    last = json.loads(events[2][len(b"data: "):])
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert len(clock.slept) == 3
    assert len(set(clock.slept)) == 1  # even pacing
    if SSEParser is not None:
        parser = SSEParser()
        parsed = parser.feed(response.content) + parser.close()
        assert [e.is_error for e in parsed] == [False, False, False]
        assert parsed[-1].finish_reason == "STOP"


async def test_mid_stream_error(app: SimApp, clock: FakeClock, client: httpx.AsyncClient) -> None:
    """An error after the stream started is a bare pretty-printed object inside the 200."""
    at(app, clock, 1250.0)
    response = await client.post(url(method="streamGenerateContent"), json=PROMPT,
                                 headers=key("alpha-1"))
    assert response.status_code == 200
    first, rest = response.content.split(b"\r\n\r\n", 1)
    assert first.startswith(b"data: {")
    assert rest.startswith(b'{\n  "error": {\n    "code": 503,')
    assert json.loads(rest)["error"]["message"] == "The model is overloaded. Please try again later."
    if SSEParser is not None:
        parser = SSEParser()
        parsed = parser.feed(response.content) + parser.close()
        assert [e.is_error for e in parsed] == [False, True]
        assert parsed[1].classified is not None
        assert parsed[1].classified.outcome.kind is K.OVERLOADED


async def test_reset_and_timeout_drop_the_connection(
        app: SimApp, clock: FakeClock, client: httpx.AsyncClient) -> None:
    """Resets and timeouts reach an in-process client as httpx.ReadError, after their latency."""
    at(app, clock, 1150.0)
    with pytest.raises(httpx.ReadError):
        await client.post(url(), json=PROMPT, headers=key("alpha-1"))
    at(app, clock, 1450.0)
    clock.slept.clear()
    with pytest.raises(SimulatedDisconnect):
        await client.post(url(), json=PROMPT, headers=key("alpha-1"))
    assert clock.slept == [30.0 / SCALE]  # the scenario's timeout, in virtual seconds


async def test_counters_and_state_endpoints(app: SimApp, clock: FakeClock,
                                            client: httpx.AsyncClient) -> None:
    """GET /_sim/counters mirrors world.counters(); /_sim/state reports virtual time."""
    at(app, clock, 10.0)
    await client.post(url(), json=PROMPT, headers=key("alpha-1"))
    await client.post(url(), json=PROMPT, params={"key": "fake-alpha-2"})
    counters = (await client.get("/_sim/counters")).json()
    assert counters == app.world.counters()
    assert counters == {"alpha-1": {FLASH: {"requests": 1, "success": 1}},
                        "alpha-2": {FLASH: {"requests": 1, "key_invalid": 1}}}
    at(app, clock, 42.0)
    state = (await client.get("/_sim/state")).json()
    assert state["virtual_time"] == pytest.approx(42.0)
    assert state["time_scale"] == SCALE


async def test_other_endpoints(app: SimApp, clock: FakeClock, client: httpx.AsyncClient) -> None:
    """countTokens, batchEmbedContents, ListModels, GetModel, no key and bad JSON behave like Google."""
    at(app, clock, 10.0)
    tokens = await client.post(url(method="countTokens"), json=PROMPT, headers=key("alpha-1"))
    assert tokens.json() == {"totalTokens": 100}
    embed = await client.post(url(method="batchEmbedContents"), headers=key("alpha-1"), json={
        "requests": [{"model": f"models/{FLASH}", "content": {"parts": [{"text": t}]}}
                     for t in ("a", "b")]})
    vectors = embed.json()["embeddings"]
    assert len(vectors) == 2
    assert len(vectors[0]["values"]) == 8
    assert vectors[0] != vectors[1]
    listed = (await client.get("/v1beta/models", headers=key("alpha-1"))).json()
    assert [m["name"] for m in listed["models"]] == [f"models/{FLASH}", f"models/{PRO}",
                                                     "models/gemini-embedding-001"]
    paged = (await client.get("/v1beta/models", params={"pageSize": 1},
                              headers=key("alpha-1"))).json()
    assert paged["nextPageToken"] == "1"
    one = await client.get(f"/v1beta/models/{PRO}", headers=key("alpha-1"))
    assert one.json()["name"] == f"models/{PRO}"
    assert (await client.get("/v1beta/models", headers=key("alpha-2"))).status_code == 400
    anonymous = await client.post(url(), json=PROMPT)
    assert anonymous.status_code == 403
    check_classify(anonymous, K.KEY_FORBIDDEN)
    bad = await client.post(url(), content=b"{not json", headers=key("alpha-1"))
    assert bad.status_code == 400
    assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    check_classify(bad, K.REQUEST_ERROR)
    assert (await client.get("/nowhere")).status_code == 404


async def test_real_socket_keep_alive_bodies_and_sse(app: SimApp, clock: FakeClock) -> None:
    """Over loopback: exact bodies, CRLF SSE framing, counters over HTTP, one reused connection."""
    async with serve(app) as server, httpx.AsyncClient(base_url=server.base_url) as http:
        assert server.base_url.startswith("http://127.0.0.1:")
        at(app, clock, 10.0)
        ok = await http.post(url(), json=PROMPT, headers=key("alpha-1"))
        assert ok.status_code == 200
        assert ok.json()["candidates"][0]["finishReason"] == "STOP"
        revoked = await http.post(url(), json=PROMPT, headers=key("alpha-2"))
        assert revoked.status_code == 400
        assert detail_types(revoked) == ["ErrorInfo", "LocalizedMessage"]
        check_classify(revoked, K.KEY_INVALID)
        raw = b""
        async with http.stream("POST", url(method="streamGenerateContent"), json=PROMPT,
                               headers=key("alpha-1")) as stream:
            assert stream.headers["transfer-encoding"] == "chunked"
            async for piece in stream.aiter_raw():
                raw += piece
        assert raw.count(b"\r\n\r\n") == 3
        assert raw.startswith(b"data: {")
        assert raw.endswith(b"}\r\n\r\n")
        counters = (await http.get("/_sim/counters")).json()
        assert counters["alpha-1"][FLASH] == {"requests": 2, "success": 2}
        assert server.connections == 1


async def test_real_socket_reset_and_cut(app: SimApp, clock: FakeClock) -> None:
    """Over loopback, a reset fails the call and a cut stream fails after its first chunks."""
    async with serve(app) as server, httpx.AsyncClient(base_url=server.base_url) as http:
        at(app, clock, 1150.0)
        with pytest.raises(httpx.TransportError):
            await http.post(url(), json=PROMPT, headers=key("alpha-1"))
        at(app, clock, 1350.0)
        received: list[bytes] = []

        async def read_stream() -> None:
            async with http.stream("POST", url(method="streamGenerateContent"), json=PROMPT,
                                   headers=key("alpha-1")) as stream:
                assert stream.status_code == 200
                async for piece in stream.aiter_raw():
                    received.append(piece)  # one by one: keep what arrived before the cut

        with pytest.raises(httpx.TransportError):
            await read_stream()
        assert b"".join(received).count(b"\r\n\r\n") == 2
        at(app, clock, 10.0)
        after = await http.post(url(), json=PROMPT, headers=key("alpha-1"))
        assert after.status_code == 200  # the client opens a fresh connection
        assert server.connections >= 2


async def test_many_concurrent_connections(clock: FakeClock) -> None:
    """A few hundred clients at once on separate connections are all answered."""
    world = World(parse_scenario({
        "description": "load", "start": "2026-05-12T10:00:00-07:00", "duration": 60,
        "models": [{"name": FLASH, "latency_median": 0.5}], "projects": [{"name": "p"}]}))
    app = make_app(world, clock=clock, sleep=clock.sleep)
    request = (b"POST /v1beta/models/gemini-2.5-flash:generateContent HTTP/1.1\r\nhost: sim\r\n"
               b"x-goog-api-key: fake-p-1\r\ncontent-length: 40\r\n\r\n"
               b'{"contents":[{"parts":[{"text":"hi"}]}]}')

    async def one(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = b""
        for _ in range(3):  # keep-alive: three exchanges per connection
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            statuses += head[9:12]
        writer.close()
        return statuses

    async with serve(app) as server:
        results = await asyncio.gather(*(one(server.port) for _ in range(300)))
    assert set(results) == {b"200200200"}
    assert server.connections == 300
    assert world.counters()["p-1"][FLASH]["success"] == 900


def test_thread_mode_serves_a_world() -> None:
    """`with serve(world)` runs the server in a background thread for synchronous clients."""
    with serve(World(scenario())) as server, httpx.Client(base_url=server.base_url) as http:
        state = http.get("/_sim/state").json()
        assert state["scenario"] == "scenario"
        assert http.get("/v1beta/models", params={"key": "fake-alpha-1"}).status_code == 200


def test_cli_parses_serve_and_reports_bad_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    """`serve SCENARIO --port N` parses; a bad scenario exits 2 with the error on stderr."""
    args = build_parser().parse_args(["serve", "demo", "--port", "0"])
    assert (args.command, args.scenario, args.port, args.host) == ("serve", "demo", 0, "127.0.0.1")
    assert main(["serve", "no-such-scenario", "--port", "0"]) == 2
    assert "built-in scenarios" in capsys.readouterr().err


def test_python_m_sim_serve_answers_on_a_free_port() -> None:
    """`python -m sim serve demo --port 0` prints its URL and serves the Gemini API there."""
    process = subprocess.Popen([sys.executable, "-m", "sim", "serve", "demo", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base = line.split(" on ")[1].split(" ")[0]
        response = httpx.post(f"{base}/v1beta/models/gemini-2.5-flash:countTokens",
                              json=PROMPT, headers={"x-goog-api-key": "fake-alpha-1"})
        assert response.json() == {"totalTokens": 100}
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()



@pytest.mark.parametrize("version", ["v1", "v1beta"])
async def test_both_api_versions_are_served(app: SimApp, clock: FakeClock,
                                            client: httpx.AsyncClient, version: str) -> None:
    """google-genai 3.x calls ``/v1/...`` by default, keysched ``/v1beta/...``: both answer,
    from the same world, for every method."""
    at(app, clock, 10.0)
    headers = key("alpha-1")
    base = f"/{version}/models"
    generated = await client.post(f"{base}/{FLASH}:generateContent", json=PROMPT,
                                  headers=headers)
    assert generated.status_code == 200
    assert generated.json()["candidates"][0]["finishReason"] == "STOP"
    counted = await client.post(f"{base}/{FLASH}:countTokens", json=PROMPT, headers=headers)
    assert counted.json() == {"totalTokens": 100}
    listed = await client.get(base, headers=headers)
    assert [m["name"] for m in listed.json()["models"]][:2] == [f"models/{FLASH}",
                                                                f"models/{PRO}"]
    assert (await client.get(f"/{version}/other", headers=headers)).status_code == 404
    assert (await client.get("/v2/models", headers=headers)).status_code == 404


@pytest.mark.parametrize("name", builtin_scenarios())
async def test_every_builtin_scenario_serves_the_default_embedding_model(name: str) -> None:
    """``embed()`` works against ``python -m sim serve <any built-in>``, over loopback HTTP."""
    async with running_server(load_scenario(name)) as (server, _), scenario_client(
            server, retry=RetryPolicy(deadline=600.0)) as client:
        vectors = await client.embed(["a", "b"])
    assert len(vectors) == 2
    assert vectors[0] != vectors[1]
