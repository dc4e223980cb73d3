"""Simulated requests per second: our engine (default policy, 1,000 keys) against bare SimPy.

SimPy runs the same arrivals with one process and one timeout per request and no scheduling at
all (no core, no world); our engine runs the full keysched core and world model.  Both are timed
in the same run, best of ``--repeat``; the ratio is ours over SimPy's.  Target: >= 1.0x.

    python benchmarks/bench_sim.py [--repeat 3] [--copies 4]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Generator
from typing import Any

import attrs
import simpy

from sim.engine import simulate
from sim.scenario import Scenario, load_scenario
from sim.workload import Arrival, generate_arrivals


def _longer(scenario: Scenario, copies: int) -> Scenario:
    """The scenario with its duration and workload phases stretched `copies` times."""
    duration = scenario.duration * copies
    phases = tuple(attrs.evolve(p, end=p.end * copies) for p in scenario.workload)
    return attrs.evolve(scenario, duration=duration, workload=phases)


def run_ours(scenario: Scenario) -> tuple[int, float]:
    started = time.perf_counter()
    result = simulate(scenario, "least-loaded", record_events=False)
    return len(result.requests), time.perf_counter() - started


def run_simpy(arrivals: list[Arrival], seed: int) -> tuple[int, float]:
    rng = random.Random(seed)
    mu = math.log(1.5)
    done = 0

    def request(env: simpy.Environment, latency: float) -> Generator[Any, Any, None]:
        nonlocal done
        yield env.timeout(latency)
        done += 1

    def source(env: simpy.Environment) -> Generator[Any, Any, None]:
        for arrival in arrivals:
            yield env.timeout(arrival.time - env.now)
            env.process(request(env, rng.lognormvariate(mu, 0.3)))

    started = time.perf_counter()
    env = simpy.Environment()
    env.process(source(env))
    env.run()
    return done, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4, help="stretch the scenario this often")
    args = parser.parse_args()
    scenario = _longer(load_scenario("thousand-keys"), args.copies)
    arrivals = generate_arrivals(scenario, random.Random(scenario.seed))
    ours = min((run_ours(scenario) for _ in range(args.repeat)), key=lambda r: r[1])
    bare = min((run_simpy(arrivals, scenario.seed) for _ in range(args.repeat)),
               key=lambda r: r[1])
    ours_rate, simpy_rate = ours[0] / ours[1], bare[0] / bare[1]
    print(f"scenario: thousand-keys x{args.copies}, {len(arrivals)} requests, "
          f"{len(scenario.keys)} keys")
    print(f"keysched engine (least-loaded): {ours_rate:12,.0f} simulated requests/s")
    print(f"SimPy (1 process + 1 timeout):  {simpy_rate:12,.0f} simulated requests/s")
    print(f"ratio: {ours_rate / simpy_rate:.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
