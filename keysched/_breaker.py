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
    """The recent answers and 503s of one model.

    Outcomes are counted in buckets of a tenth of the window (an answer costs one comparison
    and one addition: it happens on every request), so the window is known to within a tenth:
    an outcome leaves it between 9/10 and 10/10 of `window` after it came.
    """

    __slots__ = ("_bucket_width", "_buckets", "_overloaded", "_total", "rate", "trip", "window")

    def __init__(self, *, trip: int, rate: float, window: float) -> None:
        self.trip = trip
        self.rate = rate
        self.window = window
        self._bucket_width = window / 10
        # [start, outcomes, 503s] per bucket, oldest first; the last one is being filled.
        self._buckets: collections.deque[list[float]] = collections.deque()
        self._total = 0  # outcomes in the buckets
        self._overloaded = 0  # 503s in the buckets

    def _bucket(self, now: float) -> list[float]:
        buckets = self._buckets
        if buckets and now < buckets[-1][0] + self._bucket_width:
            return buckets[-1]
        while buckets and buckets[0][0] + self.window <= now:
            _, total, overloaded = buckets.popleft()
            self._total -= int(total)
            self._overloaded -= int(overloaded)
        bucket = [now, 0.0, 0.0]
        buckets.append(bucket)
        return bucket

    def answered(self, now: float) -> None:
        """The model answered (content or a blocked prompt)."""
        self._bucket(now)[1] += 1
        self._total += 1

    def overloaded(self, now: float) -> bool:
        """The model answered 503; returns whether the evidence now says it is overloaded."""
        bucket = self._bucket(now)
        bucket[1] += 1
        bucket[2] += 1
        self._total += 1
        self._overloaded += 1
        return self._overloaded >= self.trip and self._overloaded >= self.rate * self._total
