"""Many processes, one pool: 4 worker processes against `sim serve`, alone or sharing Redis.

Run with ``python -m benchmarks.bench_shared`` (needs a Redis at 127.0.0.1:6379, or ``--redis
URL``).

A fake Gemini server (``python -m sim serve``, its own process) serves 10 keys, each its own
project with 5 requests per sliding minute; calls are offered at twice that capacity (100 per
minute) for ``--minutes`` virtual minutes, each with a 60 s deadline, in the server's virtual
time (``--scale`` virtual seconds per real second; the parent reads it from ``/_sim/state`` once
and gives every worker the same reading, on the host's monotonic clock).
The offered calls are dealt to 4 worker processes, each with its own `KeyedClient`:

- ``1 process``: the same calls from one process (the target's baseline);
- ``4 on their own``: four processes, four independent pools (what users run today);
- ``4 sharing Redis``: four processes on one pool, ``store="redis://..."``.

Each arrangement runs with the limits unknown to the clients (learned from 429s) and with them
configured, on a fresh server, side by side in one run.  Printed: answers, calls failed, 429s,
429s per answer.  Target (issue 17): the shared pool's 429s per answer no worse than one
process alone.

Then the cost of the Redis path, measured in the same run against a baseline: the round trip
of one `RedisStore.admit` (the one store call an attempt waits for) on loopback, and the time
per call of a `KeyedClient` with and without ``store=`` on an in-process fake server that
answers at once (sequential calls, interleaved batches), as microseconds added per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLASH = "gemini-2.5-flash"
KEYS = 10
RPM = 5
WORKERS = 4

SCENARIO = """\
description = "bench_shared: 10 keys of {rpm} requests per sliding minute"
start = "2026-05-12T10:00:00-07:00"
duration = 100000
time_scale = {scale}
seed = 3
quota_window = "sliding"
error_latency = 0.05

[[models]]
name = "{model}"
latency_median = 0.5
latency_sigma = 0.0

[quotas."{model}"]
rpm = {rpm}

