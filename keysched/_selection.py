"""Which key serves a request: selectors, and the `Policy` object the core takes.

Theory of operation
-------------------
A selector answers one question: "which key should serve this request on this model now?".  It
asks an oracle bound to the request whether a lane can serve (`LaneOracle.verdict`, answered with
a `Verdict`) and gets told when a key's load changed (`update`) or when a parked lane may serve
again (`release`).

`LeastLoaded` keeps one heap per model of ``(in_flight, last_dispatch_seq, key)`` entries with
lazy deletion: every change bumps the key's version and marks it dirty for each model; the next
selection on a model pushes one fresh entry per dirty key, stale entries are dropped when they
surface, and a lane that cannot serve is parked (popped) until the core tells it to come back.
Selection, dispatch and completion therefore cost O(log n) in the number of keys.  Ties on load
go to the key used least recently, so equal keys are used equally.

`RoundRobin` and `RandomChoice` are the naive baselines the simulator compares against; they scan
and are O(n) in the worst case, which is fine for them.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Container, Mapping
from typing import Protocol

import attrs

from keysched._config import _count, _duration
from keysched._errors import ConfigurationError
from keysched._outcomes import OutcomeKind
from keysched._table import DEFAULT_ACTIONS, Action

__all__ = ["BLOCKED", "SERVES", "SKIPS", "LaneOracle", "LeastLoaded", "Policy", "RandomChoice",
           "RoundRobin", "Selector", "Verdict"]


@attrs.frozen
class Verdict:
    """Whether a lane can serve a request now, and if not, who it can serve and from when.

    Attributes:
        serves: the lane can serve this request now.
        others: the lane can serve other requests now (True when it serves this one); a lane
            that cannot is parked until `until`.
        until: when a lane that serves nobody may serve again (`math.inf`: until the key or its
            group is touched again: an attempt ends, a cooldown is set, ...).
    """

    serves: bool
    others: bool
    until: float = -math.inf

    @classmethod
    def blocked_until(cls, until: float) -> Verdict:
        """The lane serves nobody until `until`."""
        return cls(False, False, until)


SERVES = Verdict(True, True)
"""The lane can serve the request now."""
SKIPS = Verdict(False, True)
"""The lane cannot serve *this* request (say, too many tokens for what is left of its budget),
but may serve others now."""
BLOCKED = Verdict(False, False, math.inf)
"""The lane serves nobody until the key or its group is touched again."""


class LaneOracle(Protocol):
    """What a selector may ask the core about lanes, for one request."""

    def verdict(self, key: int, model: int, now: float) -> Verdict:
        """Whether the lane can serve the request now (see `Verdict`)."""
        ...

    def park(self, key: int, model: int, until: float) -> None:
        """Have `release(key, model)` called at `until` (ignored for `math.inf`)."""
        ...


class Selector(Protocol):
    """Picks a key for a request on a model, among the lanes the core says can serve."""

    def select(self, oracle: LaneOracle, model: int, now: float,
               avoid: Container[int]) -> int | None:
        """The key to serve the current request on `model` now, if any lane can.

        Keys in `avoid` already failed this request: use one only when no other lane can serve.
        """
        ...

    def update(self, key: int, load: tuple[int, int]) -> None:
        """The key's load changed: now ``(requests in flight, sequence number of its last
        dispatch)``, or it changed state (disabled, freed)."""
        ...

    def release(self, key: int, model: int) -> None: ...


class LeastLoaded:
    """Fewest requests in flight first; ties to the least recently used key. O(log n)."""

    def __init__(self, n_keys: int, n_models: int) -> None:
        self._n = n_keys
        self._stamp = [0] * n_keys
        # Initial tie-break by position: the first dispatches walk the keys in order.
        self._load = [(0, index - n_keys) for index in range(n_keys)]
        self._heaps: list[list[tuple[int, int, int, int]]] = [
            [(0, index - n_keys, index, 0) for index in range(n_keys)] for _ in range(n_models)
        ]
        # Keys whose entry in a model's heap is out of date.  They are re-filed only when that
        # heap is next used, so a change of load costs a set insertion per model, not a push.
        self._dirty: list[set[int]] = [set() for _ in range(n_models)]

    def update(self, key: int, load: tuple[int, int]) -> None:
        """Record the key's new (in_flight, last_seq); it is re-filed in each heap when used."""
        self._load[key] = load
        self._stamp[key] += 1  # every entry of the key, in every heap, is now stale
        for dirty in self._dirty:
            dirty.add(key)

    def release(self, key: int, model: int) -> None:
        # A fresh stamp everywhere keeps the rule "at most one live entry per key and heap".
        self.update(key, self._load[key])

    def _compact(self, model: int) -> None:
        # Keep only the newest entry of each key; duplicates and stale entries go.
        seen: set[int] = set()
        fresh = []
        for entry in self._heaps[model]:
            key = entry[2]
            if entry[3] == self._stamp[key] and key not in seen:
                seen.add(key)
                fresh.append(entry)
        heapq.heapify(fresh)
        self._heaps[model] = fresh

    def select(self, oracle: LaneOracle, model: int, now: float,
               avoid: Container[int]) -> int | None:
        heap = self._heaps[model]
        stamps = self._stamp
        dirty = self._dirty[model]
        if dirty:  # re-file every key that changed since this model's heap was last used
            load = self._load
            for key in dirty:
                in_flight, seq = load[key]
                heapq.heappush(heap, (in_flight, seq, key, stamps[key]))
            dirty.clear()
            if len(heap) > 4 * self._n + 64:
                self._compact(model)
                heap = self._heaps[model]
        set_aside: list[tuple[int, int, int, int]] | None = None
        fallback: int | None = None
        chosen: int | None = None
        while heap:
            entry = heap[0]
            key = entry[2]
            if entry[3] != stamps[key]:
                heapq.heappop(heap)
                continue
            verdict = oracle.verdict(key, model, now)
            if verdict.serves and key not in avoid:
                chosen = key
                break
            if verdict.others:  # usable as a last resort, or by others
                if verdict.serves and fallback is None:
                    fallback = key
                if set_aside is None:
                    set_aside = []
                set_aside.append(heapq.heappop(heap))
            else:
                heapq.heappop(heap)
                oracle.park(key, model, verdict.until)
        if set_aside is not None:
            for entry in set_aside:
                heapq.heappush(heap, entry)
        return chosen if chosen is not None else fallback


