"""End to end: `KeyedClient` against the fake Gemini server over a real loopback socket.

One test per fault class of the trace.  Each builds a small scenario, serves it on 127.0.0.1,
runs the client in the scenario's virtual time (`e2e_support`), and checks both sides: what the
client did (attempts, keys, cooldowns in `snapshot()`, the result or the typed error) and what
the server saw (``GET /_sim/counters`` over HTTP, equal to `World.counters()`).  Nothing
asserts on wall-clock durations.

Each test runs on a `virtual_loop.VirtualTimeLoop` at time scale 1
(`e2e_support.virtual_server`): the server's latencies, the client's timeouts, backoffs and
cooldowns and the quota windows all run on the loop's virtual clock, which moves only when
everything waits.  At time scale 50 on the wall clock, a busy machine's delays were virtual
seconds the scenario saw (a 0.16 s stall was the 8 s client timeout; 1.2 s, a quota minute's
end passed), so a stall could time an attempt out or move a call into the next minute.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import virtual_loop
from e2e_support import ScenarioTime, scenario_client, server_counters, virtual_server

from keysched import (
    CapacityError,
    Key,
    KeyedClient,
    NoUsableKeyError,
    OutcomeKind,
    Policy,
    RetryPolicy,
    StreamChunk,
    StreamInterruptedError,
)
from keysched._snapshot import LaneState, PoolSnapshot
from sim.httpserver import SimServer
from sim.scenario import Scenario, parse_scenario
from sim.server import SimApp
from sim.world import World

K = OutcomeKind
PRO = "gemini-2.5-pro"
FLASH = "gemini-2.5-flash"
LITE = "gemini-2.5-flash-lite"
START = "2026-05-12T10:00:00-07:00"
"""On a whole minute, so quota minute windows end at virtual t = 60, 120, ..."""


def scenario(*, projects: list[dict[str, Any]], models: tuple[str, ...] = (FLASH,),
             faults: tuple[dict[str, Any], ...] = (), quotas: dict[str, Any] | None = None,
             start: str = START, **extra: Any) -> Scenario:
    """A small scenario: 1 s models (no jitter, 4 stream chunks), no workload."""
    return parse_scenario({
        "description": "e2e", "start": start, "duration": 600, "time_scale": 1.0,
        "models": [{"name": m, "latency_median": 1.0, "latency_sigma": 0.0, "stream_chunks": 4}
                   for m in models],
        "quotas": quotas or {}, "projects": projects, "faults": list(faults), **extra,
    }, source="<e2e>")


async def saw(server: SimServer, world: World) -> dict[str, dict[str, dict[str, int]]]:
    """The server's counters over HTTP, checked against the world's own."""
    counters = await server_counters(server)
    assert counters == world.counters()
    return counters


def per_model(counters: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Counters summed over keys: ``{model: {name: n}}``."""
    total: dict[str, dict[str, int]] = {}
    for models in counters.values():
        for model, names in models.items():
            for name, n in names.items():
                total.setdefault(model, {})[name] = total.setdefault(model, {}).get(name, 0) + n
    return total


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (a virtual millisecond at a time, 10 virtual seconds at most) until `condition()`."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - polling the client's state, not an event
            await asyncio.sleep(0.001)


async def collect(chunks: AsyncIterator[StreamChunk], into: list[StreamChunk]) -> None:
    """Append every chunk of a stream to `into`, keeping what arrived before a failure."""
    async for chunk in chunks:
        into.append(chunk)


def clock_of(server: SimServer) -> ScenarioTime:
    assert isinstance(server.app, SimApp)
    return ScenarioTime(server.app)


def group(snapshot: PoolSnapshot, project: str, model: str) -> Any:
    return next(g for g in snapshot.groups if g.project == project and g.model == model)


