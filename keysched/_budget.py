"""Budgets for known quotas of one (project, model) group.

The core never sends a request that a configured limit would refuse.  Per-minute limits are kept
over a *sliding* 60-second window of dispatch times: at most R dispatches in any 60 s also means
at most R in whichever fixed minute window the server counts, so the budget is safe whatever the
server's window alignment.  Tokens are the request's estimate at dispatch time.  The per-day count
resets at midnight America/Los_Angeles.
"""

from __future__ import annotations

import collections
import math

from keysched._config import Limit
from keysched._pacific import next_pacific_midnight

__all__ = ["Budget"]

WINDOW = 60.0


class Budget:
    """Sliding-minute and Pacific-day counters against one `Limit`."""

    __slots__ = ("_day_end", "_minute", "_minute_tokens", "_reset_at", "_wall_epoch", "day_count",
                 "rpd", "rpm", "tpm")

    def __init__(self, limit: Limit, wall_epoch: float) -> None:
        self.rpm = limit.rpm
        self.tpm = limit.tpm
        self.rpd = limit.rpd
        self._wall_epoch = wall_epoch
        self._minute: collections.deque[tuple[float, int]] = collections.deque()
        self._minute_tokens = 0
        self.day_count = 0
        self._day_end = -math.inf
        self._reset_at = -math.inf  # when `day_count` last started from zero

    def _expire(self, now: float) -> None:
        minute = self._minute
        # Compare `sent + WINDOW <= now`, the same sum `free_at` returns, so that float rounding
        # can never leave an entry in the window at the very time it was promised to leave.
        while minute and minute[0][0] + WINDOW <= now:
            self._minute_tokens -= minute.popleft()[1]
        if now >= self._day_end:
            self.day_count = 0
            self._reset_at = now
            self._day_end = next_pacific_midnight(now + self._wall_epoch) - self._wall_epoch

    def fits(self, tokens: int) -> bool:
        """Whether a request of `tokens` could ever pass the token limit."""
        return self.tpm is None or tokens <= self.tpm

    def free_at(self, now: float, tokens: int) -> float:
        """The earliest time at or after `now` when a request of `tokens` may be sent.

        Returns `now` when it may be sent at once, and `math.inf` when it never fits.
        """
        self._expire(now)
        if not self.fits(tokens):
            return math.inf
        at = now
        if self.rpd is not None and self.day_count >= self.rpd:
            at = max(at, self._day_end)
        minute = self._minute
        if self.rpm is not None and len(minute) >= self.rpm:
            at = max(at, minute[len(minute) - self.rpm][0] + WINDOW)
        if self.tpm is not None and self._minute_tokens + tokens > self.tpm:
            # Walk the window until enough tokens have left it.
            excess = self._minute_tokens + tokens - self.tpm
            for sent_at, used in minute:
                excess -= used
                if excess <= 0:
                    at = max(at, sent_at + WINDOW)
                    break
        return at

    def record(self, now: float, tokens: int) -> None:
        """Count one dispatched request of `tokens` input tokens."""
        self._expire(now)
        self._minute.append((now, tokens))
        self._minute_tokens += tokens
        self.day_count += 1

    def forget(self, sent: float, tokens: int) -> None:
        """Undo `record(sent, tokens)` for a dispatch that was taken back before it was sent."""
        minute = self._minute
        for index in range(len(minute) - 1, -1, -1):  # it is recent: search from the end
            if minute[index] == (sent, tokens):
                del minute[index]
                self._minute_tokens -= tokens
                break
        if sent >= self._reset_at and self.day_count > 0:  # still counted in today's total
            self.day_count -= 1

    def usage(self, now: float) -> tuple[int, int, int]:
        """(requests in the last minute, tokens in the last minute, requests today)."""
        self._expire(now)
        return len(self._minute), self._minute_tokens, self.day_count
