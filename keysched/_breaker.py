"""The model breaker: is a model overloaded, or did one 503 just happen?

Theory of operation
-------------------
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
import math

__all__ = ["ModelState", "OverloadEvidence", "escalated"]

_MAX_DOUBLINGS = 30  # escalation stops here (a float overflows after 1,024 doublings)


def escalated(base: float, cap: float, doublings: int) -> float:
    """`base` doubled `doublings` times, at most `cap` (the cooldown of a failure that keeps
    coming back: a model, a lane, a group's bare 429s)."""
    return min(cap, base * 2.0 ** min(max(doublings, 0), _MAX_DOUBLINGS))


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


class ModelState:
    """One model of the pool: out of rotation for good (``unavailable``), or cooling while its
    breaker is tripped.

    The breaker's rules: a 503 is evidence (`OverloadEvidence`); the model cools when the
    evidence trips, or when an attempt sent after it was cooled fails (a probe: the cooldown
    then doubles, up to the cap).  Once cooled it stays half-open until it answers: its first
    503 after the cooldown re-cools it at once.  An answer to an attempt sent after it was cooled
    ends the cooldown.  While it cools, a request nothing else can serve may probe it once per
    ``probe_interval``.

    Attributes:
        name: the model.
        cool_until: when its cooldown ends (``-inf``: not cooling).
        probe_at: while cooling, when a request may probe it next.
        reason: why it cools or is unavailable.
        unavailable: it does not exist (404): no lane of it serves again.
        usable_groups: quota groups of it that could still serve (for "hopeless").
    """

    __slots__ = ("_cooled_at", "_evidence", "_streak", "cool_until", "name", "probe_at",
                 "reason", "unavailable", "usable_groups")

    def __init__(self, name: str, groups: int, evidence: OverloadEvidence) -> None:
        self.name = name
        self.cool_until = -math.inf
        self.probe_at = -math.inf
        self.reason: str | None = None
        self.unavailable = False
        self.usable_groups = groups
        self._evidence = evidence
        self._cooled_at = -math.inf  # when its current cooldown began
        self._streak = 0  # failed probes since it last answered (0: closed)

    def answered(self, sent: float, now: float) -> None:
        """It answered an attempt sent at `sent`: the streak is over; a probe ends the cooldown."""
        self._streak = 0
        self._evidence.answered(now)
        if self.cool_until > now and sent >= self._cooled_at:
            self.cool_until = now

    def cool_elsewhere(self, until: float, now: float, probe_interval: float) -> bool:
        """Another process cooled the model until `until`.  Merged by the later end; half-open
        here as after a local trip (a probe per `probe_interval`; an answer to an attempt sent
        from now on ends it).  Returns whether the cooldown was set or extended."""
        if until <= self.cool_until:
            return False
        if self.cool_until <= now:  # a fresh cooldown, not an extension
            self._cooled_at = now
            self.probe_at = now + probe_interval
        self.cool_until = until
        return True

    def overloaded(self, sent: float, now: float, *, base: float, cap: float,
                   probe_interval: float) -> tuple[bool, bool]:
        """A 503 to an attempt sent at `sent`.  Returns ``(changed, announce)``: whether the
        cooldown was set or extended (the caller arms its wake-ups), and whether it is news (a
        fresh cooldown or a failed probe, not a straggler already in flight)."""
        tripped = self._evidence.overloaded(now) or (self._streak > 0 and sent >= self._cooled_at)
        cooling = self.cool_until > now
        if not (tripped or cooling):
            return False, False  # noise: the request retries elsewhere, nothing cools
        probe_failed = sent >= self._cooled_at
        if probe_failed:
            self._streak += 1
        delay = escalated(base, cap, self._streak - 1)
        if now + delay <= self.cool_until:
            return False, False
        news = not cooling or probe_failed
        if news:  # a straggler extends the cooldown, but starts no new one
            self._cooled_at = now
        self.cool_until = now + delay
        self.probe_at = now + probe_interval
        return True, news
