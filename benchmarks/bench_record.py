"""What recording the outcome trace costs per call: CPU, beside a client that does not record.

Run with ``python -m benchmarks.bench_record`` (``--calls`` and ``--rounds`` change the runs).

Three clients over 10 keys, built alike but for ``record=``: none, a file (``record=path``),
and a file with a `PoolCollector` listening (the trace-fed metrics; nothing scrapes).  Twice:
answered in process by an ``httpx.MockTransport`` (no sockets, no server process: the steadier
figure), then over loopback by the server of `benchmarks.bench_client` (aiohttp in its own
process, answering after 5 ms: the issue's setting).  Each round runs `--calls` calls at 16
concurrent on each client in turn, each client taking each place in the order in turn, and
measures the process's CPU time (every thread's: the recorder's writer thread is part of the
cost) until the recorder's queue is empty.  The verdict is the median over rounds of the extra
CPU per call against the plain client of the same round.

Target (set here; the issue names none): recording adds less than 10% to a call's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_client import BODY, KEYS, MODEL, bench_server
from keysched import KeyedClient, Recorder
from keysched.metrics import PoolCollector

CONCURRENCY = 16
TARGET = 0.10  # extra CPU per call / plain CPU per call


async def _cpu_per_call(call: Callable[[], Awaitable[object]], calls: int,
                        recorder: Recorder | None) -> float:
    """CPU seconds per call for `calls` calls at `CONCURRENCY`, the recorder's writing included."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    while recorder is not None and recorder.pending:  # noqa: ASYNC110 - another thread drains
        await asyncio.sleep(0.001)  # the writer thread's CPU counts; its waits do not
    return (time.process_time() - started) / calls


async def _measure(calls: int, rounds: int, folder: Path, **connection: Any,
                   ) -> dict[str, list[float]]:
    """CPU seconds per call of the three clients, round by round; `connection` says how they
    reach a server (``base_url=`` or ``transport=``)."""
    to_file = Recorder(folder / "outcomes.jsonl")
    with_metrics = Recorder(folder / "outcomes-metrics.jsonl")
    samples: dict[str, list[float]] = {}
    async with (KeyedClient(keys=KEYS, models=[MODEL], **connection) as plain,
                KeyedClient(keys=KEYS, models=[MODEL], record=to_file, **connection) as filed,
                KeyedClient(keys=KEYS, models=[MODEL], record=with_metrics,
                            **connection) as metered):
        PoolCollector(metered)
        clients = {"no record": (plain, None), "record to a file": (filed, to_file),
                   "record + PoolCollector": (metered, with_metrics)}
        for client, _ in clients.values():  # warm up connections and caches
            await asyncio.gather(*(client.generate("hi") for _ in range(50)))
        names = list(clients)
        for round_ in range(rounds):
            # Each client takes each place in the order in turn: a place in the round must not
            # favour one of them.
            for name in names[round_ % 3:] + names[:round_ % 3]:
                client, recorder = clients[name]
                cost = await _cpu_per_call(functools.partial(client.generate, "hi"), calls,
                                           recorder)
                samples.setdefault(name, []).append(cost)
    return samples


def _answer(request: httpx.Request) -> httpx.Response:
    """The in-process server: every call answered at once with `BODY`."""
    return httpx.Response(200, content=BODY, headers={"content-type": "application/json"})


def _report(title: str, samples: dict[str, list[float]]) -> None:
    plain = samples["no record"]
    print(title)
    print(f"  {'no record':28s} {statistics.median(plain) * 1e6:7.1f} µs")
    for name, costs in samples.items():
        if name == "no record":
            continue
        extra = [cost - base_cost for cost, base_cost in zip(costs, plain, strict=True)]
        share = statistics.median(e / p for e, p in zip(extra, plain, strict=True))
        verdict = "OK" if share < TARGET else "MISSED"
        print(f"  {name:28s} {statistics.median(costs) * 1e6:7.1f} µs: "
              f"+{statistics.median(extra) * 1e6:.1f} µs per call, +{share:.1%} of the plain "
              f"call (target < {TARGET:.0%}) {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per client per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        samples = asyncio.run(_measure(args.calls, args.rounds, Path(folder),
                                       transport=httpx.MockTransport(_answer)))
        _report(f"in process (httpx.MockTransport): {args.rounds} interleaved rounds of "
                f"{args.calls} calls at c={CONCURRENCY}; process CPU per call (all threads), "
                "median over rounds", samples)
        with bench_server() as base:
            samples = asyncio.run(_measure(args.calls, args.rounds, Path(folder), base_url=base))
        _report(f"over loopback (the 5 ms server): {args.rounds} interleaved rounds of "
                f"{args.calls} calls at c={CONCURRENCY}; process CPU per call (all threads), "
                "median over rounds", samples)


if __name__ == "__main__":
    main()
