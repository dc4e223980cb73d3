"""Throughput of `KeyedClient` against the physical limit, and the import cost of keysched.

Run with ``python -m benchmarks.bench_client`` (``--seconds`` and ``--rounds`` change the runs).

A local aiohttp server on 127.0.0.1 (in its own process, so it does not share the client's event
loop) answers every POST with a small Gemini JSON body after a fixed delay: 5 ms, where the
client's own CPU per request decides the rate, and 100 ms, the round trip of the loopback fake
server the issue measured on, where a client only has to keep up.  Each is driven at 16 and 64
concurrent requests by, in turns (so the shared machine's noise falls on all alike):

- raw ``aiohttp`` posts (the physical limit; every ratio is against it) and raw ``httpx`` posts,
- ``KeyedClient`` over 10 keys as a user writes it: aiohttp when installed (the ``fast`` extra),
- ``KeyedClient(fast=False)``: several small httpx clients of our own (no aiohttp installed),
- ``KeyedClient(http_client=...)`` with one ``httpx.AsyncClient``: the former default, one pool,
- the two httpx designs again with ``sniffio`` absent: without it httpcore tries to import it
  anew for every lock and event it sets up.  sniffio is installed (a dependency of keysched);
  its absence is played by a finder that makes the import fail after the same search of
  ``sys.path`` that a missing module costs.

Targets: default KeyedClient / raw aiohttp >= 0.9 at c=16 and c=64 (the median ratio of runs
taken side by side; fastest runs are printed too, and ``python -m benchmarks.profile_client
--mode ir`` gives the noise-free instruction count); and ``import keysched`` with its client
loaded at most 30 ms more than ``import httpx`` (fresh interpreters taking turns, the fastest of
11 each; the median is printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.abc
import importlib.machinery
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

BODY = json.dumps({
    "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
                    "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4},
    "modelVersion": "gemini-2.5-flash", "responseId": "bench"}, indent=2).encode()
CONCURRENCY = 64  # profile_client's
CONCURRENCIES = (16, 64)
DELAY = 0.005  # the server's delay where client CPU decides; profile_client's
DELAYS = (DELAY, 0.1)
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


async def _drive(call: Callable[[], Awaitable[object]], seconds: float,
                 concurrency: int = CONCURRENCY) -> float:
    """Run `call` from `concurrency` workers for `seconds`; return requests per second."""
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
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


class _NoSniffio(importlib.abc.MetaPathFinder):
    """Plays sniffio's absence: ``import sniffio`` searches sys.path for nothing, then fails."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: Any = None) -> None:
        if name != "sniffio":
            return
        importlib.machinery.PathFinder.find_spec("sniffio_absent")  # the same fruitless search
        raise ModuleNotFoundError("No module named 'sniffio'", name="sniffio")


@contextlib.contextmanager
def _without_sniffio() -> Iterator[None]:
    finder = _NoSniffio()
    saved = sys.modules.pop("sniffio", None)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        if saved is not None:
            sys.modules["sniffio"] = saved


NO_SNIFFIO = ", no sniffio"  # a client name ending so runs without sniffio


def sniffio_as_named(name: str) -> contextlib.AbstractContextManager[None]:
    """Without sniffio for a client whose name ends in `NO_SNIFFIO`, else as installed."""
    return _without_sniffio() if name.endswith(NO_SNIFFIO) else contextlib.nullcontext()


@contextlib.asynccontextmanager
async def clients(base: str) -> AsyncIterator[dict[str, Callable[[], Awaitable[object]]]]:
    """The clients measured, each as a call that makes one request and reads its answer."""
    import aiohttp
    import httpx

    from keysched import KeyedClient

    url = f"{base}/v1beta/models/{MODEL}:generateContent"
    payload = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
    headers = {"x-goog-api-key": "AIzaBENCH0000000000000000000000000000",
               "content-type": "application/json"}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with (KeyedClient(keys=KEYS, models=[MODEL], base_url=base) as default,
                KeyedClient(keys=KEYS, models=[MODEL], base_url=base, fast=False) as small,
                httpx.AsyncClient(limits=limits, follow_redirects=False) as one_pool,
                KeyedClient(keys=KEYS, models=[MODEL], base_url=base,
                            http_client=one_pool) as single,
                httpx.AsyncClient(limits=limits) as raw,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session):

        async def httpx_post() -> None:
            response = await raw.post(url, content=payload, headers=headers)
            json.loads(response.content)

        async def aiohttp_post() -> None:
            async with session.post(url, data=payload, headers=headers) as response:
                json.loads(await response.read())

        yield {
            "raw aiohttp": aiohttp_post,
            "KeyedClient (default)": lambda: default.generate("hi"),
            "KeyedClient (httpx)": lambda: small.generate("hi"),
            "KeyedClient (httpx)" + NO_SNIFFIO: lambda: small.generate("hi"),
            "KeyedClient (one httpx pool)": lambda: single.generate("hi"),
            "KeyedClient (one httpx pool)" + NO_SNIFFIO: lambda: single.generate("hi"),
            "raw httpx": httpx_post,
        }


async def _measure(base: str, seconds: float, rounds: int,
                   names: Sequence[str] | None = None) -> dict[tuple[int, str], list[float]]:
    """Requests per second of each client at each concurrency in each of `rounds` runs.

    Interleaving (A B C D, A B C D, ...) spreads the shared machine's noise over every client
    instead of letting one client run while another process happens to hog a core.
    """
    samples: dict[tuple[int, str], list[float]] = {}
    async with clients(base) as calls:
        for _ in range(rounds):
            for concurrency in CONCURRENCIES:
                for name, call in calls.items():
                    if names is not None and name not in names:
                        continue
                    with sniffio_as_named(name):
                        rate = await _drive(call, seconds, concurrency)
                    samples.setdefault((concurrency, name), []).append(rate)
    return samples


def _ratios(samples: dict[Any, list[float]], ours: Any, theirs: Any) -> tuple[float, float]:
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


def _report(delay: float, samples: dict[tuple[int, str], list[float]]) -> None:
    print(f"server delay {delay * 1000:.0f} ms: req/s (median of runs) and / raw aiohttp "
          "(median of side-by-side ratios; fastest run / fastest run)")
    names = list(dict.fromkeys(name for _, name in samples))
    print(f"  {'':40s}" + "".join(f"{f'c={c}':>30s}" for c in CONCURRENCIES))
    for name in names:
        cells = []
        for concurrency in CONCURRENCIES:
            rates = samples[concurrency, name]
            paired, best = _ratios(samples, (concurrency, name), (concurrency, "raw aiohttp"))
            cells.append(f"{statistics.median(rates):7.0f} {paired:5.2f}x ({best:4.2f}x)")
        print(f"  {name:40s}" + "".join(f"{cell:>30s}" for cell in cells))
    for concurrency in CONCURRENCIES:
        paired, _ = _ratios(samples, (concurrency, "KeyedClient (default)"),
                            (concurrency, "raw aiohttp"))
        print(f"  default KeyedClient / raw aiohttp at c={concurrency}: {paired:.2f} "
              f"(target >= 0.9) {'OK' if paired >= 0.9 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per client")
    parser.add_argument("--no-import", action="store_true", help="skip the import timing")
    args = parser.parse_args()
    print(f"{args.rounds} interleaved runs of {args.seconds:g} s per client and concurrency")
    for delay in DELAYS:
        with bench_server(args=(delay,)) as base:
            samples = asyncio.run(_measure(base, args.seconds, args.rounds))
        _report(delay, samples)
    if args.no_import:
        return
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
