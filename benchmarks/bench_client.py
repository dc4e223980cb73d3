"""Throughput of `KeyedClient` against the physical limit, and the import cost of keysched.

Run with ``python -m benchmarks.bench_client`` (``--seconds`` and ``--rounds`` change the runs).

A local aiohttp server on 127.0.0.1 (in its own process, so it does not share the client's event
loop) answers every POST with a small Gemini JSON body after a fixed delay.  Four clients are
measured in the same run at 64 concurrent requests each:

- ``KeyedClient.generate`` over 10 keys with plain httpx,
- ``KeyedClient(fast=True)`` (the direct aiohttp backend),
- raw ``httpx.AsyncClient`` posts,
- raw ``aiohttp`` posts (the physical limit).

Targets: fast KeyedClient / raw aiohttp >= 0.8; plain KeyedClient / raw httpx >= 0.9 (the
median ratio of runs taken side by side, 9 rounds; fastest runs are printed too, and
``python -m benchmarks.profile_client --mode ir`` gives the noise-free instruction count); and
``import keysched`` with its client loaded at most 30 ms more than ``import httpx`` (fresh
interpreters taking turns, the fastest of 11 each; the median is printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

BODY = json.dumps({
    "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
                    "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4},
    "modelVersion": "gemini-2.5-flash", "responseId": "bench"}, indent=2).encode()
CONCURRENCY = 64
DELAY = 0.005
MODEL = "gemini-2.5-flash"
KEYS = [f"AIzaBENCHKEY{i:02d}000000000000000000000000" for i in range(10)]


def _serve(port: int, delay: float) -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay)
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                handle_signals=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the benchmark server did not start")


@contextlib.contextmanager
def bench_server(target: Callable[..., None] = _serve,
                 args: tuple[object, ...] = (DELAY,)) -> Iterator[str]:
    """A benchmark server (``target(port, *args)``), in its own process, for the duration:
    yields its base URL."""
    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=target, args=(port, *args),
                                                          daemon=True)
    server.start()
    try:
        _wait_for(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.join()


async def _drive(call: Callable[[], Awaitable[object]], seconds: float) -> float:
    """Run `call` from CONCURRENCY workers for `seconds`; return requests per second."""
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await call()
            count += 1

    for _ in range(50):  # warm up connections
        await call()
    started = time.perf_counter()
    stop = started + seconds  # after the warm-up, which must not eat into the measured run
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def clients(base: str) -> AsyncIterator[dict[str, Callable[[], Awaitable[object]]]]:
    """The four clients measured, each as a call that makes one request and reads its answer."""
    import aiohttp
    import httpx

    from keysched import KeyedClient

    url = f"{base}/v1beta/models/{MODEL}:generateContent"
    payload = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
    headers = {"x-goog-api-key": "AIzaBENCH0000000000000000000000000000",
               "content-type": "application/json"}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with (KeyedClient(keys=KEYS, models=[MODEL], base_url=base) as plain,
                KeyedClient(keys=KEYS, models=[MODEL], base_url=base, fast=True) as fast,
                httpx.AsyncClient(limits=limits) as raw,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session):

        async def httpx_post() -> None:
            response = await raw.post(url, content=payload, headers=headers)
            json.loads(response.content)

        async def aiohttp_post() -> None:
            async with session.post(url, data=payload, headers=headers) as response:
                json.loads(await response.read())

        yield {
            "KeyedClient (httpx)": lambda: plain.generate("hi"),
            "KeyedClient (fast=True)": lambda: fast.generate("hi"),
            "raw httpx": httpx_post,
            "raw aiohttp": aiohttp_post,
        }


async def _measure(base: str, seconds: float, rounds: int) -> dict[str, list[float]]:
    """Requests per second of each client in each of `rounds` interleaved runs.

    Interleaving (A B C D, A B C D, ...) spreads the shared machine's noise over every client
    instead of letting one client run while another process happens to hog a core.
    """
    samples: dict[str, list[float]] = {}
    async with clients(base) as calls:
        for _ in range(rounds):
            for name, call in calls.items():
                samples.setdefault(name, []).append(await _drive(call, seconds))
    return samples


def _ratios(samples: dict[str, list[float]], ours: str, theirs: str) -> tuple[float, float]:
    """(median of the ratios of runs taken side by side, fastest run / fastest run).

    The first is the verdict.  Each ratio compares two runs a second apart, so a slow drift in
    the shared host's load cancels out, and the median drops the rounds that a burst of noise
    hit on one side only.  The second is printed beside it: noise only ever slows a run down,
    but one lucky run moves it.
    """
    paired = statistics.median(a / b for a, b in zip(samples[ours], samples[theirs],
                                                      strict=True))
    return paired, max(samples[ours]) / max(samples[theirs])


def _import_ms(statements: list[str], rounds: int = 11) -> list[tuple[float, float]]:
    """(fastest, median) milliseconds of each statement in a fresh interpreter, from bytecode.

    The statements take turns round by round, so a burst of noise from the shared machine hits
    all of them alike.  The fastest run is the verdict (noise only ever adds time); the median
    is printed beside it.  httpx in site-packages was byte-compiled when pip installed it; an
    editable keysched may not be (``PYTHONDONTWRITEBYTECODE`` is set on some machines, this one
    included), and then every import would compile the sources.  Compile first, as an installed
    package would be.
    """
    import compileall
    import os
    from pathlib import Path

    import keysched

    compileall.compile_dir(str(Path(keysched.__file__).parent), quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times: list[list[float]] = [[] for _ in statements]
    for _ in range(rounds):
        for index, statement in enumerate(statements):
            out = subprocess.run(
                [sys.executable, "-c",
                 f"import time; t = time.perf_counter(); {statement}; "
                 "print(time.perf_counter() - t)"], env=env,
                check=True, capture_output=True, text=True)
            times[index].append(float(out.stdout) * 1000)
    return [(min(runs), statistics.median(runs)) for runs in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved runs per client")
    args = parser.parse_args()
    with bench_server() as base:
        samples = asyncio.run(_measure(base, args.seconds, args.rounds))
    print(f"{CONCURRENCY} concurrent requests, server delay {DELAY * 1000:.0f} ms, "
          f"{args.rounds} interleaved runs of {args.seconds:g} s per client")
    for name, rates in samples.items():
        print(f"  {name:26s} fastest run {max(rates):6.0f} req/s, median "
              f"{statistics.median(rates):6.0f}")
    for label, ours, theirs, target in (
            ("fast KeyedClient / raw aiohttp", "KeyedClient (fast=True)", "raw aiohttp", 0.8),
            ("plain KeyedClient / raw httpx ", "KeyedClient (httpx)", "raw httpx", 0.9)):
        paired, best = _ratios(samples, ours, theirs)
        print(f"  {label} = {paired:.2f}, median of side-by-side runs (target >= {target}) "
              f"{'OK' if paired >= target else 'MISSED'}; fastest runs {best:.2f}")
    # `import keysched` loads the client (asyncio, httpx) on first use: measure that too.
    (httpx_ms, httpx_med), (keysched_ms, _), (client_ms, client_med) = _import_ms(
        ["import httpx", "import keysched", "import keysched; keysched.KeyedClient"])
    extra = client_ms - httpx_ms
    print(f"  import httpx {httpx_ms:.1f} ms; import keysched {keysched_ms:.1f} ms; "
          f"import keysched + KeyedClient {client_ms:.1f} ms: +{extra:.1f} ms over httpx "
          f"(target <= 30) {'OK' if extra <= 30 else 'MISSED'}; fastest of 11 runs each "
          f"(medians: httpx {httpx_med:.1f}, keysched + KeyedClient {client_med:.1f}: "
          f"+{client_med - httpx_med:.1f})")


if __name__ == "__main__":
    main()
