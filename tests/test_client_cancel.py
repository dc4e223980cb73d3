"""Cancelling many calls mid-flight leaves the pool clean and no task behind."""

from __future__ import annotations

import asyncio

import httpx
from helpers import Server, make_client, secret
from virtual_clock import VirtualClock

from keysched._config import Key

N = 1000


async def test_cancelling_1000_generate_calls_mid_flight() -> None:
    """1,000 calls cancelled while their HTTP attempts hang: in-flight counts return to zero."""
    before = asyncio.all_tasks()
    never = asyncio.Event()

    async def hang(request: httpx.Request, n: int) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    vc = VirtualClock()
    server = Server(hang)
    keys = [Key(secret=secret(i), label=f"k{i}", project=f"p{i}") for i in range(10)]
    client = make_client(server, vc, keys=keys)
    try:
        tasks = [asyncio.create_task(client.generate(f"q{i}")) for i in range(N)]
        for _ in range(100):
            if len(server.requests) == N:
                break
            await asyncio.sleep(0)
        assert len(server.requests) == N
        snap = client.snapshot()
        assert snap.in_flight == N
        assert {lane.in_flight for lane in snap.lanes} == {N // 10}
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        snap = client.snapshot()
        assert (snap.in_flight, snap.waiting) == (0, 0)
        assert all(lane.in_flight == 0 for lane in snap.lanes)
        assert snap.requests_cancelled == N
        assert snap.requests_submitted == N
    finally:
        await client.aclose()
    assert asyncio.all_tasks() == before


async def test_cancelling_waiting_calls_releases_their_places() -> None:
    """Calls cancelled while queued (every lane busy) end cancelled, and later calls still run."""
    before = asyncio.all_tasks()
    gate = asyncio.Event()

    async def gated(request: httpx.Request, n: int) -> httpx.Response:
        await gate.wait()
        from helpers import success

        return success()

    vc = VirtualClock(autojump=False)
    server = Server(gated)
    async with make_client(server, vc, keys=[secret(1)], max_in_flight_per_key=2) as client:
        tasks = [asyncio.create_task(client.generate(str(i))) for i in range(50)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(server.requests) == 2
        assert client.snapshot().waiting == 48
        for task in tasks[2:]:
            task.cancel()
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 48
        assert (await client.generate("after")).key == "key#1"
        snap = client.snapshot()
        assert (snap.in_flight, snap.waiting, snap.requests_cancelled) == (0, 0, 48)
    assert asyncio.all_tasks() == before
