"""A separate process for the sharing fault tests (run as ``python tests/shared_worker.py``).

``race URL POOL N``: waits for a line on stdin, then claims the one unit of each of N groups
(a limit of 1 request each) as fast as it can and prints the indexes of the groups it got.

``hold URL POOL KEY N TTL``: takes N leases on KEY that expire after TTL seconds, prints
``held``, and sleeps until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from keysched import RedisStore
from keysched._store import Claim


async def race(url: str, pool: str, n: int) -> None:
    store = RedisStore(url, pool_name=pool, timeout=30.0)
    sys.stdin.readline()
    won = []
    for index in range(n):
        grant = await store.admit(Claim("racer", str(index), "k", f"g{index}", "m", rpm=1,
                                        window=600.0, day_end=4e9), 0)
        if grant.granted:
            won.append(index)
    print(" ".join(map(str, won)), flush=True)
    await store.aclose()


async def hold(url: str, pool: str, key: str, n: int, ttl: float) -> None:
    store = RedisStore(url, pool_name=pool, timeout=30.0)
    for index in range(n):
        grant = await store.admit(Claim("doomed", str(index), key, "p", "m", lease_ttl=ttl,
                                        day_end=4e9), 0)
        assert grant.granted
    print("held", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    mode, url, pool, *rest = sys.argv[1:]
    if mode == "race":
        asyncio.run(race(url, pool, int(rest[0])))
    else:
        asyncio.run(hold(url, pool, rest[0], int(rest[1]), float(rest[2])))