@virtual_loop.on_virtual_time
async def test_revoked_key_is_tried_once_then_disabled() -> None:
    """A 400 API_KEY_INVALID disables the key after one attempt; the request fails over at once."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}],
                  faults=({"kind": "key_revoked", "key": "alpha-1"},))
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        results = [await client.generate(f"question {i}") for i in range(4)]
        snapshot = client.snapshot()
        counters = await saw(server, world)
    failed_over = [r for r in results if len(r.attempts) > 1]
    assert len(failed_over) == 1
    first, second = failed_over[0].attempts
    assert (first.key, first.outcome, first.status, first.google_status) == (
        "alpha-1", K.KEY_INVALID, 400, "INVALID_ARGUMENT")
    assert (second.key, second.outcome) == ("alpha-2", K.SUCCESS)
    assert {r.key for r in results} == {"alpha-2"}
    lane = snapshot.lane("alpha-1", FLASH)
    assert (lane.state, lane.reason) == (LaneState.DISABLED, "key_invalid")
    assert counters == {"alpha-1": {FLASH: {"requests": 1, "key_invalid": 1}},
                        "alpha-2": {FLASH: {"requests": 4, "success": 4}}}


@virtual_loop.on_virtual_time
async def test_leaked_key_is_disabled_and_a_pool_of_only_it_fails_typed() -> None:
    """A 403 leaked key is disabled for good; with no other key the call raises NoUsableKeyError."""
    sc = scenario(projects=[{"name": "alpha"}, {"name": "beta"}],
                  faults=({"kind": "key_leaked", "key": "alpha-1"},))
    async with virtual_server(sc) as (server, world):
        async with scenario_client(server) as client:
            results = [await client.generate(f"question {i}") for i in range(3)]
            lane = client.snapshot().lane("alpha-1", FLASH)
        leaked_only = [k for k in sc.pool_keys() if k.label == "alpha-1"]
        async with scenario_client(server, keys=leaked_only) as alone:
            with pytest.raises(NoUsableKeyError) as caught:
                await alone.generate("anyone?")
        counters = await saw(server, world)
    assert {r.key for r in results} == {"beta-1"}
    assert [a.outcome for r in results for a in r.attempts].count(K.KEY_LEAKED) == 1
    assert (lane.state, lane.reason) == (LaneState.DISABLED, "key_leaked")
    error = caught.value
    assert (error.status, error.key, error.model) == (403, "alpha-1", FLASH)
    assert "leaked" in (error.service_message or "")
    assert [a.outcome for a in error.attempts] == [K.KEY_LEAKED]
    assert counters["alpha-1"] == {FLASH: {"requests": 2, "key_leaked": 2}}  # one per client
    assert counters["beta-1"] == {FLASH: {"requests": 3, "success": 3}}


@virtual_loop.on_virtual_time
async def test_disabled_project_api_disables_every_key_of_the_project() -> None:
    """A 403 SERVICE_DISABLED on one key disables all keys of its project; the others serve."""
    sc = scenario(projects=[{"name": "alpha"}, {"name": "beta", "keys": 2}],
                  faults=({"kind": "project_disabled", "project": "beta"},))
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        results = [await client.generate(f"question {i}") for i in range(4)]
        snapshot = client.snapshot()
        counters = await saw(server, world)
    assert {r.key for r in results} == {"alpha-1"}
    refused = [a for r in results for a in r.attempts if a.outcome is not K.SUCCESS]
    assert [(a.outcome, a.status, a.google_status) for a in refused] == [
        (K.PROJECT_DISABLED, 403, "PERMISSION_DENIED")]
    for label in ("beta-1", "beta-2"):
        lane = snapshot.lane(label, FLASH)
        assert (lane.state, lane.reason) == (LaneState.DISABLED, "project_disabled")
    # One attempt reached the project; its second key was never tried.
    assert per_model({k: v for k, v in counters.items() if k.startswith("beta")}) == {
        FLASH: {"requests": 1, "project_disabled": 1}}
    assert counters["alpha-1"][FLASH]["success"] == 4


@virtual_loop.on_virtual_time
async def test_overloaded_model_falls_back_then_returns(caplog: pytest.LogCaptureFixture) -> None:
    """A 503 that trips the breaker (here at one) cools the best model and the request falls
    back a tier; once it recovers, it returns."""
    caplog.set_level(logging.INFO, logger="keysched")
    sc = scenario(projects=[{"name": "alpha", "keys": 2}], models=(PRO, FLASH),
                  faults=({"kind": "overloaded", "model": PRO, "start": 0, "end": 40},))
    async with virtual_server(sc) as (server, world), scenario_client(
            server, retry=RetryPolicy(overload_cooldown=10.0),
            policy=Policy(overload_trip=1, probe_interval=100.0)) as client:
        during = await client.generate("during the storm")
        cooling = client.snapshot()
        await clock_of(server).until(45.0)
        after = await client.generate("after the storm")
        counters = await saw(server, world)
    assert [(a.model, a.outcome, a.status) for a in during.attempts] == [
        (PRO, K.OVERLOADED, 503), (FLASH, K.SUCCESS, 200)]
    assert during.attempts[0].key != during.attempts[1].key  # a retry avoids the key that failed
    assert during.model == FLASH
    for label in ("alpha-1", "alpha-2"):
        lane = cooling.lane(label, PRO)
        assert (lane.state, lane.reason) == (LaneState.COOLING, "overloaded")
        assert lane.cooldown_until == pytest.approx(during.attempts[0].ended + 10.0, abs=1e-6)
        assert cooling.lane(label, FLASH).state is LaneState.AVAILABLE
    assert (after.model, len(after.attempts)) == (PRO, 1)
    assert per_model(counters) == {PRO: {"requests": 2, "overloaded": 1, "success": 1},
                                   FLASH: {"requests": 1, "success": 1}}
    messages = [r.getMessage() for r in caplog.records if r.name == "keysched"]
    assert any(m.startswith(f"fallback model={FLASH}") for m in messages), messages
    assert any(m.startswith(f"recovered model={PRO}") for m in messages), messages


@virtual_loop.on_virtual_time
async def test_repeated_500s_back_off_then_move_to_the_next_model() -> None:
    """500s are retried after a backoff, on another key; two on one model move to the next model."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}], models=(PRO, FLASH),
                  faults=({"kind": "server_error", "model": PRO},))
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        result = await client.generate("hello")
        snapshot = client.snapshot()
        counters = await saw(server, world)
    assert [(a.key, a.model, a.outcome, a.status) for a in result.attempts] == [
        ("alpha-1", PRO, K.SERVER_ERROR, 500), ("alpha-2", PRO, K.SERVER_ERROR, 500),
        ("alpha-1", FLASH, K.SUCCESS, 200)]
    # A backoff separates the two 500s; a 500 blames no key, so nothing is disabled or benched.
    assert result.attempts[1].started > result.attempts[0].ended
    assert all(lane.state is LaneState.AVAILABLE for lane in snapshot.lanes)
    assert per_model(counters) == {PRO: {"requests": 2, "server_error": 2},
                                   FLASH: {"requests": 1, "success": 1}}


