"""`KeyedClient` on a shared store, over loopback HTTP: what sharing changes, and what a failing
store must not change.

Clients of one process share a `MemoryStore` here (the Redis path has its own tests); the
failing and slow stores are fakes of our own `Store` protocol, standing in for a Redis that
refuses connections or hangs.

Every loopback test runs on a `virtual_loop.VirtualTimeLoop` (`e2e_support.virtual_server`).
At time scale 100 on the wall clock a quota minute was 0.6 s of real time: a stall of a busy
machine between a client's decision and the server's count moved calls across windows, which
could give the sharing clients a 429 (or take the lone ones' away) for no fault of the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest
import virtual_loop
from e2e_support import ScenarioTime, scenario_client, server_counters, virtual_server

from keysched import ConfigurationError, KeyedClient, KeyschedError, MemoryStore
from keysched._store import Claim, Grant, Settlement, StoredFact
from sim.scenario import Scenario, parse_scenario

FLASH = "gemini-2.5-flash"


def pool(*, rpm: int | None = 6, keys: int = 3, faults: Sequence[object] = ()) -> Scenario:
    return parse_scenario({
        "description": "shared", "start": "2026-05-12T10:00:00-07:00", "duration": 1e9,
        "time_scale": 100.0, "error_latency": 0.05,
        "models": [{"name": FLASH, "latency_median": 0.5, "latency_sigma": 0.0}],
        "quotas": {FLASH: {"rpm": rpm}} if rpm else {},
        "projects": [{"name": f"p{i}"} for i in range(keys)], "faults": list(faults),
    }, source="<test>")


async def calls(client: KeyedClient, n: int, *, deadline: float = 600.0) -> list[object]:
    return await asyncio.gather(*(client.generate(f"call {i}", deadline=deadline)
                                  for i in range(n)), return_exceptions=True)


def four_twenty_nines(counters: dict[str, dict[str, dict[str, int]]]) -> int:
    return sum(count for per_model in counters.values() for per in per_model.values()
               for name, count in per.items() if "429" in name or "rate_limited" in name)


@virtual_loop.on_virtual_time
async def test_clients_sharing_a_store_never_overspend_a_configured_limit() -> None:
    """Two clients that each know the limits, offered twice what the pool serves: alone they
    collect 429s; sharing one store, none, and every call still ends exactly once."""
    for shared in (False, True):
        async with virtual_server(pool()) as (server, _):
            time = ScenarioTime(server.app)
            store = MemoryStore(clock=time.wall) if shared else None
            clients = [scenario_client(server, limits_known=True, seed=i, store=store)
                       for i in range(2)]
            results = await asyncio.gather(*(calls(c, 24) for c in clients))
            for client in clients:
                await client.aclose()
            counters = await server_counters(server)
        ended = [r for batch in results for r in batch]
        assert len(ended) == 48
        assert all(not isinstance(r, BaseException) or isinstance(r, KeyschedError)
                   for r in ended)
        refused = four_twenty_nines(counters)
        assert (refused == 0) if shared else (refused > 0), counters


@virtual_loop.on_virtual_time
async def test_a_key_disabled_by_one_client_is_left_alone_by_the_other() -> None:
    """After one client learns that a key was revoked, the other sends it nothing more."""
    sc = pool(rpm=None, faults=[{"kind": "key_revoked", "key": "p0-1"}])
    async with virtual_server(sc) as (server, _):
        store = MemoryStore(clock=ScenarioTime(server.app).wall)
        first = scenario_client(server, seed=1, store=store)
        second = scenario_client(server, seed=2, store=store)
        async with first, second:
            await calls(first, 6)  # it meets the revoked key (3 keys, least-loaded)
            assert any(lane.state.value == "disabled" for lane in first.snapshot().lanes)
            results = await calls(second, 12)
    tried = [a.key for r in results if not isinstance(r, BaseException) for a in r.attempts]
    assert len(tried) >= 12
    assert "p0-1" not in tried


class BrokenStore:
    """A store that is down: every call raises, as redis-py does on a refused connection."""

    def __init__(self) -> None:
        self.calls = 0

    async def admit(self, claim: Claim, known_version: int) -> Grant:
        self.calls += 1
        raise ConnectionRefusedError("connection refused")

    async def settle(self, settlements: Sequence[Settlement],
                     facts: Sequence[StoredFact]) -> None:
        self.calls += 1
        raise ConnectionRefusedError("connection refused")

    async def facts(self) -> tuple[int, tuple[StoredFact, ...]]:
        raise ConnectionRefusedError("connection refused")

    async def aclose(self) -> None:
        pass


class HangingStore(BrokenStore):
    """A store that never answers (a Redis stuck or a network partition)."""

    async def admit(self, claim: Claim, known_version: int) -> Grant:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("store_type", [BrokenStore, HangingStore])
@virtual_loop.on_virtual_time
async def test_a_failing_store_fails_no_call_and_disables_nothing(
        store_type: type[BrokenStore], caplog: pytest.LogCaptureFixture) -> None:
    """With the store down or hanging, every call is answered from local state, the
    degradation is logged once, and no key is disabled because of it."""
    caplog.set_level(logging.WARNING, logger="keysched")
    store = store_type()
    async with virtual_server(pool(rpm=None)) as (server, _):
        async with scenario_client(server, store=store, timeout=30.0) as client:
            results = await calls(client, 30)
            lanes = client.snapshot().lanes
            link = client._pump.link
    assert all(not isinstance(r, BaseException) for r in results), results
    assert store.calls >= 1
    assert link is not None
    assert link.degraded
    assert all(lane.state.value != "disabled" for lane in lanes)
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1


class GatedStore(BrokenStore):
    """A store whose admit waits for a gate, and records what is settled."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.settled: list[Settlement] = []
        self.inner = MemoryStore()

    async def admit(self, claim: Claim, known_version: int) -> Grant:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.admit(claim, known_version)

    async def settle(self, settlements: Sequence[Settlement],
                     facts: Sequence[StoredFact]) -> None:
        self.settled += settlements
        await self.inner.settle(settlements, facts)


@virtual_loop.on_virtual_time
async def test_a_call_cancelled_during_admit_ends_once_and_gives_its_claim_back() -> None:
    """Cancelling the caller while the store decides ends the call at once; the claim that
    may have been taken is settled as refunded, and the next call is served."""
    store = GatedStore()
    async with virtual_server(pool(rpm=None)) as (server, _):
        async with scenario_client(server, store=store, timeout=30.0) as client:
            task = asyncio.create_task(client.generate("cancel me"))
            await asyncio.wait_for(store.entered.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            store.gate.set()
            assert (await client.generate("next")).text
            assert client.snapshot().in_flight == 0
            await asyncio.sleep(0.05)  # the background settle
    assert any(s.refund and s.claim.attempt == "1" for s in store.settled)


@pytest.mark.parametrize("bad", ["http://127.0.0.1:6379", 42, "redis-ish"])
def test_a_bad_store_is_a_configuration_error(bad: object) -> None:
    """A store that is neither a redis URL nor a Store object is refused, naming the field."""
    with pytest.raises(ConfigurationError, match="store"):
        KeyedClient(keys=["k"], store=bad)  # type: ignore[arg-type]


def test_a_bad_pool_name_is_a_configuration_error() -> None:
    """A pool name with braces or whitespace is refused, naming the field."""
    with pytest.raises(ConfigurationError, match="pool_name"):
        KeyedClient(keys=["k"], store=MemoryStore(), pool_name="my pool")
