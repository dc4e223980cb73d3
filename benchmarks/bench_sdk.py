"""CPU per call of the official SDKs through the pool, against the same SDK alone on one key.

Run with ``python -m benchmarks.bench_sdk`` (``--calls`` and ``--rounds`` change the runs; needs
``pip install -e ".[sdk]"`` and aiohttp for the server).

A local aiohttp server on 127.0.0.1, in its own process (its CPU is not counted), answers
native Gemini calls with a small ``generateContent`` body and OpenAI-compatible calls with a
small ``chat.completion``.  Each pair is measured in the same run, taking turns round by round:

- google-genai async: ``.aio.models.generate_content`` on its own httpx client, against the
  same SDK on ``KeyedClient.transport()`` (10 keys, 2 models);
- google-genai sync: ``models.generate_content`` on its own httpx client, against
  ``keysched.genai_client`` (the pool on its private event-loop thread);
- openai async: ``chat.completions.create`` on its own httpx client, against the pool.

CPU is the process's own (``time.process_time``: every thread, the pool's loop thread
included), divided by the calls.  The verdict is the median ratio (pool / alone) over rounds.
``--fast`` lets the pool send through aiohttp (``KeyedClient(fast=True)``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.bench_client import BODY, KEYS, bench_server

MODELS = ["gemini-2.5-flash", "gemini-2.5-flash-lite"]
CHAT = json.dumps({
    "id": "bench", "object": "chat.completion", "created": 0, "model": MODELS[0],
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
CONCURRENCY = 8


def _serve(port: int) -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        body = CHAT if "/openai/" in request.path else BODY
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                handle_signals=False)


def _cpu_per_call(run: Callable[[], None], calls: int) -> float:
    started = time.process_time()
    run()
    return (time.process_time() - started) / calls


def _async_runner(call: Callable[[], Awaitable[object]], calls: int,
                  loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    async def many() -> None:
        async def worker(n: int) -> None:
            for _ in range(n):
                await call()

        await asyncio.gather(*(worker(calls // CONCURRENCY) for _ in range(CONCURRENCY)))

    return lambda: loop.run_until_complete(many())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--fast", action="store_true",
                        help="the pool sends through aiohttp (KeyedClient(fast=True))")
    args = parser.parse_args(argv)

    import httpx
    import openai
    from google import genai
    from google.genai import types

    from keysched import KeyedClient, genai_client

    calls = args.calls - args.calls % CONCURRENCY
    loop = asyncio.new_event_loop()
    with bench_server(_serve, ()) as base:
        pool = KeyedClient(keys=KEYS, models=MODELS, base_url=base, fast=args.fast)

        def genai_on(**http: Any) -> genai.Client:
            return genai.Client(api_key=KEYS[0], http_options=types.HttpOptions(
                base_url=base, api_version="v1beta", **http))

        alone_async = genai_on(async_client_args={"transport": httpx.AsyncHTTPTransport()})
        pooled_async = genai_on(async_client_args={"transport": pool.transport()})
        alone_sync = genai_on(client_args={"transport": httpx.HTTPTransport()})
        pooled_sync = genai_client(keys=KEYS, models=MODELS, base_url=base,
                                   api_version="v1beta", fast=args.fast)
        openai_base = f"{base}/v1beta/openai/"
        alone_openai = openai.AsyncOpenAI(api_key=KEYS[0], base_url=openai_base,
                                          max_retries=0, http_client=httpx.AsyncClient())
        pooled_openai = openai.AsyncOpenAI(
            api_key=KEYS[0], base_url=openai_base, max_retries=0,
            http_client=httpx.AsyncClient(transport=pool.transport(), timeout=None))
        messages: Any = [{"role": "user", "content": "hi"}]

        def sync_runner(client: genai.Client) -> Callable[[], None]:
            def run() -> None:
                for _ in range(calls):
                    client.models.generate_content(model=MODELS[0], contents="hi")
            return run

        pairs: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
            "google-genai async": (
                _async_runner(lambda: pooled_async.aio.models.generate_content(
                    model=MODELS[0], contents="hi"), calls, loop),
                _async_runner(lambda: alone_async.aio.models.generate_content(
                    model=MODELS[0], contents="hi"), calls, loop)),
            "google-genai sync": (sync_runner(pooled_sync), sync_runner(alone_sync)),
            "openai async": (
                _async_runner(lambda: pooled_openai.chat.completions.create(
                    model=MODELS[0], messages=messages), calls, loop),
                _async_runner(lambda: alone_openai.chat.completions.create(
                    model=MODELS[0], messages=messages), calls, loop)),
        }
        for pooled, alone in pairs.values():  # warm-up: connections, imports, caches
            pooled()
            alone()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in pairs}
        for _ in range(args.rounds):
            for name, (pooled, alone) in pairs.items():
                results[name].append((_cpu_per_call(pooled, calls),
                                      _cpu_per_call(alone, calls)))
        pooled_sync.close()
        loop.run_until_complete(pooled_sync.aio.aclose())  # both surfaces closed: the pool too
        loop.run_until_complete(pool.aclose())
    loop.close()
    print(f"CPU per call, {calls} calls per run, {args.rounds} rounds (median of runs; "
          f"ratio: median of per-round ratios)")
    print(f"{'':22} {'through the pool':>17} {'SDK alone':>11} {'ratio':>7} {'extra':>9}")
    for name, runs in results.items():
        pooled_cpu = statistics.median(p for p, _ in runs)
        alone_cpu = statistics.median(a for _, a in runs)
        ratio = statistics.median(p / a for p, a in runs)
        print(f"{name:22} {pooled_cpu * 1e3:14.3f} ms {alone_cpu * 1e3:8.3f} ms {ratio:6.2f}x"
              f" {(pooled_cpu - alone_cpu) * 1e6:+7.0f} us")


if __name__ == "__main__":
    main()