@virtual_loop.on_virtual_time
async def test_random_500s_are_absorbed_by_retries() -> None:
    """With 30% random 500s, every one of 16 concurrent requests succeeds; both sides agree."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}, {"name": "beta", "keys": 2}],
                  faults=({"kind": "server_error", "probability": 0.3},), seed=5)
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        results = await asyncio.gather(*(client.generate(f"q{i}") for i in range(16)))
        snapshot = client.snapshot()
        counters = await saw(server, world)
    attempts = [a for r in results for a in r.attempts]
    assert all(r.attempts[-1].outcome is K.SUCCESS for r in results)
    assert per_model(counters) == {FLASH: {
        "requests": len(attempts), "success": 16,
        "server_error": sum(a.outcome is K.SERVER_ERROR for a in attempts)}}
    assert per_model(counters)[FLASH].get("server_error", 0) > 0
    assert (snapshot.requests_finished, snapshot.in_flight, snapshot.waiting) == (16, 0, 0)


@virtual_loop.on_virtual_time
async def test_bare_429s_bench_the_project_briefly_and_blame_no_key() -> None:
    """429s without details bench a project briefly (shared capacity); its keys stay in rotation."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}, {"name": "beta"}],
                  faults=({"kind": "shared_429", "project": "alpha"},))
    async with virtual_server(sc) as (server, world), scenario_client(
            server, retry=RetryPolicy(shared_capacity_cooldown=10.0)) as client:
        first = await client.generate("first")
        benched = client.snapshot()
        await clock_of(server).until(first.attempts[0].ended + 10.5)
        second = await client.generate("second")
        counters = await saw(server, world)
    assert [(a.key, a.outcome, a.status) for a in first.attempts] == [
        ("alpha-1", K.SHARED_CAPACITY, 429), ("beta-1", K.SUCCESS, 200)]
    assert first.attempts[0].retry_after is None  # a bare 429 names no delay
    alpha = group(benched, "alpha", FLASH)
    assert alpha.reason == "shared_capacity"
    assert alpha.cooldown_until == pytest.approx(first.attempts[0].ended + 10.0, abs=1e-6)
    assert group(benched, "beta", FLASH).cooldown_until is None
    for label in ("alpha-1", "alpha-2"):
        assert benched.lane(label, FLASH).state is LaneState.COOLING  # briefly, not disabled
    # Once the short backoff is over, the project is tried again (its other key this time).
    assert [(a.key, a.outcome) for a in second.attempts] == [
        ("alpha-2", K.SHARED_CAPACITY), ("beta-1", K.SUCCESS)]
    assert counters == {"alpha-1": {FLASH: {"requests": 1, "shared_capacity": 1}},
                        "alpha-2": {FLASH: {"requests": 1, "shared_capacity": 1}},
                        "beta-1": {FLASH: {"requests": 2, "success": 2}}}


