"""Where `KeyedClient.generate` spends its CPU: microseconds of client work per request.

Run with ``python -m benchmarks.profile_client`` (``--mode fake|server|both``, ``--profile``).

- ``fake``: in one process, no network.  The client's backend is replaced by one that answers
  every POST with the benchmark's JSON body after one event-loop turn (``asyncio.sleep(0)``);
  64 workers call ``generate`` in a loop.  The baseline is the same workers awaiting the same
  fake POST and ``json.loads`` of the body: the difference is keysched's own CPU per request.
  ``--profile`` runs cProfile over the keysched run and prints the top functions.
- ``server``: the benchmark's server in another process, and CPU time (``time.process_time``)
  of this process per request for raw aiohttp posts, ``KeyedClient`` (aiohttp, the default
  when installed), raw httpx and ``KeyedClient(fast=False)`` (httpx): what each request really
  costs the client, aiohttp included, with the noise of wall-clock rates removed.
- ``ir``: the same server, and the instructions the client process executes per request
  (valgrind's cachegrind, the difference of a long and a short run) for raw aiohttp posts and
  ``KeyedClient`` (aiohttp).  Instruction counts do not depend on what else the machine runs,
  and their ratio has tracked the benchmark's throughput ratio (0.56 both, before this tool's
  first use).  Needs ``valgrind``; slow (about a minute per client).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from benchmarks.bench_client import (
    BODY,
    CONCURRENCY,
    DELAY,
    KEYS,
    MODEL,
    bench_server,
    clients,
    sniffio_as_named,
)

HEADERS = {"content-type": "application/json", "content-length": str(len(BODY))}


class _FakeBackend:
    """Answers every POST with the benchmark body after one loop turn."""

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        return headers

    async def post(self, url: str, headers: Mapping[str, str], payload: bytes,
                   timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        await asyncio.sleep(0)
        return 200, HEADERS, BODY

    def stream(self, *args: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


async def _run(call: Callable[[], Awaitable[object]], n: int) -> float:
    """CPU seconds per call of `n` calls spread over CONCURRENCY workers."""
    per = n // CONCURRENCY

    async def worker() -> None:
        for _ in range(per):
            await call()

    for _ in range(50):
        await call()
    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - start) / (per * CONCURRENCY)


async def _fake(n: int, rounds: int, profile: bool) -> None:
    from keysched import KeyedClient

    backend = _FakeBackend()
    payload = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()

    async def raw() -> None:
        _, _, body = await backend.post("u", HEADERS, payload, 1.0)
        json.loads(body)

    async with KeyedClient(keys=KEYS, models=[MODEL], base_url="http://127.0.0.1:1") as client:
        client._backend = backend  # the profile replaces the HTTP seam

        def generate() -> Awaitable[object]:
            return client.generate("hi")

        base, ours = [], []
        for _ in range(rounds):
            base.append(await _run(raw, n))
            ours.append(await _run(generate, n))
        b, o = statistics.median(base), statistics.median(ours)
        print(f"fake backend, {n} requests x {rounds} rounds, {CONCURRENCY} concurrent:")
        print(f"  baseline (fake post + json.loads) {b * 1e6:7.1f} us/request")
        print(f"  KeyedClient.generate             {o * 1e6:7.1f} us/request")
        print(f"  keysched overhead                {(o - b) * 1e6:7.1f} us/request")
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await _run(generate, n)
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(30)


async def _server(base: str, n: int, rounds: int) -> None:
    # The raw clients and the fast one get n requests; httpx, whose pool is slow, a quarter.
    plan = {"raw aiohttp": n, "KeyedClient (default)": n, "raw httpx": n // 4,
            "KeyedClient (httpx)": n // 4}
    samples: dict[str, list[float]] = {}
    async with clients(base) as calls:
        for _ in range(rounds):
            for name, count in plan.items():
                samples.setdefault(name, []).append(await _run(calls[name], count))
    print(f"bench server ({DELAY * 1000:.0f} ms), client CPU per request, median of {rounds}:")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, value in medians.items():
        print(f"  {name:26s} {value * 1e6:7.1f} us/request")
    for ours, raw_name in (("KeyedClient (default)", "raw aiohttp"),
                           ("KeyedClient (httpx)", "raw httpx")):
        print(f"  {ours} over {raw_name}: +{(medians[ours] - medians[raw_name]) * 1e6:.1f} us; "
              f"CPU ratio {raw_name} / {ours} = {medians[raw_name] / medians[ours]:.2f}")


async def _one_client(base: str, name: str, n: int) -> None:
    """`n` requests of client `name` (after a warm-up), for `--mode ir` to count.

    Building the other clients too costs the same in the long and the short run, so it drops
    out of the difference that `_ir` takes.
    """
    async with clients(base) as calls:
        call = calls[name]

        async def worker(count: int) -> None:
            for _ in range(count):
                await call()

        with sniffio_as_named(name):
            await asyncio.gather(*(worker(4) for _ in range(CONCURRENCY)))
            await asyncio.gather(*(worker(n // CONCURRENCY) for _ in range(CONCURRENCY)))


def _instructions(base: str, name: str, n: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, "-m", "benchmarks.profile_client", "--run-client", name,
         "--requests", str(n), "--base", base],
        check=True, capture_output=True, text=True, env=os.environ)
    match = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind: {out.stderr[-500:]}")
    return int(match[1].replace(",", ""))


def _ir(base: str, n: int) -> None:
    short = n // 4 // CONCURRENCY * CONCURRENCY
    long = n // CONCURRENCY * CONCURRENCY
    per: dict[str, float] = {}
    for name in ("raw aiohttp", "KeyedClient (default)"):
        per[name] = ((_instructions(base, name, long) - _instructions(base, name, short))
                     / (long - short))
    print(f"bench server ({DELAY * 1000:.0f} ms), client instructions per request:")
    for name, value in per.items():
        print(f"  {name:26s} {value / 1000:7.1f} k")
    ours, raw = per["KeyedClient (default)"], per["raw aiohttp"]
    print(f"  KeyedClient (default, aiohttp) over raw aiohttp: +{(ours - raw) / 1000:.1f} k; "
          f"ratio raw aiohttp / KeyedClient (default) = {raw / ours:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["fake", "server", "both", "ir"], default="fake")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--run-client", help=argparse.SUPPRESS)  # one client, for --mode ir
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_client:
        asyncio.run(_one_client(args.base, args.run_client, args.requests))
        return
    if args.mode == "ir" and shutil.which("valgrind") is None:
        parser.error("--mode ir needs valgrind")
    if args.mode in ("fake", "both"):
        asyncio.run(_fake(args.requests, args.rounds, args.profile))
    if args.mode in ("server", "both", "ir"):
        with bench_server() as base:
            if args.mode == "ir":
                _ir(base, min(args.requests, 2560))
            else:
                asyncio.run(_server(base, args.requests // 4, args.rounds))


if __name__ == "__main__":
    main()
