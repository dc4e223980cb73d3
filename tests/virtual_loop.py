"""An asyncio event loop on virtual time, for loopback tests that must not depend on load.

Why: a test that runs the client against the fake server over real sockets, on the wall clock,
turns every delay of a busy machine into time the scenario sees (scaled up by its time scale):
attempts pass their timeout, arrivals slide into the next quota minute.  On this loop,
``loop.time()`` is virtual, so every timer there is (``asyncio.sleep``, ``asyncio.timeout``,
httpx's and aiohttp's timeouts, the fake server's latencies) runs on it, and virtual time only
moves when the loop has nothing left to do: a machine that is slow makes the test take longer,
never changes what it sees.

How: asyncio asks its selector to wait for I/O until the next timer is due.  `_JumpingSelector`
instead polls for real I/O for a short grace (`GRACE` real seconds: loopback bytes written in
this process are readable at once, the grace covers a kernel that defers them), and if none
came, advances virtual time to that timer and returns, so the loop fires it at once.  While a
job runs in the loop's executor (``getaddrinfo`` for a new connection), time never jumps: the
loop waits for it for real.  With no timer at all, it blocks for real I/O like any loop.

Use `run` with a coroutine function; it takes the running loop's ``time`` as its clock.  An
``async def`` test decorated with `on_virtual_time` runs there instead of on pytest-asyncio's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["EPOCH", "GRACE", "VirtualTimeLoop", "clock", "on_virtual_time", "run"]

EPOCH = 0.0
"""Virtual time at the start.  Zero on purpose: a clock derived from it by subtracting its
start (the fake server's ``now()``) is then exact, and a sleep of ``target - now`` lands on
the target (after one more step at most).  From a large epoch the difference would be rounded
to the epoch's resolution, and a wait for a target between two representable times would
sleep zero seconds for ever: time here moves only by jumps."""
GRACE = 0.001
"""Real seconds to wait for I/O before time jumps to the next timer."""

_T = TypeVar("_T")


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, loop_ref: list[VirtualTimeLoop]) -> None:
        super().__init__()
        self._loop_ref = loop_ref

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)  # type: ignore[no-any-return]
        loop = self._loop_ref[0]
        while True:
            events = super().select(GRACE)
            if events:
                return events  # type: ignore[no-any-return]
            if loop.executor_jobs == 0:
                loop.advance(timeout)
                return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock is virtual and jumps to the next timer when idle."""

    def __init__(self) -> None:
        ref: list[VirtualTimeLoop] = []
        super().__init__(selector=_JumpingSelector(ref))
        ref.append(self)
        self._now = EPOCH
        self.executor_jobs = 0
        self.jumps = 0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by `seconds` (called by the selector when idle)."""
        self._now += seconds
        self.jumps += 1

    def run_in_executor(self, executor: concurrent.futures.Executor | None,
                        func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        future = super().run_in_executor(executor, func, *args)
        self.executor_jobs += 1

        def done(_: asyncio.Future[_T]) -> None:
            self.executor_jobs -= 1

        future.add_done_callback(done)
        return future


async def _tasks_left() -> list[asyncio.Task[Any]]:
    """The tasks still running once closing sockets have had a few turns to be noticed."""
    me = asyncio.current_task()
    for _ in range(200):
        left = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
        if not left:
            break
        await asyncio.sleep(0)
    return left


def run(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``main()`` to its end on a fresh `VirtualTimeLoop`; fail if it leaves a task."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(main())
        left = loop.run_until_complete(_tasks_left())
        assert left == [], f"tasks left behind: {left}"
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        return result
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def clock() -> Callable[[], float]:
    """The running `VirtualTimeLoop`'s ``time``, to give a client or a server as its clock."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop), "run the test on a VirtualTimeLoop"
    return loop.time


def on_virtual_time(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Make an ``async def`` test a plain one that runs it on a fresh loop with `run`.

    pytest still sees the test's own parameters (its fixtures), through ``functools.wraps``.
    """

    @functools.wraps(test)
    def on_the_loop(*args: Any, **kwargs: Any) -> None:
        run(lambda: test(*args, **kwargs))

    return on_the_loop