@virtual_loop.on_virtual_time
async def test_per_minute_429_honours_retry_delay() -> None:
    """An RPM 429 benches the project until the retryDelay the server gave, then the call is served."""
    sc = scenario(projects=[{"name": "alpha"}], quotas={FLASH: {"rpm": 2}})
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        early = [await client.generate(f"q{i}") for i in range(2)]
        task = asyncio.create_task(client.generate("the third in a minute"))
        await eventually(lambda: client.snapshot().waiting > 0)
        benched = group(client.snapshot(), "alpha", FLASH)
        third = await task
        counters = await saw(server, world)
    assert all(len(r.attempts) == 1 for r in early)
    refused, served = third.attempts
    assert (refused.outcome, refused.status, refused.google_status) == (
        K.RATE_LIMITED_MINUTE, 429, "RESOURCE_EXHAUSTED")
    assert refused.retry_after is not None
    # The server's retryDelay runs to the end of the wall-clock minute (virtual t = 60), counted
    # from when the server decided, a little after the client sent ...
    assert 55.0 < refused.started + refused.retry_after <= 60.0 + 1e-6
    # ... and the client benched the group exactly that long: the retry waited for it.
    assert benched.reason == "rate_limited_minute"
    assert benched.cooldown_until == pytest.approx(refused.ended + refused.retry_after, abs=1e-6)
    assert served.outcome is K.SUCCESS
    assert served.started >= benched.cooldown_until
    # The server confirms: one refusal, no hammering, and the retry landed in a new window.
    assert counters == {"alpha-1": {FLASH: {"requests": 4, "success": 3,
                                            "rate_limited_minute": 1}}}


@virtual_loop.on_virtual_time
async def test_per_day_429_benches_the_group_until_midnight_pacific() -> None:
    """An RPD 429 benches the group until midnight Pacific, not for its short retryDelay."""
    # 23:58:30 PDT: the minute window ends at t = 30; the day ends at t = 90.
    sc = scenario(projects=[{"name": "alpha"}], models=(FLASH, LITE),
                  quotas={FLASH: {"rpd": 2}}, start="2026-05-12T23:58:30-07:00")
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        time = clock_of(server)
        before = [await client.generate(f"q{i}") for i in range(3)]
        benched = group(client.snapshot(), "alpha", FLASH)
        await time.until(40.0)  # the 429's retryDelay (to t = 30) is over, the day is not
        same_day = await client.generate("still today")
        await time.until(92.0)
        next_day = await client.generate("tomorrow")
        counters = await saw(server, world)
    assert [r.model for r in before] == [FLASH, FLASH, LITE]
    refused = before[2].attempts[0]
    assert (refused.model, refused.outcome, refused.status) == (FLASH, K.RATE_LIMITED_DAY, 429)
    assert refused.retry_after is not None
    assert 25.0 < refused.started + refused.retry_after <= 30.0 + 1e-6  # the minute's end
    assert benched.reason == "rate_limited_day"
    assert benched.cooldown_until == pytest.approx(90.0, abs=1e-3)  # midnight PDT
    assert (same_day.model, len(same_day.attempts)) == (LITE, 1)
    assert (next_day.model, len(next_day.attempts)) == (FLASH, 1)
    assert counters == {"alpha-1": {FLASH: {"requests": 4, "success": 3, "rate_limited_day": 1},
                                    LITE: {"requests": 2, "success": 2}}}


