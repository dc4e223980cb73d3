"""Fast where users wait: issue 18's figures, in one run.

Run with ``python -m benchmarks.bench_speed`` (``--requests`` sizes the large simulation,
``--rounds`` the client's interleaved runs).  Prints:

- default ``KeyedClient`` / raw aiohttp at 16 and 64 concurrent, against the loopback server of
  ``benchmarks/bench_client.py`` answering after 100 ms (the issue's setup) and after 5 ms
  (where the client's own CPU decides); the httpx fallback (no aiohttp installed) beside it.
  Target: >= 0.9x at c=16 and c=64.
- ``python -m sim`` (the README's first command, summary figures into a temporary folder): CPU
  and wall seconds of the whole process.  Target: < 10 s CPU.
- the simulator / bare SimPy, simulated requests per second (``benchmarks/bench_sim.py``).
  Target: >= 0.5x.
- a simulation of about a million requests on 1,000 keys: CPU seconds and the process's peak
  RSS.  Targets: < 30 s, < 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.bench_client import CONCURRENCIES, _measure, _ratios, bench_server

CLIENTS = ("raw aiohttp", "KeyedClient (default)", "KeyedClient (httpx)")

# The large run computes its metrics as it goes, as `python -m sim` does: no record per request.
_MILLION = """
import math, random, sys, time
from benchmarks.bench_sim import _longer
from sim.engine import run
from sim.metrics import MetricsRecorder
from sim.scenario import load_scenario
from sim.workload import generate_arrivals
base = load_scenario("thousand-keys")
per_copy = len(generate_arrivals(base, random.Random(base.seed)))
scenario = _longer(base, max(1, math.ceil(int(sys.argv[1]) / per_copy)))
started = time.process_time()
recorder = MetricsRecorder(scenario)
summary = run(scenario, "least-loaded", observers=[recorder], record_events=False)
recorder.metrics(summary)
print(summary.submitted, time.process_time() - started)
"""


def _child(argv: list[str]) -> tuple[str, float, float, float]:
    """Run `argv`; (its output, CPU seconds, wall seconds, peak RSS in MB) of that process."""
    started = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as child:
        out = child.stdout.read() if child.stdout else ""
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{argv} exited with {child.returncode}")
    # ru_maxrss is in kilobytes on Linux.
    return (out, usage.ru_utime + usage.ru_stime, time.perf_counter() - started,
            usage.ru_maxrss / 1024)


def _client(seconds: float, rounds: int) -> None:
    for delay in (0.1, 0.005):
        with bench_server(args=(delay,)) as base:
            samples = asyncio.run(_measure(base, seconds, rounds, CLIENTS))
        for name in CLIENTS[1:]:
            cells = []
            for concurrency in CONCURRENCIES:
                paired, _ = _ratios(samples, (concurrency, name), (concurrency, "raw aiohttp"))
                rate = statistics.median(samples[concurrency, name])
                cells.append(f"c={concurrency} {paired:.2f}x ({rate:,.0f} req/s)")
            print(f"  {name} / raw aiohttp, server {delay * 1000:g} ms: {'; '.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="size of the large simulation (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=3, help="client runs per client")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of a client run")
    args = parser.parse_args()

    print("client (median of side-by-side ratios; target >= 0.9x at c=16 and c=64):")
    _client(args.seconds, args.rounds)

    with tempfile.TemporaryDirectory() as folder:
        _, cpu, wall, rss = _child([sys.executable, "-m", "sim", "--plot-dir", folder])
    print(f"python -m sim: {cpu:.1f} s CPU, {wall:.1f} s wall, peak RSS {rss:.0f} MB "
          f"(target < 10 s CPU) {'OK' if cpu < 10 else 'MISSED'}")

    from benchmarks.bench_sim import _longer, paired
    from sim.scenario import load_scenario

    ratio, ours_rate, simpy_rate = paired(_longer(load_scenario("thousand-keys"), 4), 5)
    print(f"simulator / SimPy: {ratio:.2f}x ({ours_rate:,.0f} vs {simpy_rate:,.0f} simulated "
          f"requests/s, CPU time, median of 5 pairs; target >= 0.5x) "
          f"{'OK' if ratio >= 0.5 else 'MISSED'}")

    out, _, wall, rss = _child([sys.executable, "-c", _MILLION, str(args.requests)])
    requests, cpu = out.split()
    print(f"{int(requests):,} simulated requests on 1,000 keys: {float(cpu):.1f} s CPU "
          f"simulating ({wall:.1f} s wall for the process), peak RSS {rss:.0f} MB "
          f"(targets < 30 s, < 150 MB) "
          f"{'OK' if float(cpu) < 30 and rss < 150 else 'MISSED'}")


if __name__ == "__main__":
    main()
