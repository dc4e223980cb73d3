"""401s and 403s over real loopback HTTP, both backends (issue 14, item 9).

Only Google's own structured answers may disable a key for good.  A proxy's bare 401/403 cools
the lane and the call moves on; a 403 about the caller's file fails the call and keeps the key;
"Your project has been denied access" disables the project; the 2026 401 for a key type Google
no longer takes disables the key with a message that says what to do.  The fake server sends
each body from its fault classes (`sim.scenario.FaultKind`).

Each test runs on a `virtual_loop.VirtualTimeLoop`, the server and the client on its clock
(`served`, `reliability_support.virtual_client`).  At time scale 1000 on the wall clock, the
600 s deadline was 0.6 s of real time: under load a call failed with CapacityError before its
first attempt came back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import virtual_loop
from reliability_support import FLASH, virtual_client

from keysched import KeyedClient, NoUsableKeyError, RequestError, RetryPolicy
from keysched._snapshot import LaneState
from sim.httpserver import SimServer
from sim.scenario import Scenario, parse_scenario
from sim.server import make_app, serve
from sim.world import World

BACKENDS = pytest.mark.parametrize("fast", [False, True], ids=["httpx", "aiohttp"])


def scenario(*faults: dict[str, Any]) -> Scenario:
    return parse_scenario({
        "description": "refusals", "start": "2026-05-12T10:00:00-07:00", "duration": 1e9,
        "time_scale": 1.0, "models": [{"name": FLASH, "latency_median": 0.5}],
        "projects": [{"name": "a", "keys": 1}, {"name": "b", "keys": 1}],
        "faults": list(faults),
    }, source="<refusals>")


def served(sc: Scenario) -> SimServer:
    """The fake server for `sc` on the running `VirtualTimeLoop`'s clock."""
    return serve(make_app(World(sc), clock=virtual_loop.clock()))


def client_for(sc: Scenario, base_url: str, fast: bool, **kwargs: Any) -> KeyedClient:
    return virtual_client(sc, base_url, fast=fast, models=[FLASH], embedding_model=FLASH,
                          retry=RetryPolicy(max_attempts=4, deadline=600.0), **kwargs)


@BACKENDS
@pytest.mark.parametrize("code", [401, 403])
@virtual_loop.on_virtual_time
async def test_a_proxys_bare_refusal_cools_the_key_and_never_disables_it(fast: bool,
                                                                         code: int) -> None:
    """Key a-1 sits behind a proxy that answers a bare 401/403 page: the call is served by b-1,
    a-1's lane cools (for a minute), comes back and is tried again; it is never disabled, and
    each refusal is counted in the lane's failures."""
    sc = scenario({"kind": "proxy_refused", "key": "a-1", "code": code})
    async with served(sc) as server, client_for(
            sc, server.base_url, fast) as client:
        attempts = []
        for _ in range(4):  # until one attempt has gone to a-1 (ties between keys may go to b-1)
            result = await client.generate("hi")
            assert result.key == "b-1"
            attempts += [(a.key, a.outcome.value, a.status) for a in result.attempts]
            if ("a-1", "access_refused", code) in attempts:
                break
        assert ("a-1", "access_refused", code) in attempts
        now = client._clock()
        lane = client.snapshot().lane("a-1", FLASH)
        assert lane.state is LaneState.COOLING
        assert lane.cooldown_until is not None
        assert lane.cooldown_until - now <= 60.0
        assert lane.failed == 1
        events = client.events()
        assert [e.kind for e in events if e.key == "a-1"] == ["lane_cooled"]
        assert not any(e.kind == "key_disabled" for e in events)
        await asyncio.sleep(61.0)  # a minute of virtual time: the lane is back
        assert client.snapshot().lane("a-1", FLASH).state is LaneState.AVAILABLE
        for _ in range(4):
            result = await client.generate("hi")
            assert result.key == "b-1"
            if client.snapshot().lane("a-1", FLASH).failed == 2:
                break
        lane = client.snapshot().lane("a-1", FLASH)
        assert (lane.state, lane.failed) == (LaneState.COOLING, 2)
        assert not any(e.kind == "key_disabled" for e in client.events())


@BACKENDS
@virtual_loop.on_virtual_time
async def test_a_403_about_the_callers_file_fails_the_call_and_keeps_the_key(fast: bool) -> None:
    """"You do not have permission to access the File ..." is the request's fault: one attempt,
    a RequestError, no key disabled or cooled."""
    sc = scenario({"kind": "file_denied"})
    async with served(sc) as server, client_for(
            sc, server.base_url, fast) as client:
        with pytest.raises(RequestError) as caught:
            await client.generate("describe files/3c5owo4l5cjd")
        assert len(caught.value.attempts) == 1
        assert caught.value.status == 403
        assert "permission to access the File" in str(caught.value)
        assert {lane.state for lane in client.snapshot().lanes} == {LaneState.AVAILABLE}
        assert not client.events()


@BACKENDS
@virtual_loop.on_virtual_time
async def test_a_project_denied_access_is_disabled_like_service_disabled(fast: bool) -> None:
    """403 "Your project has been denied access" disables every key of project a."""
    sc = scenario({"kind": "project_denied", "project": "a"})
    async with served(sc) as server, client_for(
            sc, server.base_url, fast) as client:
        results = [await client.generate("hi") for _ in range(3)]
        assert {result.key for result in results} == {"b-1"}
        lane = client.snapshot().lane("a-1", FLASH)
        assert (lane.state, lane.reason) == (LaneState.DISABLED, "project_disabled")


@BACKENDS
@virtual_loop.on_virtual_time
async def test_an_unsupported_key_type_is_disabled_with_advice(fast: bool) -> None:
    """The 2026 401 ``ACCESS_TOKEN_TYPE_UNSUPPORTED`` disables the key with its own reason, and
    the error says to make a new key rather than to set up OAuth."""
    sc = scenario({"kind": "key_type_unsupported", "key": "a-1"},
                  {"kind": "key_type_unsupported", "key": "b-1"})
    async with served(sc) as server, client_for(
            sc, server.base_url, fast) as client:
        with pytest.raises(NoUsableKeyError) as caught:
            await client.generate("hi")
        assert caught.value.status == 401
        assert "Expected OAuth 2 access token" in str(caught.value)
        assert "new key" in str(caught.value)
        assert "new key" in (caught.value.service_message or "")
        reasons = {e.key: e.reason for e in client.events() if e.kind == "key_disabled"}
        assert reasons == {"a-1": "key_type_unsupported", "b-1": "key_type_unsupported"}