@virtual_loop.on_virtual_time
async def test_limit_zero_makes_the_model_unavailable_for_that_project_only() -> None:
    """A `limit: 0` 429 marks the model unavailable for that project; other projects serve it."""
    sc = scenario(projects=[{"name": "alpha", "quotas": {PRO: 0}}, {"name": "beta"}],
                  models=(PRO, FLASH))
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        results = [await client.generate(f"q{i}") for i in range(4)]
        snapshot = client.snapshot()
        counters = await saw(server, world)
    assert {r.model for r in results} == {PRO}
    refusals = [a for r in results for a in r.attempts if a.outcome is not K.SUCCESS]
    assert [(a.key, a.model, a.outcome, a.status) for a in refusals] == [
        ("alpha-1", PRO, K.QUOTA_ZERO, 429)]
    lane = snapshot.lane("alpha-1", PRO)
    assert (lane.state, lane.reason) == (LaneState.UNAVAILABLE, "quota_zero")
    assert snapshot.lane("alpha-1", FLASH).state is LaneState.AVAILABLE
    assert group(snapshot, "alpha", PRO).unavailable
    assert counters["alpha-1"] == {PRO: {"requests": 1, "quota_zero": 1}}
    assert counters["beta-1"] == {PRO: {"requests": 4, "success": 4}}


@virtual_loop.on_virtual_time
async def test_slow_answers_and_hangs_time_out_on_the_client() -> None:
    """A slow answer within the timeout is served; a slower one or a hang is a client timeout."""
    sc = scenario(projects=[{"name": "alpha", "keys": 3}, {"name": "beta"}], timeout=60,
                  faults=({"kind": "slow", "key": "alpha-1", "factor": 3},      # 3 s: in time
                          {"kind": "slow", "key": "alpha-2", "factor": 40},     # 40 s: too slow
                          {"kind": "timeout", "key": "alpha-3"}))               # hangs 60 s
    async with virtual_server(sc) as (server, world), scenario_client(
            server, timeout=8.0, retry=RetryPolicy(jitter=0.0)) as client:
        results = [await client.generate(f"q{i}") for i in range(4)]
        snapshot = client.snapshot()
        counters = await saw(server, world)
    attempts = [(a.key, a.outcome) for r in results for a in r.attempts]
    assert ("alpha-1", K.SUCCESS) in attempts
    assert ("alpha-2", K.TIMEOUT) in attempts
    assert ("alpha-3", K.TIMEOUT) in attempts
    assert all(r.attempts[-1].outcome is K.SUCCESS for r in results)
    for r in results:
        for a in r.attempts:
            if a.outcome is K.TIMEOUT:
                assert a.status == 0
                assert a.ended - a.started >= 8.0 - 0.5  # the client's timeout, virtual
    # A timeout blames no key: the lanes stay in rotation.
    assert all(lane.state is LaneState.AVAILABLE for lane in snapshot.lanes)
    # Every attempt reached the server.  It answered the too-slow ones after the client had
    # left (a success on its side), and sent nothing for the hangs.
    for label in ("alpha-1", "alpha-2", "alpha-3", "beta-1"):
        sent = sum(a.key == label for r in results for a in r.attempts)
        assert counters.get(label, {}).get(FLASH, {}).get("requests", 0) == sent
    assert set(counters["alpha-2"][FLASH]) == {"requests", "success"}
    assert set(counters["alpha-3"][FLASH]) == {"requests", "timeout"}


