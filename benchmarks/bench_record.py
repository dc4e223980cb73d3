"""What recording the outcome trace costs per call: CPU, beside a client that does not record.

Run with ``python -m benchmarks.bench_record`` (``--calls`` and ``--rounds`` change the runs).

The loopback server of `benchmarks.bench_client` (aiohttp in its own process, answering every
POST with a small Gemini body after 5 ms) serves three clients over 10 keys, built alike but
for ``record=``: none, a file (``record=path``), and a file with a `PoolCollector` listening
(the trace-fed metrics; nothing scrapes).  Each round runs `--calls` calls at 16 concurrent
on each client in turn, so the shared machine's noise falls on all alike, and measures the
process's CPU time (every thread's: the recorder's writer thread is part of the cost) until the
recorder's queue is empty.  The verdict is the median over rounds of the extra CPU per call
against the plain client of the same round; the plain client's own CPU per call is printed
beside it.

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

from benchmarks.bench_client import KEYS, MODEL, bench_server
from keysched import KeyedClient
from keysched._recorder import Recorder
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


async def _measure(base: str, calls: int, rounds: int, folder: Path) -> dict[str, list[float]]:
    to_file = Recorder(folder / "outcomes.jsonl")
    with_metrics = Recorder(folder / "outcomes-metrics.jsonl")
    samples: dict[str, list[float]] = {}
    async with (KeyedClient(keys=KEYS, models=[MODEL], base_url=base) as plain,
                KeyedClient(keys=KEYS, models=[MODEL], base_url=base, record=to_file) as filed,
                KeyedClient(keys=KEYS, models=[MODEL], base_url=base,
                            record=with_metrics) as metered):
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


def _recording_alone(calls: int, listen: bool) -> float:
    """CPU seconds per call of the recorder alone: what the client hands it for one answered
    call (a request started, an attempt, a request ended), and the writer's work on it, to
    /dev/null; no network, so the shared host's noise is far smaller than end to end."""
    from keysched._config import PoolConfig
    from keysched._decisions import Dispatch, Finish
    from keysched._outcomes import Outcome, OutcomeKind
    from keysched._redact import Redactor
    from keysched._wire import Classified

    config = PoolConfig(keys=KEYS, models=[MODEL])
    with open("/dev/null", "w", encoding="utf-8") as sink:
        recorder = Recorder(sink, max_pending=calls * 2 + 1)
        recorder.bind(config, now=0.0, wall=0.0, redactor=Redactor(config.keys))
        if listen:
            from keysched.metrics import _TraceCounts

            recorder.listen(_TraceCounts())
        answer = Classified(outcome=Outcome(kind=OutcomeKind.SUCCESS, input_tokens=3,
                                            output_tokens=1), status=200)
        key = config.keys[0]
        started = time.process_time()
        for request in range(calls):
            now = request * 0.001
            recorder.request_started(request, now)
            recorder.attempt(Dispatch(request, request, 1, key, MODEL), answer, now, now + 0.0005,
                             stream=False)
            recorder.request_decided(Finish(request, request), now + 0.0006)
        asyncio.run(recorder.aclose())  # the writer's work on them counts
        return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per client per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    args = parser.parse_args()
    alone = [_recording_alone(args.calls * 5, listen) for listen in (False, True)
             for _ in range(3)]
    print(f"the recorder alone (no network), CPU per answered call, fastest of 3: to a file "
          f"{min(alone[:3]) * 1e6:.1f} µs, with PoolCollector's counts {min(alone[3:]) * 1e6:.1f} µs")
    with tempfile.TemporaryDirectory() as folder, bench_server() as base:
        samples = asyncio.run(_measure(base, args.calls, args.rounds, Path(folder)))
    plain = samples["no record"]
    print(f"{args.rounds} interleaved rounds of {args.calls} calls at c={CONCURRENCY}; process "
          "CPU per call (all threads), median over rounds")
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


if __name__ == "__main__":
    main()
