"""The core's timer heap: time order, then push order or the given order; compaction keeps order."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from keysched._timers import TimerHeap, TimerKind


def test_empty_heap_peeks_infinity() -> None:
    """An empty heap has no next timer and says so with math.inf."""
    heap = TimerHeap()
    assert heap.peek() is None
    assert heap.next_at() == math.inf
    assert heap.pop_due(1e12) is None


def test_due_timers_fire_by_time_then_order() -> None:
    """Timers due together fire by order: push order unless one was given."""
    heap = TimerHeap()
    heap.push(5.0, TimerKind.WAKE)
    heap.push(3.0, TimerKind.LANE, 7, 2)
    heap.push(5.0, TimerKind.DEADLINE, 1, order=0)  # an explicit order goes first
    heap.push(9.0, TimerKind.READY, 4)
    assert heap.next_at() == 3.0
    fired = []
    while (timer := heap.pop_due(5.0)) is not None:
        fired.append((timer.at, timer.kind, timer.ref, timer.extra))
    assert fired == [(3.0, TimerKind.LANE, 7, 2), (5.0, TimerKind.DEADLINE, 1, 0),
                     (5.0, TimerKind.WAKE, 0, 0)]
    assert len(heap) == 1


@given(st.lists(st.tuples(st.floats(0, 100), st.booleans()), max_size=200))
def test_compaction_drops_only_rejected_timers_and_keeps_order(
        entries: list[tuple[float, bool]]) -> None:
    """Compacting keeps exactly the timers `keep` accepts, in the order they would fire."""
    heap, reference = TimerHeap(), TimerHeap()
    for ref, (at, live) in enumerate(entries):
        heap.push(at, TimerKind.READY, ref, int(live))
        reference.push(at, TimerKind.READY, ref, int(live))
    heap.compact(lambda timer: bool(timer.extra))
    assert not heap.oversized
    kept = [heap.pop() for _ in range(len(heap))]
    expected = [t for t in (reference.pop() for _ in range(len(reference))) if t.extra]
    assert kept == expected


def test_oversized_after_doubling_past_the_last_compaction() -> None:
    """The heap asks to be compacted only once it outgrew twice its live size (at least 64)."""
    heap = TimerHeap()
    for index in range(64):
        heap.push(float(index), TimerKind.WAKE)
    assert not heap.oversized
    heap.push(100.0, TimerKind.WAKE)
    assert heap.oversized
    heap.compact(lambda timer: timer.at >= 60)
    assert len(heap) == 5
    assert not heap.oversized