{projects}
"""


@dataclass
class Tally:
    answers: int = 0
    failed: int = 0
    refused: int = 0  # 429s

    def add(self, other: dict[str, int]) -> None:
        self.answers += other["answers"]
        self.failed += other["failed"]
        self.refused += other["refused"]

    @property
    def per_answer(self) -> float:
        return self.refused / self.answers if self.answers else float("nan")


# ------------------------------------------------------------------ the worker process


async def worker(args: argparse.Namespace) -> None:
    """One worker: its share of the calls, its own client; prints its tally as JSON."""
    import httpx

    from keysched import (
        Key,
        KeyedClient,
        KeyschedError,
        Limit,
        OutcomeKind,
        RedisStore,
        RetryPolicy,
    )

    async with httpx.AsyncClient(base_url=args.base_url) as http:
        state = (await http.get("/_sim/state")).json()
    # The parent's reading of the server's clock, on the host's monotonic clock (one for every
    # process): the workers' clocks agree, as Redis's own clock makes them agree in production.
    # Read by each worker, they differed by its request's latency (tens of virtual ms), and the
    # worker whose clock ran ahead found room first.
    virtual0, real0, scale = args.virtual0, args.real0, state["time_scale"]
    start_epoch = args.start_epoch

    def clock() -> float:
        return virtual0 + (time.monotonic() - real0) * scale

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / scale)

    keys = [Key(secret=secret, label=label, project=label)
            for label, secret in (pair.split("=") for pair in args.keys.split(","))]
    limits = [Limit(model=FLASH, rpm=RPM)] if args.configured else []
    tally = {"answers": 0, "failed": 0, "refused": 0}
    store = None
    if args.store:
        # The workers live on the server's virtual clock: so do the budget windows.
        store = RedisStore(args.store, pool_name=args.pool, server_clock=False)
        await store.facts()  # connected before the clock starts, as a long-running worker is
    client = KeyedClient(keys, [FLASH], base_url=args.base_url, limits=limits,
                         timeout=30.0, clock=clock, sleep=sleep,
                         wall_clock=lambda: start_epoch + clock(),
                         retry=RetryPolicy(quota_margin=scale, deadline=60.0), store=store)
    refusals = (OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.RATE_LIMITED_DAY)

    async def call(at: float, index: int) -> None:
        while (left := at - clock()) > 0:  # noqa: ASYNC110 - waiting on a scaled clock
            await asyncio.sleep(left / scale)
        try:
            result = await client.generate(f"call {index}")
            tally["answers"] += 1
            attempts = result.attempts
        except KeyschedError as error:
            tally["failed"] += 1
            if os.environ.get("BENCH_DEBUG"):
                print(repr(error)[:300], file=sys.stderr)
            attempts = error.attempts  # type: ignore[attr-defined]
        tally["refused"] += sum(a.outcome in refusals for a in attempts)

    print("ready", flush=True)
    begin = float(await asyncio.to_thread(sys.stdin.readline))  # the common start
    async with client:
        await asyncio.gather(*(call(begin + args.offset + i * args.spacing, i)
                               for i in range(args.calls)))
    print(json.dumps(tally), flush=True)


# ------------------------------------------------------------------ the parent


def write_scenario(directory: str, scale: float) -> tuple[str, list[tuple[str, str]]]:
    projects = "\n".join(f'[[projects]]\nname = "p{i:02}"' for i in range(KEYS))
    path = os.path.join(directory, "bench_shared.toml")
    Path(path).write_text(SCENARIO.format(rpm=RPM, scale=scale, model=FLASH,
                                          projects=projects))
    return path, []


def start_server(path: str, scale: float) -> tuple[subprocess.Popen[str], str, str]:
    """`sim serve` on a free port; returns it, its base URL and the keys it printed."""
    server = subprocess.Popen(
        [sys.executable, "-m", "sim", "serve", path, "--port", "0", "--time-scale", str(scale)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert server.stdout is not None
    first = server.stdout.readline()
    base_url = first.split(" on ")[1].split()[0]
    keys = []
    for _ in range(KEYS):
        line = server.stdout.readline().split()
        keys.append(line[1])  # "label=secret"
    return server, base_url, ",".join(keys)


def virtual_now(base_url: str) -> float:
    import httpx

    state = httpx.get(f"{base_url}/_sim/state").json()
    return float(state["virtual_time"])


def run(path: str, scale: float, *, processes: int, shared: bool, configured: bool,
        redis_url: str, minutes: float) -> Tally:
    """One arrangement on a fresh server: returns the workers' tallies summed."""
    from sim.scenario import load_scenario

    server, base_url, keys = start_server(path, scale)
    pool = f"bench-{uuid.uuid4().hex[:10]}"
    try:
        offered = 2 * KEYS * RPM  # per virtual minute: twice the capacity
        total = int(offered * minutes)
        spacing = 60.0 / offered
        epoch = load_scenario(path).start_epoch
        virtual0, real0 = virtual_now(base_url), time.monotonic()
        workers = []
        for w in range(processes):
            mine = len(range(w, total, processes))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_shared", "--worker",
                 "--base-url", base_url, "--keys", keys, "--calls", str(mine),
                 "--offset", str(w * spacing), "--spacing", str(spacing * processes),
                 "--start-epoch", str(epoch), "--pool", pool,
                 "--virtual0", repr(virtual0), "--real0", repr(real0),
                 *(["--configured"] if configured else []),
                 *(["--store", redis_url] if shared else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        for process in workers:  # every worker imported, connected and waiting
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        # Calls begin half a real second from now, on the server's virtual clock.
        begin = virtual_now(base_url) + 0.5 * scale
        for process in workers:
            assert process.stdin is not None
            process.stdin.write(f"{begin}\n")
            process.stdin.flush()
        tally = Tally()
        for process in workers:
            out, _ = process.communicate(timeout=600)
            tally.add(json.loads(out.strip().splitlines()[-1]))
        return tally
    finally:
        server.terminate()
        server.communicate(timeout=60)
        if shared:
            import redis

            client = redis.Redis.from_url(redis_url)
            keys_left = list(client.scan_iter(match=f"{{{pool}}}*"))
            if keys_left:
                client.delete(*keys_left)
            client.close()


async def round_trip(redis_url: str, n: int) -> float:
    """Mean seconds of one `RedisStore.admit` on loopback (sequential)."""
    from keysched import RedisStore
    from keysched.driver import Claim

    pool = f"bench-{uuid.uuid4().hex[:10]}"
    store = RedisStore(redis_url, pool_name=pool, timeout=5.0)
    try:
        for i in range(100):  # warm: connection, script loaded
            await store.admit(Claim("o", f"w{i}", "k", "p", FLASH, day_end=4e9), 0)
        started = time.perf_counter()
        for i in range(n):
            await store.admit(Claim("o", str(i), "k", "p", FLASH, rpm=10**9, day_end=4e9), 0)
        return (time.perf_counter() - started) / n
    finally:
        keys = [k async for k in store.redis.scan_iter(match=f"{{{pool}}}*")]
        if keys:
            await store.redis.delete(*keys)
        await store.aclose()


async def per_call(redis_url: str, batches: int, size: int) -> tuple[float, float]:
    """Mean seconds per sequential `generate` without and with the Redis store (interleaved
    batches against one in-process server that answers at once)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from e2e_support import running_server

    from keysched import KeyedClient
    from sim.scenario import parse_scenario

    sc = parse_scenario({
        "description": "latency", "start": "2026-05-12T10:00:00-07:00", "duration": 1e9,
        "time_scale": 1.0, "models": [{"name": FLASH, "latency_median": 1e-6,
                                       "latency_sigma": 0.0}],
        "projects": [{"name": f"p{i}"} for i in range(KEYS)]}, source="<bench>")
    pool = f"bench-{uuid.uuid4().hex[:10]}"
    times: dict[bool, list[float]] = {False: [], True: []}
    async with running_server(sc) as (server, _):
        clients = {shared: KeyedClient(sc.pool_keys(), [FLASH], base_url=server.base_url,
                                       store=redis_url if shared else None, pool_name=pool)
                   for shared in (False, True)}
        for client in clients.values():
            for _ in range(50):
                await client.generate("warm")
        for _ in range(batches):
            for shared, client in clients.items():
                started = time.perf_counter()
                for _ in range(size):
                    await client.generate("hi")
                times[shared].append((time.perf_counter() - started) / size)
        for client in clients.values():
            await client.aclose()
    import redis

    cleanup = redis.Redis.from_url(redis_url)
    keys_left = list(cleanup.scan_iter(match=f"{{{pool}}}*"))
    if keys_left:
        cleanup.delete(*keys_left)
    cleanup.close()
    return statistics.median(times[False]), statistics.median(times[True])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0,
                        help="virtual seconds per real second (default 10)")
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="virtual minutes of offered calls (default 3)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis URL")
    # The worker's own arguments (the parent starts workers with --worker).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--base-url", "--keys", "--store", "--pool"):
        parser.add_argument(name, default="", help=argparse.SUPPRESS)
    for name in ("--offset", "--spacing", "--start-epoch", "--virtual0", "--real0"):
        parser.add_argument(name, type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--configured", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker(args))
        return 0

    with tempfile.TemporaryDirectory() as directory:
        path, _ = write_scenario(directory, args.scale)
        print(f"10 keys x {RPM} requests per sliding minute, offered {2 * KEYS * RPM} per "
              f"minute for {args.minutes:g} virtual minutes (scale {args.scale:g})")
        print(f"{'limits':<11} {'arrangement':<17} {'answers':>7} {'failed':>6} {'429s':>5} "
              f"{'429s/answer':>11}")
        verdicts = []
        for configured in (False, True):
            rows = {}
            for name, processes, shared in (("1 process", 1, False),
                                            ("4 on their own", WORKERS, False),
                                            ("4 sharing Redis", WORKERS, True)):
                tally = run(path, args.scale, processes=processes, shared=shared,
                            configured=configured, redis_url=args.redis, minutes=args.minutes)
                rows[name] = tally
                print(f"{'configured' if configured else 'unknown':<11} {name:<17} "
                      f"{tally.answers:>7} {tally.failed:>6} {tally.refused:>5} "
                      f"{tally.per_answer:>11.3f}", flush=True)
            ok = rows["4 sharing Redis"].per_answer <= rows["1 process"].per_answer
            verdicts.append(ok)
        print("target (shared 429s per answer <= one process alone): "
              + ("met" if all(verdicts) else "MISSED"))

    trip = asyncio.run(round_trip(args.redis, 2000))
    alone, shared = asyncio.run(per_call(args.redis, 10, 200))
    print(f"Redis round trip per attempt (one admit, loopback): {trip * 1e6:.0f} µs")
    print(f"per call, in-process fake server answering at once: {alone * 1e6:.0f} µs alone, "
          f"{shared * 1e6:.0f} µs with store=redis (+{(shared - alone) * 1e6:.0f} µs, "
          f"x{shared / alone:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
