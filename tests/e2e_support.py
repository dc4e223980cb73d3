"""Loopback fixtures for end-to-end tests: the fake Gemini server on 127.0.0.1, and a
`KeyedClient` that lives in the scenario's virtual time.

Why the client runs on the scenario's clock: the server answers in virtual seconds (a
``retryDelay`` of "49.5s" means 49.5 virtual seconds), so a client on the wall clock would wait
`time_scale` times too long and place midnight Pacific somewhere else.  `ScenarioTime` reads the
server app's own virtual time (so the client's core time *is* the server's scenario time),
sleeps ``d / time_scale`` real seconds, and gives the wall clock as the scenario's start plus
virtual time.  httpx's timeouts are real seconds, so `ScaledTimeouts` divides each request's
timeouts by the scale: a client ``timeout=5`` means 5 virtual seconds, like everything else.

On a `virtual_loop.VirtualTimeLoop` (`virtual_server`) the scale is 1 and the "real" seconds
are the loop's virtual ones: a busy machine then changes nothing the scenario sees.

Stable API (other test modules import it): `running_server`, `virtual_server`, `ScenarioTime`,
`ScaledTimeouts`, `scenario_client`, `server_counters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import virtual_loop

from keysched import KeyedClient
from sim.httpserver import SimServer
from sim.scenario import Scenario
from sim.server import SimApp, make_app, serve
from sim.world import World

__all__ = ["ScaledTimeouts", "ScenarioTime", "running_server", "scenario_client",
           "server_counters", "virtual_server"]


@contextlib.asynccontextmanager
async def running_server(scenario: Scenario, *, seed: int | None = None,
                         time_scale: float | None = None,
                         clock: Callable[[], float] = time.monotonic,
                         ) -> AsyncIterator[tuple[SimServer, World]]:
    """Serve `scenario` on 127.0.0.1 (a free port) in the running loop; virtual t=0 is now.

    Yields ``(server, world)``; ``server.base_url`` is the URL to give a client and
    ``server.app`` the `SimApp` (its ``now()`` is the virtual time).  On a
    `virtual_loop.VirtualTimeLoop`, pass ``clock=loop.time`` and ``time_scale=1.0``.
    """
    world = World(scenario, seed=seed)
    async with serve(make_app(world, time_scale=time_scale, clock=clock)) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        yield server, world


def virtual_server(scenario: Scenario, *, seed: int | None = None,
                   ) -> contextlib.AbstractAsyncContextManager[tuple[SimServer, World]]:
    """`running_server` on the running `virtual_loop.VirtualTimeLoop`'s clock, at time scale 1."""
    return running_server(scenario, seed=seed, time_scale=1.0, clock=virtual_loop.clock())


class ScenarioTime:
    """The scenario's virtual time as a client clock: ``clock``, ``sleep`` and ``wall``."""

    def __init__(self, app: SimApp) -> None:
        self.app = app
        self.scale = app.time_scale
        self.epoch = app.world.scenario.start_epoch

    def clock(self) -> float:
        """Virtual seconds since the scenario start (the server's own `now`)."""
        return self.app.now()

    def wall(self) -> float:
        """Unix time in the scenario: its start plus virtual time."""
        return self.epoch + self.app.now()

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of virtual time."""
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    async def until(self, virtual: float) -> None:
        """Sleep until the virtual time is at least `virtual`."""
        # A loop, not one sleep: the event loop may wake us a hair early.  A microsecond short
        # is there: on a virtual-time loop a sleep below the clock's float resolution would
        # never move it.
        while (left := virtual - self.clock()) > 1e-6:  # noqa: ASYNC110 - waiting on a clock
            await asyncio.sleep(left / self.scale)


class ScaledTimeouts(httpx.AsyncBaseTransport):
    """An httpx transport that reads every timeout as virtual seconds (divided by `scale`)."""

    def __init__(self, scale: float, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.scale = scale
        # verify=False: plain HTTP on loopback needs no TLS, and loading the CA bundle costs
        # ~30 ms, seconds of virtual time at a large scale.
        self.inner = inner or httpx.AsyncHTTPTransport(
            verify=False,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout")
        if isinstance(timeouts, dict):
            request.extensions["timeout"] = {
                name: None if value is None else value / self.scale
                for name, value in timeouts.items()}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def scenario_client(server: SimServer, *, limits_known: bool | None = None, seed: int = 0,
                    **kwargs: Any) -> KeyedClient:
    """A `KeyedClient` on `server`'s scenario: its keys and models, in its virtual time.

    Args:
        server: a server from `running_server`.
        limits_known: hand the scenario's quotas to the client (default: the scenario's flag).
        seed: seeds the client's jitter.
        kwargs: any other `KeyedClient` argument (``keys``, ``models``, ``retry``,
            ``timeout`` ...); keys and models default to the scenario's.
    """
    app = server.app
    assert isinstance(app, SimApp)
    scenario = app.world.scenario
    known = scenario.limits_known if limits_known is None else limits_known
    time = ScenarioTime(app)
    kwargs.setdefault("keys", scenario.pool_keys())
    kwargs.setdefault("models", scenario.models_best_first)
    kwargs.setdefault("limits", scenario.known_limits() if known else ())
    return KeyedClient(base_url=server.base_url,
                       transport=ScaledTimeouts(time.scale), clock=time.clock, sleep=time.sleep,
                       wall_clock=time.wall, rng=random.Random(seed), **kwargs)


async def server_counters(server: SimServer) -> dict[str, dict[str, dict[str, int]]]:
    """What the server saw, read over HTTP from ``GET /_sim/counters``."""
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.get("/_sim/counters")
        response.raise_for_status()
        counters: dict[str, dict[str, dict[str, int]]] = response.json()
        return counters