@virtual_loop.on_virtual_time
async def test_a_504_is_a_timeout_retried_elsewhere() -> None:
    """A 504 DEADLINE_EXCEEDED is classified as a timeout and retried on another key."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}], timeout=2,
                  faults=({"kind": "deadline_exceeded", "key": "alpha-1"},))
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        result = await client.generate("hello")
        counters = await saw(server, world)
    assert [(a.key, a.outcome, a.status) for a in result.attempts] == [
        ("alpha-1", K.TIMEOUT, 504), ("alpha-2", K.SUCCESS, 200)]
    assert counters["alpha-1"] == {FLASH: {"requests": 1, "timeout": 1}}


@virtual_loop.on_virtual_time
async def test_connection_resets_are_retried_after_a_backoff() -> None:
    """A reset before any response is a connection error: retried after a backoff on another key."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}],
                  faults=({"kind": "reset", "key": "alpha-1"},))
    async with virtual_server(sc) as (server, world), scenario_client(
            server, retry=RetryPolicy(jitter=0.0, backoff_base=0.5)) as client:
        results = [await client.generate(f"q{i}") for i in range(3)]
        snapshot = client.snapshot()
        counters = await saw(server, world)
    attempts = [a for r in results for a in r.attempts]
    assert all(r.attempts[-1].outcome is K.SUCCESS and r.key == "alpha-2" for r in results)
    resets = [a for a in attempts if a.key == "alpha-1"]
    assert resets
    assert {(a.outcome, a.status) for a in resets} == {(K.CONNECTION_ERROR, 0)}
    for r in results:
        if len(r.attempts) > 1:
            reset, retry = r.attempts
            assert retry.started - reset.ended >= 0.5 - 0.05  # the backoff, not a hot retry
    # A reset blames no key: alpha-1 stays in rotation.
    assert all(lane.state is LaneState.AVAILABLE for lane in snapshot.lanes)
    assert counters == {
        "alpha-1": {FLASH: {"requests": len(resets), "connection_error": len(resets)}},
        "alpha-2": {FLASH: {"requests": 3, "success": 3}}}


@virtual_loop.on_virtual_time
async def test_stream_cut_after_chunks_raises_with_the_chunks_intact() -> None:
    """A stream cut after k chunks raises StreamInterruptedError; the k chunks reached the caller."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}],
                  faults=({"kind": "stream_cut", "key": "alpha-1", "after_chunks": 2},))
    chunks: list[StreamChunk] = []
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        with pytest.raises(StreamInterruptedError) as caught:
            await collect(client.stream("tell me a story"), chunks)
        snapshot = client.snapshot()
        whole = [chunk async for chunk in client.stream("and another")]
        counters = await saw(server, world)
    error = caught.value
    assert error.chunks_delivered == 2
    assert [c.index for c in chunks] == [0, 1]
    assert all(c.text and c.key == "alpha-1" and c.model == FLASH for c in chunks)
    assert chunks[-1].finish_reason is None
    assert [a.outcome for a in error.attempts] == [K.CONNECTION_ERROR]
    # A broken stream is a failed request in the pool's books (not a cancelled one), and
    # nothing is left in flight or queued.
    assert (snapshot.requests_failed, snapshot.requests_cancelled) == (1, 0)
    assert (snapshot.in_flight, snapshot.waiting) == (0, 0)
    assert [c.index for c in whole] == [0, 1, 2, 3]
    assert whole[-1].finish_reason == "STOP"
    # No retry was sent for the broken stream.
    assert counters == {"alpha-1": {FLASH: {"requests": 1, "connection_error": 1}},
                        "alpha-2": {FLASH: {"requests": 1, "success": 1}}}


@virtual_loop.on_virtual_time
async def test_stream_failing_before_its_first_chunk_fails_over_transparently() -> None:
    """A stream cut before its first chunk is retried on another key; the caller sees one stream."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}],
                  faults=({"kind": "stream_cut", "key": "alpha-1", "after_chunks": 0},))
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        chunks = [chunk async for chunk in client.stream("tell me a story")]
        snapshot = client.snapshot()
        counters = await saw(server, world)
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert {c.key for c in chunks} == {"alpha-2"}
    assert chunks[-1].finish_reason == "STOP"
    assert (snapshot.requests_finished, snapshot.requests_failed) == (1, 0)
    assert counters == {"alpha-1": {FLASH: {"requests": 1, "connection_error": 1}},
                        "alpha-2": {FLASH: {"requests": 1, "success": 1}}}


