"""The waiting requests: one FIFO queue per list of allowed models.

Theory of operation
-------------------
Requests that allow the same models, best first, wait in one queue, a heap of request ids (ids
grow with submission time, so the heap is FIFO and a retry goes back to its place by age).  The
dispatch loop takes the oldest head among the queues it has not found blocked (`oldest`).

Entries are never removed from the middle: a request that ended, was dispatched, or moved to
another queue (its server errors took a model off its list) leaves a stale entry, dropped when
it reaches the head.  A request remembers the queue it was last put in (`Request.queued_in`):
an entry in any other queue is stale.  A request may have two entries in one queue (it left
and came back); the first to surface serves, the other is stale by then.

A head that cannot be served is *held*: the queue remembers the scheduler's change count at
that moment and the time until which the answer stands (`hold`).  While nothing that could
serve it has moved since (the count is the same) and that time has not come, `held` names the
queue and the dispatch loop does not ask again: asking would give the same answer (issue 18
item 4: in a saturated pool every event re-checked every waiting head against the budgets).
What moves the count is the scheduler's business (`keysched._core`); the queue only compares.

Decisions where the issue was silent: a head that cannot be served holds back the requests
behind it that allow the same models (that is what FIFO means) and nothing else.
"""

from __future__ import annotations

import heapq
import math

from keysched._requests import Request, Requests, RequestState

__all__ = ["Queues"]


class Queues:
    """FIFO queues of waiting requests, one per list of allowed models.

    Args:
        requests: the open requests (to tell stale entries).
        per_model: server errors a request takes on one model before it leaves that model's
            lists (`RetryPolicy.server_errors_per_model`).
    """

    __slots__ = ("_held", "_per_model", "_queues", "_requests")

    def __init__(self, requests: Requests, per_model: int) -> None:
        self._requests = requests
        self._per_model = per_model
        self._queues: dict[tuple[int, ...], list[int]] = {}
        # models -> (head id, change count, until): why the head waits (`hold`).
        self._held: dict[tuple[int, ...], tuple[int, int, float]] = {}

    def __len__(self) -> int:
        """How many queues there are (some may hold only stale entries)."""
        return len(self._queues)

    def push(self, request: Request) -> None:
        """Queue a waiting request under the models it may still use."""
        request.queued_in = request.models_left(self._per_model)
        heapq.heappush(self._queues.setdefault(request.queued_in, []), request.id)

    def oldest(self, blocked: set[tuple[int, ...]]) -> tuple[tuple[int, ...], Request] | None:
        """The queue, among those not `blocked`, whose head is the oldest request, and that
        request; stale entries are dropped on the way."""
        best: tuple[int, ...] | None = None
        head = 0
        for models, queue in self._queues.items():
            while queue and not self._waits_in(queue[0], models):
                heapq.heappop(queue)
            if queue and models not in blocked and (best is None or queue[0] < head):
                best, head = models, queue[0]
        return None if best is None else (best, self._requests.open[head])

    def hold(self, models: tuple[int, ...], head: Request, count: int) -> None:
        """The head of `models` cannot be served while the change count is `count`, until it
        is too late for it to start (past its `start_by`)."""
        self._held[models] = (head.id, count, math.nextafter(head.start_by, math.inf))

    def held(self, count: int, now: float) -> set[tuple[int, ...]]:
        """The queues whose head was held at change count `count`, whose time has not come, and
        whose head is still the one held (a head that left takes its hold with it)."""
        held = set()
        stale = []
        for models, (head, at_count, until) in self._held.items():
            queue = self._queues.get(models)
            if at_count == count and now < until and queue and queue[0] == head:
                held.add(models)
            else:
                stale.append(models)
        for models in stale:
            del self._held[models]
        return held

    def pop(self, models: tuple[int, ...]) -> None:
        """Take the head off the queue of `models`; an emptied queue goes."""
        queue = self._queues[models]
        heapq.heappop(queue)
        if not queue:
            del self._queues[models]

    def drop_empty(self, blocked: set[tuple[int, ...]]) -> None:
        """Drop queues that stale entries emptied (only `blocked` ones can hold requests)."""
        if len(self._queues) > len(blocked):
            for models in [models for models, queue in self._queues.items() if not queue]:
                del self._queues[models]

    def _waits_in(self, rid: int, models: tuple[int, ...]) -> bool:
        request = self._requests.open.get(rid)
        return (request is not None and request.state is RequestState.WAITING
                and request.queued_in == models)