class _Scanning:
    """Shared scan for the naive baselines: first lane that can serve, from a start position."""

    def __init__(self, n_keys: int) -> None:
        self._n = n_keys

    def update(self, key: int, load: tuple[int, int]) -> None:
        """Scanners keep no index; nothing to update."""

    def release(self, key: int, model: int) -> None:
        """Scanners keep no index; nothing to update."""

    def _scan(self, oracle: LaneOracle, model: int, now: float, start: int,
              avoid: Container[int]) -> int | None:
        fallback = None
        for step in range(self._n):
            key = (start + step) % self._n
            if oracle.verdict(key, model, now).serves:
                if key not in avoid:
                    return key
                fallback = key if fallback is None else fallback
        return fallback


class RoundRobin(_Scanning):
    """Rotate through the keys; a retry goes to the next key that can serve."""

    def __init__(self, n_keys: int, n_models: int) -> None:
        super().__init__(n_keys)
        self._cursor = [0] * n_models

    def select(self, oracle: LaneOracle, model: int, now: float,
               avoid: Container[int]) -> int | None:
        key = self._scan(oracle, model, now, self._cursor[model], avoid)
        if key is not None:
            self._cursor[model] = (key + 1) % self._n
        return key


class RandomChoice(_Scanning):
    """A uniformly random key among those that can serve (a few draws, then a scan)."""

    def __init__(self, n_keys: int, rng: random.Random) -> None:
        super().__init__(n_keys)
        self._rng = rng

    def select(self, oracle: LaneOracle, model: int, now: float,
               avoid: Container[int]) -> int | None:
        for _ in range(min(self._n, 8)):
            key = self._rng.randrange(self._n)
            if oracle.verdict(key, model, now).serves and key not in avoid:
                return key
        return self._scan(oracle, model, now, self._rng.randrange(self._n), avoid)


SelectorFactory = Callable[[int, int, random.Random], Selector]


def _least_loaded(n_keys: int, n_models: int, rng: random.Random) -> Selector:
    return LeastLoaded(n_keys, n_models)


@attrs.frozen(kw_only=True)
class Policy:
    """How the core chooses and reacts: the default is keysched's own policy.

    Attributes:
        name: a short name, for reports.
        selector: builds the selector from (number of keys, number of models, rng).
        actions: the outcome table (`keysched._table.DEFAULT_ACTIONS` by default).
        waits_for_capacity: queue requests when nothing can serve (True), or fail them at once.
        budgets_limits: budget the configured known limits so that no request exceeds them.
        learns_limits: learn limits from the values 429s report and budget them too, and probe
            a group whose limit is still unknown after its cooldown (needs `budgets_limits`).
        overload_trip: how many 503s of one model, in the last `overload_window` seconds, take
            it out of rotation (when they are also at least `overload_rate` of its outcomes
            there); a lone 503 only retries the request on another key at once.
        overload_rate: the share of a model's recent outcomes that must be 503s to trip.
        overload_window: the seconds of evidence the model breaker looks at.
        probe_interval: while a model cools, one request with nothing else to use may probe it
            this often (seconds); an answer ends the cooldown.
        lane_error_trip: how many 500s in a row on one (key, model) lane cool that lane, for
            ``RetryPolicy.overload_cooldown``, doubling per failed probe up to its cap.
    """

    name: str = "least-loaded"
    selector: SelectorFactory = _least_loaded
    actions: Mapping[OutcomeKind, Action] = attrs.field(factory=lambda: dict(DEFAULT_ACTIONS))
    waits_for_capacity: bool = True
    budgets_limits: bool = True
    learns_limits: bool = True
    overload_trip: int = 5
    overload_rate: float = 0.5
    overload_window: float = 10.0
    probe_interval: float = 1.0
    lane_error_trip: int = 3

    def __attrs_post_init__(self) -> None:
        missing = [kind.value for kind in OutcomeKind if kind not in self.actions]
        if missing:
            raise ValueError(f"Policy {self.name!r}: actions lack a row for {missing}")
        _count("policy.overload_trip", self.overload_trip)
        _count("policy.lane_error_trip", self.lane_error_trip)
        _duration("policy.overload_window", self.overload_window)
        _duration("policy.probe_interval", self.probe_interval)
        if (isinstance(self.overload_rate, bool) or not isinstance(self.overload_rate, int | float)
                or not 0 < self.overload_rate <= 1):
            raise ConfigurationError("policy.overload_rate", f"expected a number in (0, 1], got "
                                     f"{self.overload_rate!r}")

