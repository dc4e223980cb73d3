"""Evidence for the model breaker: is a model overloaded, or did one 503 just happen?

One 503 among twenty answers is noise, and the answer to noise is to retry at once on another
key; a model is taken out of rotation only when the recent evidence says it is overloaded.
`OverloadEvidence` keeps the model's answers and 503s of the last `window` seconds and trips
when at least `trip` of them are 503s *and* they make at least `rate` of the whole.  With
independent 503s at 5% and the defaults (5, half, 10 s), tripping needs five 503s among at most
ten outcomes of one window: a chance of about one in ten thousand per window even at the worst
traffic, and none at all at busy traffic, where a window holds hundreds of outcomes.  A real
storm (the `overload-storm` scenario: 70-80% of 503s) trips within its first five 503s.
"""

from __future__ import annotations

import collections

__all__ = ["OverloadEvidence"]


class OverloadEvidence:
    """The recent answers and 503s of one model."""

    __slots__ = ("_outcomes", "_overloaded", "rate", "trip", "window")

    def __init__(self, *, trip: int, rate: float, window: float) -> None:
        self.trip = trip
        self.rate = rate
        self.window = window
        self._outcomes: collections.deque[tuple[float, bool]] = collections.deque()
        self._overloaded = 0  # 503s among `_outcomes`

    def _expire(self, now: float) -> None:
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] + self.window <= now:
            if outcomes.popleft()[1]:
                self._overloaded -= 1

    def answered(self, now: float) -> None:
        """The model answered (content or a blocked prompt)."""
        self._expire(now)
        self._outcomes.append((now, False))

    def overloaded(self, now: float) -> bool:
        """The model answered 503; returns whether the evidence now says it is overloaded."""
        self._expire(now)
        self._outcomes.append((now, True))
        self._overloaded += 1
        return (self._overloaded >= self.trip
                and self._overloaded >= self.rate * len(self._outcomes))