@virtual_loop.on_virtual_time
async def test_error_inside_a_200_stream() -> None:
    """An error object inside a 200 SSE stream: after a chunk it interrupts, before any it fails over."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}], models=(PRO, FLASH), faults=(
        {"kind": "stream_error", "model": PRO, "key": "alpha-1", "after_chunks": 1},
        {"kind": "stream_error", "model": PRO, "key": "alpha-2", "after_chunks": 0}))
    chunks: list[StreamChunk] = []
    async with virtual_server(sc) as (server, world), scenario_client(
            server, retry=RetryPolicy(overload_cooldown=5.0),
            policy=Policy(overload_trip=1, probe_interval=100.0)) as client:
        with pytest.raises(StreamInterruptedError) as caught:
            await collect(client.stream("first"), chunks)
        cooled = client.snapshot().lane("alpha-1", PRO)
        await clock_of(server).until(client.snapshot().now + 5.5)
        failed_over = [chunk async for chunk in client.stream("second")]
        counters = await saw(server, world)
    error = caught.value
    # The status is the embedded error object's code, not the 200 the stream started with.
    assert (error.chunks_delivered, error.status, error.google_status, error.model) == (
        1, 503, "UNAVAILABLE", PRO)
    assert [(a.key, a.outcome) for a in error.attempts] == [("alpha-1", K.OVERLOADED)]
    assert len(chunks) == 1
    assert chunks[0].text
    assert (cooled.state, cooled.reason) == (LaneState.COOLING, "overloaded")
    # The second stream's first attempt (alpha-2) fails before any chunk: the caller sees only
    # the fallback's complete stream.
    assert [c.index for c in failed_over] == [0, 1, 2, 3]
    assert {(c.key, c.model) for c in failed_over} == {("alpha-1", FLASH)}
    assert counters == {"alpha-1": {PRO: {"requests": 1, "overloaded": 1},
                                    FLASH: {"requests": 1, "success": 1}},
                        "alpha-2": {PRO: {"requests": 1, "overloaded": 1}}}


@virtual_loop.on_virtual_time
async def test_deadline_while_every_lane_cools_raises_capacity_error() -> None:
    """When no lane can serve before the deadline, the call fails with CapacityError and a retry time."""
    sc = scenario(projects=[{"name": "alpha"}], quotas={FLASH: {"rpm": 1}})
    async with virtual_server(sc) as (server, world), scenario_client(server) as client:
        first = await client.generate("uses the minute")
        with pytest.raises(CapacityError) as caught:
            await client.generate("too late", deadline=10.0)
        counters = await saw(server, world)
    error = caught.value
    assert [a.outcome for a in error.attempts] == [K.RATE_LIMITED_MINUTE]
    refused = error.attempts[0]
    assert refused.retry_after is not None
    assert error.retry_at is not None
    # The 429 taught "1 per minute": capacity returns when the first call leaves the budget's
    # minute (its window ends `quota_margin` late), after the group's cooldown has ended.
    # (The core counted the first call when it decided to send it, a moment before `started`;
    # on a busy machine the 429 may come back so late that its cooldown ends later still.)
    sent = first.attempts[0].started
    cooldown_end = refused.ended + refused.retry_after
    assert cooldown_end <= error.retry_at
    assert sent + 59.0 < error.retry_at <= max(cooldown_end,
                                               sent + 60.0 + RetryPolicy().quota_margin)
    assert error.retry_at >= 60.0  # the next minute window
    assert counters == {"alpha-1": {FLASH: {"requests": 2, "success": 1,
                                            "rate_limited_minute": 1}}}


def test_scenario_client_uses_the_scenarios_keys_without_secrets_in_repr() -> None:
    """The e2e client factory hands over the scenario's keys; the client's repr shows labels only."""
    sc = scenario(projects=[{"name": "alpha", "keys": 2}])
    client = KeyedClient(keys=sc.pool_keys(), models=sc.models_best_first)
    try:
        assert "fake-" not in repr(client)
        assert all(isinstance(k, Key) and k.project == "alpha" for k in sc.pool_keys())
    finally:
        asyncio.run(client.aclose())
