"""Sharing under faults, against a real Redis: processes racing, a worker killed, Redis away.

- Two processes race for the last unit of 300 budgets: each unit goes to exactly one of them.
- A worker killed with SIGKILL while holding leases: its leases end at their expiry on Redis's
  clock, and another process then gets the key's share.
- Redis stopped mid-run and started again (a server this test started): every call ends once
  with an answer, the degradation is logged once, no key is disabled for it, and the facts the
  client holds are published again when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import running_server, scenario_client
from redis_support import STORE_TIMEOUT, OwnRedis

from keysched import KeyschedError, RedisStore, RetryPolicy
from keysched._store import Claim, StoredFact
from sim.scenario import Scenario, parse_scenario

WORKER = str(Path(__file__).with_name("shared_worker.py"))
FLASH = "gemini-2.5-flash"
GUARD = 60.0  # seconds: a hang guard, never a measurement


def worker(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, WORKER, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def test_two_processes_never_both_take_the_last_unit(shared_redis: str, pool_name: str) -> None:
    """Each of 300 one-unit budgets is taken by exactly one of two racing processes."""
    groups = 300
    racers = [worker("race", shared_redis, pool_name, str(groups)) for _ in range(2)]
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    won = []
    for racer in racers:
        out, _ = racer.communicate(timeout=GUARD)
        assert racer.returncode == 0
        won.append({int(i) for i in out.split()})
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == set(range(groups))


async def test_a_killed_worker_frees_its_leases_at_their_expiry(shared_redis: str,
                                                               pool_name: str) -> None:
    """A process killed holding both of a key's leases blocks the key until the leases' end,
    on Redis's clock, and no longer."""
    ttl = 1.0
    doomed = worker("hold", shared_redis, pool_name, "k1", "2", str(ttl))
    assert doomed.stdout is not None
    assert doomed.stdout.readline().strip() == "held"
    store = RedisStore(shared_redis, pool_name=pool_name, timeout=30.0)
    try:
        seconds, micros = await store.redis.time()
        killed_at = seconds + micros / 1e6
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=GUARD)  # reaps it and closes its pipes

        def ask(n: int) -> Claim:
            return Claim("alive", str(n), "k1", "p", "m", key_cap=2, day_end=4e9)

        refused = await store.admit(ask(0), 0)
        assert (refused.granted, refused.why) == (False, "in_flight")
        # The refusal came after the kill: the leases end within their TTL of it.
        assert 0 < refused.retry_after <= ttl
        guard = time.monotonic() + GUARD
        n = 1
        while not (grant := await store.admit(ask(n), 0)).granted:
            assert time.monotonic() < guard
            n += 1
            await asyncio.sleep(0.05)
        seconds, micros = await store.redis.time()
        assert grant.granted
        # Not before the leases' end: the refusal came after `killed_at`.
        assert seconds + micros / 1e6 >= killed_at + refused.retry_after
    finally:
        await store.aclose()


async def facts_once_published(url: str, pool_name: str, *, key: str) -> tuple[StoredFact, ...]:
    """The pool's shared facts on Redis, read again until one is about `key` or `GUARD` passes.

    The client publishes in the background: a fixed wait (0.2 s) was sometimes too short on a
    busy machine.  Polled, a client that never republishes still fails, after the guard."""
    store = RedisStore(url, pool_name=pool_name, timeout=STORE_TIMEOUT)
    try:
        guard = time.monotonic() + GUARD
        while True:
            _, facts = await store.facts()
            if any(f.scope == "key" and f.key == key for f in facts) or time.monotonic() > guard:
                return facts
            await asyncio.sleep(0.05)
    finally:
        await store.aclose()


def restart_scenario() -> Scenario:
    return parse_scenario({
        "description": "redis restart", "start": "2026-05-12T10:00:00-07:00", "duration": 1e9,
        "time_scale": 100.0, "error_latency": 0.05,
        "models": [{"name": FLASH, "latency_median": 0.5, "latency_sigma": 0.0}],
        "quotas": {FLASH: {"rpm": 600}},
        "projects": [{"name": f"p{i}"} for i in range(4)],
        "faults": [{"kind": "key_revoked", "key": "p0-1"}],
    }, source="<test>")


async def test_redis_stopped_and_restarted_mid_run(own_redis: OwnRedis,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Calls go on while Redis is down; one warning; no key disabled for it; the facts are
    published again once Redis is back."""
    caplog.set_level(logging.WARNING, logger="keysched")
    async with running_server(restart_scenario()) as (server, _):
        # At time scale 100 a 30 s timeout was 0.3 s of real time, which a busy machine can
        # overrun: 3,000 and 6,000 virtual seconds (30 s and 60 s) only bound a hang.
        client = scenario_client(server, limits_known=True, timeout=3000.0, store=own_redis.url,
                                 pool_name="restart", retry=RetryPolicy(deadline=6000.0))
        link = client._pump.link
        assert link is not None
        async with client:
            async def batch(n: int) -> list[object]:
                return await asyncio.gather(*(client.generate(f"call {i}") for i in range(n)),
                                            return_exceptions=True)

            first = await batch(20)
            assert all(not isinstance(r, BaseException) for r in first)
            disabled = {lane.key for lane in client.snapshot().lanes if lane.state.value ==
                        "disabled"}
            assert disabled == {"p0-1"}  # revoked by the server: a real fact
            own_redis.stop()
            down = await batch(20)
            assert all(not isinstance(r, KeyschedError) for r in down), down
            assert link.degraded
            own_redis.start()
            guard = time.monotonic() + GUARD
            while link.degraded:
                assert time.monotonic() < guard
                again = await batch(5)
                assert all(not isinstance(r, BaseException) for r in again)
            disabled_now = {lane.key for lane in client.snapshot().lanes
                            if lane.state.value == "disabled"}
            assert disabled_now == {"p0-1"}  # nothing disabled because Redis failed
            facts = await facts_once_published(own_redis.url, "restart", key="p0-1")
    assert any(f.scope == "key" and f.key == "p0-1" for f in facts)  # republished
    warnings = [r for r in caplog.records if "shared store is unreachable" in r.getMessage()]
    assert len(warnings) == 1
