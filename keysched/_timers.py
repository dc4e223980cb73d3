"""The core's timer heap: when `Scheduler.poll` has something to do, and what.

Theory of operation
-------------------
A timer is a plain record ``(at, order, kind, ref, extra)`` in a binary heap, as in SimPy's
``(time, priority, counter, event)``: timers due at one time fire by ``order``, which is the
push order unless the caller gives one (a request's deadline gives its request id, so that
deadlines due together fail the oldest request first however late each was armed).  The heap
does not know what a timer means; the scheduler does (`TimerKind`).

Timers are never cancelled.  A timer whose request ended (or left backoff) is dropped when it
surfaces, or by `compact` when the heap has grown past twice its live size: a timer that must
stay (a parked lane's) could otherwise sit at the top and keep every later one alive, and
under steady load the heap would grow with the throughput.  Rebuilding at twice the live size
is amortised O(1) per push.

A lane parked until a time it is already parked until is not armed twice (`push` drops the
second LANE timer with the same key, model and time).  Both would fire in one `poll` and offer
the lane again twice, which is once.  Without this, a pool whose best model ran out of its day
parked each released key's lane until midnight again at every dispatch: one timer more per
dispatch, kept alive by `compact`, and a heap that grew with the run (issue 18 item 4: the
million-request run slowed down as it went).

Decisions where the issue was silent:

- `push` refuses nothing: a timer in the past fires at the next `poll` (a lane parked until a
  time already passed must come back, not raise).
- `peek` returns ``math.inf`` when the heap is empty, as SimPy's does.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Timer", "TimerHeap", "TimerKind"]

_MIN_LIMIT = 64  # never compact a heap smaller than this


class TimerKind(enum.IntEnum):
    """What a timer does when it fires."""

    READY = 0
    """A request's backoff ended: it queues again (``ref``: the request)."""
    DEADLINE = 1
    """A request's deadline passed: it fails unless it is in flight (``ref``: the request)."""
    LANE = 2
    """A parked (key, model) lane may serve again (``ref``: the key, ``extra``: the model)."""
    WAKE = 3
    """Capacity may have returned (a cooldown ended): the waiting requests are placed again."""


class Timer(NamedTuple):
    """One entry of the heap; compared by (`at`, `order`), which is unique."""

    at: float
    order: int
    kind: TimerKind
    ref: int
    extra: int


class TimerHeap:
    """A heap of `Timer`s ordered by time, then by `order`."""

    __slots__ = ("_heap", "_lanes", "_limit", "_seq")

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = 0  # the default `order`: push order
        self._limit = _MIN_LIMIT  # `oversized` past this many timers
        self._lanes: set[tuple[int, int, float]] = set()  # (key, model, at) of LANE timers

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, at: float, kind: TimerKind, ref: int = 0, extra: int = 0,
             order: int | None = None) -> None:
        """Fire a `kind` timer at `at`; timers due together fire by `order` (default: as pushed)."""
        if kind is TimerKind.LANE:
            lane = (ref, extra, at)
            if lane in self._lanes:
                return  # armed already: it would offer the lane again at the same time
            self._lanes.add(lane)
        if order is None:
            self._seq += 1
            order = self._seq
        heapq.heappush(self._heap, Timer(at, order, kind, ref, extra))

    @property
    def oversized(self) -> bool:
        """Whether the heap grew past twice its size at the last `compact`: time to compact."""
        return len(self._heap) > self._limit

    def compact(self, keep: Callable[[Timer], bool]) -> None:
        """Drop every timer `keep` rejects (those of ended requests)."""
        live = [timer for timer in self._heap if keep(timer)]
        heapq.heapify(live)
        self._heap = live
        self._lanes = {(t.ref, t.extra, t.at) for t in live if t.kind is TimerKind.LANE}
        self._limit = max(_MIN_LIMIT, 2 * len(live))

    def peek(self) -> Timer | None:
        """The next timer to fire, if any (it stays in the heap)."""
        return self._heap[0] if self._heap else None

    def next_at(self) -> float:
        """When the next timer fires (`math.inf`: none)."""
        return self._heap[0].at if self._heap else math.inf

    def pop(self) -> Timer:
        """Take the next timer out of the heap."""
        return self._popped(heapq.heappop(self._heap))

    def pop_due(self, now: float) -> Timer | None:
        """Take out the next timer due at or before `now`, if any."""
        heap = self._heap
        if heap and heap[0].at <= now:
            return self._popped(heapq.heappop(heap))
        return None

    def _popped(self, timer: Timer) -> Timer:
        if timer.kind is TimerKind.LANE:
            self._lanes.discard((timer.ref, timer.extra, timer.at))
        return timer
