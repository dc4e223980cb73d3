"""keysched by example: configure a pool, run many requests at once, watch failover and fallback.

    python examples.py

With no ``GEMINI_API_KEYS`` in the environment this runs against the embedded fake Gemini server
(the simulator's world model behind real HTTP on 127.0.0.1), on the built-in ``demo`` scenario:
three projects, one of them with a tiny per-minute quota (a rate-limited key), a key revoked a
few seconds in, and the best model overloaded for a while.  With ``GEMINI_API_KEYS`` set (keys
separated by commas or newlines; optionally ``GEMINI_MODELS``) it sends a few prompts to the real
API instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import keysched


def describe(result: keysched.GenerateResult) -> str:
    """One line: who served the request, and the attempts it took."""
    path = " -> ".join(f"{a.key}/{a.model.removeprefix('gemini-')}:{a.outcome.value}"
                       for a in result.attempts)
    return f"served by {result.key} on {result.model} after {len(result.attempts)} attempt(s): {path}"


def print_pool(client: keysched.KeyedClient) -> None:
    """The pool after the run: each lane's state, why, and its counters."""
    snapshot = client.snapshot()
    print(f"\nThe pool now ({snapshot.requests_finished} answered, {snapshot.requests_failed} failed):")
    print(f"  {'key':8} {'project':8} {'model':24} {'state':11} {'reason':22} {'sent':>4} {'ok':>4}")
    for lane in snapshot.lanes:
        if lane.model not in client.models:
            continue
        until = (f" ({lane.cooldown_until - snapshot.now:.0f}s left)"
                 if lane.cooldown_until is not None else "")
        print(f"  {lane.key:8} {lane.project:8} {lane.model:24} {lane.state.value:11} "
              f"{(lane.reason or '') + until:22} {lane.dispatched:>4} {lane.succeeded:>4}")


async def run_batch(client: keysched.KeyedClient, title: str, prompts: list[str]) -> None:
    """Send `prompts` concurrently and print how each one was served."""
    print(f"\n== {title}")
    results = await asyncio.gather(*(client.generate(p) for p in prompts), return_exceptions=True)
    for prompt, result in zip(prompts, results, strict=True):
        if isinstance(result, keysched.KeyschedError):
            print(f"  {prompt!r}: failed: {result}")
        elif isinstance(result, BaseException):
            raise result
        else:
            print(f"  {prompt!r}: {describe(result)}")


async def against_fake_server() -> None:
    """The demo scenario, compressed in time, over real HTTP on loopback."""
    from sim.scenario import load_scenario
    from sim.server import serve
    from sim.world import World

    scenario = load_scenario("demo")
    scale = scenario.time_scale
    print(f"Fake Gemini server on the '{scenario.name}' scenario ({scenario.description}); "
          f"virtual time runs {scale:g}x faster than the wall clock.")
    with serve(World(scenario, seed=scenario.seed)) as server:
        async with keysched.KeyedClient(
            keys=scenario.pool_keys(),            # Key objects: secret, label, project
            models=scenario.models_best_first,    # best first
            base_url=server.base_url,             # any Gemini-compatible server
            retry=keysched.RetryPolicy(deadline=30.0, overload_cooldown=1.0),
            timeout=10.0,
        ) as client:
            print(f"Configured: {client!r}")
            await run_batch(client, "Six requests at once: least-loaded spreads them over the keys",
                            [f"question {i}" for i in range(6)])
            # Paced by the server's own virtual clock: a batch takes wall time, and sleeping a
            # fixed wall time after it would land in the next section's scene.
            app = server.app

            async def until(virtual: float) -> None:
                while (left := virtual - app.now()) > 0:  # noqa: ASYNC110 - a clock, not an event
                    await asyncio.sleep(left / scale)

            await until(12)  # the revocation lands at virtual t=10 s
            await run_batch(client, "A key was revoked: it is used once, disabled, and the "
                            "request fails over", [f"after revocation {i}" for i in range(6)])
            await until(32)  # pro overloaded from t=30 s
            await run_batch(client, "The best model is overloaded: requests fall back a tier",
                            [f"during the storm {i}" for i in range(8)])
            print_pool(client)
            await under_the_sdk(client, server.base_url)


async def under_the_sdk(client: keysched.KeyedClient, base_url: str) -> None:
    """The same pool under google-genai's own client: the SDK's call is unchanged."""
    try:
        from google import genai
        from google.genai import types
    except ImportError:
        print("\n(pip install -e '.[sdk]' to see the pool under google-genai as well)")
        return
    print("\n== google-genai's own call, scheduled by the pool (the SDK's key is replaced)")
    sdk = genai.Client(api_key="unused", http_options=types.HttpOptions(
        base_url=base_url, api_version="v1beta",
        async_client_args={"transport": client.transport()}))
    answer = await sdk.aio.models.generate_content(model=client.models[0], contents="Hi, SDK")
    served = answer.sdk_http_response.headers if answer.sdk_http_response else None
    print(f"  {(answer.text or '')[:32]!r}... served by {(served or {}).get('x-keysched-key')} on "
          f"{(served or {}).get('x-keysched-model')}")


async def against_real_api() -> None:
    """A few prompts through the real Gemini API with the keys from the environment."""
    async with keysched.KeyedClient.from_env() as client:
        print(f"Real API: {client!r}")
        await run_batch(client, "Three prompts at once",
                        ["Write a haiku about failover", "Name three prime numbers",
                         "Say hello in French"])
        print_pool(client)


def main() -> None:
    """Pick the real API when keys are configured, else the embedded fake server."""
    logging.basicConfig(level=logging.WARNING, format="  [log] %(name)s: %(message)s")
    # keysched logs disabled keys at WARNING and fallbacks and model cooldowns at INFO: show both.
    logging.getLogger("keysched").setLevel(logging.INFO)
    started = time.monotonic()
    if os.environ.get("GEMINI_API_KEYS"):
        asyncio.run(against_real_api())
    else:
        asyncio.run(against_fake_server())
    print(f"\nDone in {time.monotonic() - started:.1f}s.")


if __name__ == "__main__":
    main()
