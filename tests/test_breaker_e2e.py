"""Breakers over loopback HTTP: a sprinkle of 503s does not stall the pool.

The breakers issue's run: 10 keys, one model, 25 requests per second for 10 s, 5% of requests
answered 503 at random, against the fake server.  Beside it, the same run without faults, on its
own server.  The faulty run's median latency stays within twice the clean run's, no call fails,
and attempts per call stay close to 1.05.  Before the breakers weighed evidence, every 503 took
the model out for 2 s and the median was 2.3 s (against 0.2 s clean): that bug fails the test.

Both runs share a `virtual_loop.VirtualTimeLoop`: arrivals, the server's latencies, the client's
timeouts and cooldowns are all on its clock, so the latencies compared are the scenario's, not
the machine's.  On the wall clock, a busy machine stretched some calls of one run and not the
other, and the median comparison failed without any stall in the pool.
"""

from __future__ import annotations

import asyncio
import statistics

import virtual_loop
from e2e_support import ScenarioTime, scenario_client, virtual_server

from keysched import GenerateResult
from sim.engine import simulate
from sim.metrics import compute
from sim.scenario import Scenario, load_scenario, parse_scenario

# The issue measured 50 calls a second for 20 s; half of it for 10 s keeps the test's CPU time
# small (time is virtual: the rate no longer has to fit what a busy machine serves).
RATE = 25.0
DURATION = 10.0


def flaky(p: float) -> Scenario:
    faults = [{"kind": "overloaded", "model": "gemini-2.5-flash", "probability": p}] if p else []
    return parse_scenario({
        "description": "flaky", "start": "2026-08-11T09:00:00-07:00", "duration": 60,
        "time_scale": 1.0, "error_latency": 0.02, "seed": 3,
        "models": [{"name": "gemini-2.5-flash", "latency_median": 0.2, "latency_sigma": 0.0}],
        "projects": [{"name": "paid", "tier": "paid", "keys": 10}], "faults": faults,
    })


async def run(scenario: Scenario) -> list[tuple[float, GenerateResult]]:
    """(latency, result) of every call, in virtual seconds."""
    async with virtual_server(scenario) as (server, _), \
            scenario_client(server, timeout=30.0) as client:
        time = ScenarioTime(server.app)

        async def one(index: int) -> tuple[float, GenerateResult]:
            await time.until(index / RATE)
            start = time.clock()
            result = await client.generate(f"call {index}", deadline=120.0)
            return time.clock() - start, result

        return list(await asyncio.gather(*(one(i) for i in range(int(RATE * DURATION)))))


@virtual_loop.on_virtual_time
async def test_five_percent_of_503s_do_not_stall_the_pool() -> None:
    clean, faulty = await asyncio.gather(run(flaky(0.0)), run(flaky(0.05)))
    clean_p50 = statistics.median(latency for latency, _ in clean)
    faulty_p50 = statistics.median(latency for latency, _ in faulty)
    assert faulty_p50 <= 2 * clean_p50, (faulty_p50, clean_p50)
    attempts = [len(result.attempts) for _, result in faulty]
    assert len(attempts) == RATE * DURATION  # every call answered (a failure would raise)
    per_call = sum(attempts) / len(attempts)
    assert 1.0 < per_call <= 1.15, per_call  # one retry per 503: 1.05 expected
    assert all(result.model == "gemini-2.5-flash" for _, result in faulty)


def test_overload_storm_falls_back_and_returns_no_worse_than_before() -> None:
    """The built-in storm: every request answered, and at least the best-model share the
    single-503 breaker had (43.0% in the README before the breakers weighed evidence)."""
    metrics = compute(simulate(load_scenario("overload-storm"), "least-loaded"))
    assert metrics.successes == metrics.requests
    assert metrics.best_model_share is not None
    assert metrics.best_model_share >= 0.43
