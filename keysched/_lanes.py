"""The pool's lanes: one per (key, model), with its own cooldown, breaker count and counters.

Theory of operation
-------------------
A lane can be cooled by itself, apart from its quota group and its model: by the lane breaker
(``Policy.lane_error_trip`` 500s in a row), by a server's retry delay that blames no quota group,
or by a baseline policy's fixed cooldown.  Cooldowns merge by the later end, never shortened.
Lanes also count what they did (dispatched, answered, failed) for snapshots.

Only lanes that ever cooled or erred take memory for that (dicts); the counters are flat lists
indexed ``key * n_models + model``, which a pool of 10,000 keys x 3 models keeps under the
memory target of `benchmarks/bench_core.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

__all__ = ["Lanes"]


class Lanes:
    """Every (key, model) lane of the pool (see the module docstring)."""

    __slots__ = ("_answered", "_dispatched", "_errored", "_errors", "_models", "_reasons",
                 "cool_ends")

    def __init__(self, n_keys: int, n_models: int) -> None:
        self._models = n_models
        # When each lane that ever cooled stops cooling (read per lane considered: a dict).
        self.cool_ends: dict[tuple[int, int], float] = {}
        self._reasons: dict[tuple[int, int], str] = {}
        self._errors: dict[tuple[int, int], int] = {}  # 500s in a row, for the lane breaker
        self._dispatched = [0] * (n_keys * n_models)
        self._answered = [0] * (n_keys * n_models)
        self._errored = [0] * (n_keys * n_models)

    def cool_until(self, key: int, model: int) -> float:
        """When the lane's own cooldown ends (``-inf``: it never cooled)."""
        return self.cool_ends.get((key, model), -math.inf)

    def cool(self, key: int, model: int, until: float, reason: str) -> bool:
        """Cool the lane until `until` unless it already cools longer; returns whether it did."""
        if until <= self.cool_until(key, model):
            return False
        self.cool_ends[key, model] = until
        self._reasons[key, model] = reason
        return True

    def cooling(self, now: float) -> Iterator[tuple[int, int, float, str]]:
        """(key, model, until, reason) of every lane cooling at `now`."""
        for (key, model), until in self.cool_ends.items():
            if until > now:
                yield key, model, until, self._reasons[key, model]

    def server_error(self, key: int, model: int) -> int:
        """A 500 on the lane; returns how many in a row."""
        errors = self._errors[key, model] = self._errors.get((key, model), 0) + 1
        return errors

    def answered(self, key: int, model: int) -> None:
        """An answer on the lane ends its run of 500s."""
        self._errors.pop((key, model), None)

    def dispatched(self, key: int, model: int, count: int = 1) -> None:
        """Count an attempt dispatched on the lane (-1: one taken back)."""
        self._dispatched[key * self._models + model] += count

    def ended(self, key: int, model: int, *, answer: bool) -> None:
        """Count an attempt that ended on the lane, as an answer or a failure."""
        counters = self._answered if answer else self._errored
        counters[key * self._models + model] += 1

    def counts(self, key: int, model: int) -> tuple[int, int, int]:
        """(dispatched, answered, failed) attempts on the lane."""
        lane = key * self._models + model
        return self._dispatched[lane], self._answered[lane], self._errored[lane]
