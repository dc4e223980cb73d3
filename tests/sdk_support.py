"""Shared pieces of the SDK tests: a hostile scenario, the official SDKs wired to a pool, a tap.

The scenario has everything the issue names at once: a revoked key (``revoked-1``), a
rate-limited project (``tight``: 1 request per minute per model, limits not told to the client),
and an overloaded best model (every ``gemini-2.5-flash`` attempt answers 503), so every call
that reaches the server fails at least once unless the pool routes it well.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
from e2e_support import ScaledTimeouts, ScenarioTime

from keysched._client import KeyedClient
from sim.scenario import Scenario, parse_scenario
from sim.server import SimApp

FLASH = "gemini-2.5-flash"
LITE = "gemini-2.5-flash-lite"
EMBED = "gemini-embedding-001"
SCALE = 100.0
CALLER_KEY = "AIzaCALLERsOwnKeyThatMustNeverLeave0123"
"""The key a caller's SDK was built with: the pool replaces it on every request."""


def hostile_scenario(*, overloaded: bool = True, faults: tuple[dict[str, Any], ...] = (),
                     stream_chunks: int = 3) -> Scenario:
    """Revoked key, rate-limited project, overloaded best model (see the module docstring)."""
    fault_list = [{"kind": "key_revoked", "key": "revoked-1"}, *faults]
    if overloaded:
        fault_list.append({"kind": "overloaded", "model": FLASH})
    return parse_scenario({
        "description": "sdk", "start": "2026-05-12T10:00:00-07:00", "duration": 1e9,
        "time_scale": SCALE,
        "models": [{"name": FLASH, "latency_median": 1.0, "latency_sigma": 0.0,
                    "stream_chunks": stream_chunks},
                   {"name": LITE, "latency_median": 0.5, "latency_sigma": 0.0,
                    "stream_chunks": stream_chunks},
                   {"name": EMBED, "latency_median": 0.2, "latency_sigma": 0.0}],
        "projects": [{"name": "revoked", "keys": 1},
                     {"name": "tight", "keys": 2,
                      "quotas": {FLASH: {"rpm": 1}, LITE: {"rpm": 1}, EMBED: {"rpm": 1}}},
                     {"name": "open", "keys": 2}],
        "faults": fault_list,
    }, source="<sdk>")


def pool_options(app: SimApp, inner: httpx.AsyncBaseTransport | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """`KeyedClient` options for `app`'s scenario in its virtual time (no limits told)."""
    time = ScenarioTime(app)
    scenario = app.world.scenario
    options: dict[str, Any] = {
        "keys": scenario.pool_keys(), "models": scenario.models_best_first[:2],
        "embedding_model": EMBED, "transport": ScaledTimeouts(time.scale, inner),
        "clock": time.clock, "sleep": time.sleep, "wall_clock": time.wall,
        "rng": random.Random(0), "timeout": 30.0}
    options.update(overrides)
    return options


def pool_for(app: SimApp, base_url: str, **overrides: Any) -> KeyedClient:
    return KeyedClient(base_url=base_url, **pool_options(app, **overrides))


class Counting(httpx.AsyncBaseTransport):
    """Counts the requests an SDK hands its transport (SDK retries would show up here)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Tap(httpx.AsyncBaseTransport):
    """Records every request that leaves the pool (URL, headers, body), then sends it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=False)
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.seen.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def requests_of(counters: dict[str, dict[str, dict[str, int]]], label: str) -> int:
    return sum(names.get("requests", 0) for names in counters.get(label, {}).values())


def outcomes(counters: dict[str, dict[str, dict[str, int]]], name: str) -> int:
    return sum(names.get(name, 0) for models in counters.values() for names in models.values())
