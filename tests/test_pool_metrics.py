"""The Prometheus collector: a scrape's text says what the pool did, over real loopback HTTP.

The client runs against the fake server on a `virtual_loop.VirtualTimeLoop`; scrapes are taken
from a worker thread, as ``prometheus_client``'s HTTP server takes them, while the loop runs.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import virtual_loop
from e2e_support import ScenarioTime, running_server, scenario_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_recorder import FLASH, calls, scenario

from keysched import GenerateResult, RetryPolicy
from keysched.metrics import PoolCollector
from sim.server import SimApp

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_a_scrape_shows_the_pool_mid_run_and_after() -> None:
    """During a 429's cooldown: the lane cools, requests wait; after: outcomes, limits, waits."""

    async def main() -> tuple[str, str, list[Any]]:
        loop = asyncio.get_running_loop()
        async with running_server(scenario(revoked=True), seed=1, time_scale=1.0,
                                  clock=loop.time) as (server, _):
            assert isinstance(server.app, SimApp)
            time = ScenarioTime(server.app)
            async with scenario_client(server, timeout=10.0,
                                       retry=RetryPolicy(deadline=400.0)) as client:
                registry = CollectorRegistry()
                registry.register(PoolCollector(client))
                running = asyncio.ensure_future(calls(client, 5))
                await time.until(5.0)  # the quota minute's two answers are in; the rest wait
                during = await asyncio.to_thread(scrape, registry)
                results = await running
            # Closed: the recorder's writer thread has counted every line.
            after = await asyncio.to_thread(scrape, registry)
        return during, after, results

    during_text, after_text, results = virtual_loop.run(main)
    assert all(isinstance(r, GenerateResult) for r in results)
    during = samples(during_text)
    lane = {"key": "p1-1", "project": "p1", "model": FLASH}
    assert value(during, "keysched_lane_cooldown_seconds", **lane) > 40  # a 60 s retry delay
    assert value(during, "keysched_lane_state", **lane, state="cooling",
                 reason="rate_limited_minute") == 1
    assert value(during, "keysched_requests_waiting") == 3
    assert value(during, "keysched_lane_state", key="p2-1", project="p2", model=FLASH,
                 state="disabled", reason="key_invalid") == 1

    after = samples(after_text)
    assert value(after, "keysched_lane_cooldown_seconds", **lane) >= 0
    assert value(after, "keysched_attempt_outcomes_total", **lane, outcome="success") == 5
    limited = value(after, "keysched_attempt_outcomes_total", **lane,
                    outcome="rate_limited_minute")
    assert limited >= 1
    assert value(after, "keysched_lane_attempts_total", **lane, result="succeeded") == 5
    assert value(after, "keysched_lane_attempts_total", **lane, result="dispatched") == 5 + limited
    assert value(after, "keysched_group_limit", project="p1", model=FLASH, dimension="rpm",
                 source="learned") == 2
    used = value(after, "keysched_group_used", project="p1", model=FLASH, dimension="rpm")
    assert value(after, "keysched_group_budget_left", project="p1", model=FLASH,
                 dimension="rpm") == max(0, 2 - used)
    assert value(after, "keysched_requests_total", result="submitted") == 5
    assert value(after, "keysched_requests_total", result="finished") == 5
    assert value(after, "keysched_queue_wait_seconds_count") == 5
    # Three of the five waited for the next quota minute (about 60 s), two did not wait.
    assert value(after, "keysched_queue_wait_seconds_bucket", le="1.0") == 2
    assert value(after, "keysched_queue_wait_seconds_sum") > 100
    assert value(after, "keysched_trace_dropped") == 0
    assert value(after, "keysched_key_in_flight", key="p1-1", project="p1") == 0


def test_a_scrape_on_the_loop_thread_reads_the_snapshot_directly() -> None:
    """A /metrics handler on the client's own loop scrapes without hopping threads."""

    async def main() -> str:
        loop = asyncio.get_running_loop()
        async with running_server(scenario(), seed=1, time_scale=1.0, clock=loop.time) as (
                server, _):
            registry = CollectorRegistry()
            async with scenario_client(server) as client:
                registry.register(PoolCollector(client))
                await calls(client, 1)
            return scrape(registry)  # closed: the writer thread has counted every line

    found = samples(virtual_loop.run(main))
    assert value(found, "keysched_attempt_outcomes_total", key="p1-1", project="p1",
                 model=FLASH, outcome="success") == 1


def test_a_scrape_the_loop_cannot_serve_in_time_fails_and_the_next_one_works(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape from another thread while the client's loop is stuck raises `TimeoutError`
    after `SNAPSHOT_TIMEOUT` instead of hanging; once the loop is free, scrapes work again."""
    import keysched.metrics
    from keysched import KeyedClient

    monkeypatch.setattr(keysched.metrics, "SNAPSHOT_TIMEOUT", 0.05)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    stuck = threading.Event()
    try:
        async def make() -> KeyedClient:
            return KeyedClient(keys=["AIzaMetricsKey0000"], models=[FLASH],
                               base_url="http://metrics.invalid")

        client = asyncio.run_coroutine_threadsafe(make(), loop).result()
        collector = PoolCollector(client, loop=loop)
        loop.call_soon_threadsafe(stuck.wait)  # the loop is busy until `stuck` is set
        with pytest.raises(TimeoutError):
            list(collector.collect())
        stuck.set()
        monkeypatch.setattr(keysched.metrics, "SNAPSHOT_TIMEOUT", 60.0)  # a busy host's bound
        names = {metric.name for metric in collector.collect()}
        assert "keysched_requests_waiting" in names
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result()
    finally:
        stuck.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_a_scrape_as_the_loop_closes_reads_the_snapshot_here() -> None:
    """The client's loop closing between the collector's check and its hand-over (another
    thread's scrape, a process shutting down) gives the snapshot read here, not a RuntimeError
    and a coroutine never awaited (found by review)."""
    import warnings

    from keysched import KeyedClient

    class ClosingLoop(asyncio.SelectorEventLoop):
        """Once `seems_open`: open and running to the collector's check, yet closed."""

        seems_open = False

        def is_closed(self) -> bool:
            return False if self.seems_open else super().is_closed()

        def is_running(self) -> bool:
            return True if self.seems_open else super().is_running()

    loop = ClosingLoop()
    client = KeyedClient(keys=["AIzaMetricsKey0000"], models=[FLASH],
                         base_url="http://metrics.invalid")
    collector = PoolCollector(client, loop=loop)
    loop.close()
    loop.seems_open = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "coroutine ... was never awaited" fails the test
            names = {metric.name for metric in collector.collect()}
    finally:
        loop.seems_open = False  # closed as it is, for its finaliser
    assert "keysched_requests_waiting" in names
