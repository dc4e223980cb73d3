"""Simulated requests per second: our engine (default policy, 1,000 keys) against bare SimPy.

SimPy runs the same arrivals with one process and one timeout per request and no scheduling at
all (no core, no world); our engine runs the full keysched core and world model, computing the
run's metrics as it goes (`sim.metrics.MetricsRecorder`, what ``python -m sim`` does).  The two
alternate ``--repeat`` times in one process, each timed in CPU seconds (the host is shared: wall
time measures the neighbours); the ratio printed is the median of the paired ratios, ours over
SimPy's.  Target (issue 18): >= 0.5x; 1.0x is the plan's end.

    python benchmarks/bench_sim.py [--repeat 5] [--copies 4]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Generator
from typing import Any

import attrs
import simpy

from sim.engine import run
from sim.metrics import MetricsRecorder
from sim.scenario import Scenario, load_scenario
from sim.workload import Arrival, generate_arrivals


def _longer(scenario: Scenario, copies: int) -> Scenario:
    """The scenario with its duration and workload phases stretched `copies` times."""
    duration = scenario.duration * copies
    phases = tuple(attrs.evolve(p, end=p.end * copies) for p in scenario.workload)
    return attrs.evolve(scenario, duration=duration, workload=phases)


def run_ours(scenario: Scenario) -> tuple[int, float]:
    """(requests simulated, CPU seconds) of one run with its metrics computed as it goes."""
    started = time.process_time()
    recorder = MetricsRecorder(scenario)
    summary = run(scenario, "least-loaded", observers=[recorder], record_events=False)
    recorder.metrics(summary)
    return summary.submitted, time.process_time() - started


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

    started = time.process_time()
    env = simpy.Environment()
    env.process(source(env))
    env.run()
    return done, time.process_time() - started


def paired(scenario: Scenario, repeat: int) -> tuple[float, float, float]:
    """(median ratio ours / SimPy, our best rate, SimPy's best rate), the two alternating."""
    arrivals = generate_arrivals(scenario, random.Random(scenario.seed))
    ratios, ours_rates, simpy_rates = [], [], []
    for _ in range(repeat):
        n, seconds = run_ours(scenario)
        ours_rates.append(n / seconds)
        n, seconds = run_simpy(arrivals, scenario.seed)
        simpy_rates.append(n / seconds)
        ratios.append(ours_rates[-1] / simpy_rates[-1])
    return statistics.median(ratios), max(ours_rates), max(simpy_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--copies", type=int, default=4, help="stretch the scenario this often")
    args = parser.parse_args()
    scenario = _longer(load_scenario("thousand-keys"), args.copies)
    ratio, ours_rate, simpy_rate = paired(scenario, args.repeat)
    print(f"scenario: thousand-keys x{args.copies}, "
          f"{len(generate_arrivals(scenario, random.Random(scenario.seed)))} requests, "
          f"{len(scenario.keys)} keys")
    print(f"keysched engine (least-loaded, metrics): {ours_rate:12,.0f} simulated requests/s")
    print(f"SimPy (1 process + 1 timeout):           {simpy_rate:12,.0f} simulated requests/s")
    print(f"ratio: {ratio:.2f}x, median of {args.repeat} pairs (target >= 0.5x)")


if __name__ == "__main__":
    main()
