"""A virtual clock for driving `KeyedClient` in virtual time (no test sleeps on the wall clock)."""

from __future__ import annotations

import asyncio

EPOCH = 1_000_000.0
"""A non-zero start, so that code assuming ``now == 0`` breaks in tests."""

WALL_EPOCH = 1_767_225_600.0
"""2026-01-01 00:00:00 UTC: 2025-12-31 16:00 in America/Los_Angeles."""


class VirtualClock:
    """Monotonic virtual time: ``sleep(d)`` advances time by `d` at once, then yields.

    Pass ``clock=vc.clock, sleep=vc.sleep, wall_clock=vc.wall`` to `KeyedClient`.  Time only moves
    when something sleeps (the client's timer task) or when a test calls `advance`; it never goes
    backwards.  With ``autojump=False`` a sleeper instead waits until a test `advance`s the clock
    past its wake-up time (for tests that hold requests in flight while others wait).
    """

    def __init__(self, start: float = EPOCH, wall_start: float = WALL_EPOCH, *,
                 autojump: bool = True) -> None:
        self.now = start
        self.start = start
        self.wall_start = wall_start
        self.autojump = autojump
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_start + (self.now - self.start)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"the clock never goes backwards (advance by {seconds!r})")
        self.now += seconds
        self._moved.set()
        self._moved = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"negative sleep {seconds!r}")
        self.sleeps.append(seconds)
        if not self.autojump:
            wake = self.now + seconds
            while self.now < wake:
                await self._moved.wait()
            return
        # Yield first: a timer that gets replaced or cancelled meanwhile must not move time.
        await asyncio.sleep(0)
        self.now += seconds
        await asyncio.sleep(0)
