"""Budgets for the quotas of one (project, model) group: configured, learned, or not known yet.

Theory of operation
-------------------
The core never sends a request that a known limit would refuse.  Per-minute limits are kept over
a *sliding* window of dispatch times: at most R dispatches in any window also means at most R in
whichever fixed minute window the server counts, so the budget is safe whatever the server's
window alignment.  Tokens are the request's estimate at dispatch time.  The per-day count resets
at midnight America/Los_Angeles.

Decisions where the issue was silent:

- **The margin.**  A window is taken to end `margin` seconds later than the local clock says
  (`RetryPolicy.quota_margin`, 1 s by default): the server counts a request when it arrives, a
  network trip after we sent it, and its clock is not ours.  On a server with a sliding minute,
  the margin costs ``margin / (60 + margin)`` of the capacity (1.6% at 1 s).  A request sent
  within the margin of midnight Pacific counts on both days.
- **History before limits.**  A group records its dispatches even while no limit is known, so a
  limit learned from a 429 starts from what this process already sent in the window instead of
  from zero (on a sliding window, zero would let the whole limit through at once when the group's
  cooldown ends).
- **Learned limits.**  A 429's ``quotaValue`` sets the limit of the dimension it names
  (`learn`), unless that dimension was configured: a configured limit always wins.  A later 429
  with another value replaces it (tiers change).  Spend limits are dollars, not requests, and are
  not budgeted (a spend 429 benches the billing account instead).
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple

from keysched._config import Limit
from keysched._outcomes import QuotaDimension
from keysched._pacific import next_pacific_midnight

__all__ = ["Budget", "KnownLimit"]

WINDOW = 60.0
_RPM, _TPM, _RPD = (QuotaDimension.REQUESTS_PER_MINUTE, QuotaDimension.TOKENS_PER_MINUTE,
                    QuotaDimension.REQUESTS_PER_DAY)


class KnownLimit(NamedTuple):
    """One limit a budget enforces, and where it came from.

    Attributes:
        dimension: what it counts.
        value: the limit.
        source: ``"configured"`` (a `keysched.Limit`) or ``"learned"`` (a 429's ``quotaValue``).
        learned_at: core time of the 429 it was learned from (None when configured).
        quota_id: the 429's ``quotaId`` (None when configured).
    """

    dimension: QuotaDimension
    value: int
    source: str
    learned_at: float | None = None
    quota_id: str | None = None


class Budget:
    """Sliding-minute and Pacific-day counters against the group's known limits.

    `rpm`, `tpm` and `rpd` are the limits in force (None: unknown), read on every selection;
    `_known` says where each came from.  `_set` and `forget_learned` keep the two in step.

    Args:
        limit: the configured limits, if any.
        wall_epoch: the Unix time at core time 0 (for midnight Pacific).
        margin: how many seconds later than the local clock a window is taken to end.
    """

    __slots__ = (
        "_day_end",
        "_day_from",
        "_known",
        "_minute",
        "_minute_tokens",
        "_wall_epoch",
        "day_count",
        "limited",
        "margin",
        "rpd",
        "rpm",
        "tpm",
        "window",
    )

    def __init__(self, limit: Limit | None, wall_epoch: float, margin: float = 0.0) -> None:
        self.rpm: int | None = None
        self.tpm: int | None = None
        self.rpd: int | None = None
        self.limited = False  # whether any limit is known (else it only keeps history)
        self._known: dict[QuotaDimension, KnownLimit] = {}
        if limit is not None:
            for dimension, value in ((_RPM, limit.rpm), (_TPM, limit.tpm), (_RPD, limit.rpd)):
                if value is not None:
                    self._set(KnownLimit(dimension, value, "configured"))
        self.margin = margin
        self.window = WINDOW + margin
        self._wall_epoch = wall_epoch
        self._minute: collections.deque[tuple[float, int]] = collections.deque()
        self._minute_tokens = 0
        self.day_count = 0
        self._day_end = -math.inf
        self._day_from = -math.inf  # the earliest dispatch time `day_count` counts

    # -- limits -----------------------------------------------------------------------------


    @property
    def limits(self) -> tuple[KnownLimit, ...]:
        """The known limits, requests per minute, tokens per minute, requests per day."""
        return tuple(self._known[d] for d in (_RPM, _TPM, _RPD) if d in self._known)

    def knows(self, dimension: QuotaDimension) -> bool:
        """Whether the limit of `dimension` is known (configured or learned)."""
        return dimension in self._known

    def learn(self, dimension: QuotaDimension, value: int, now: float, quota_id: str) -> bool:
        """Take `value` as the limit of `dimension`, unless it was configured.

        Returns:
            True if the budget changed (a new limit, or a new value for a learned one).
        """
        known = self._known.get(dimension)
        if dimension not in (_RPM, _TPM, _RPD) or value < 1 or (
                known is not None and (known.source == "configured" or known.value == value)):
            return False
        self._set(KnownLimit(dimension, value, "learned", now, quota_id))
        return True

    def forget_learned(self) -> None:
        """Drop every learned limit (they were shown to be too low); configured ones stay."""
        for dimension, known in list(self._known.items()):
            if known.source == "learned":
                del self._known[dimension]
                if dimension is _RPM:
                    self.rpm = None
                elif dimension is _TPM:
                    self.tpm = None
                else:
                    self.rpd = None
        self.limited = bool(self._known)

    @property
    def learned(self) -> bool:
        """Whether any limit was learned (rather than configured)."""
        return any(known.source == "learned" for known in self._known.values())

    def _set(self, limit: KnownLimit) -> None:
        self._known[limit.dimension] = limit
        self.limited = True
        if limit.dimension is _RPM:
            self.rpm = limit.value
        elif limit.dimension is _TPM:
            self.tpm = limit.value
        else:
            self.rpd = limit.value

    # -- counting ---------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        minute = self._minute
        if now >= self._day_end:
            # The day ends `margin` after midnight here; a request sent within `margin` of
            # midnight may be counted on either day by the server: count it on both (before
            # the minute's entries are dropped below, which may be long after midnight).
            boundary = self._day_end - 2 * self.margin
            self.day_count = sum(1 for sent, _ in minute if sent >= boundary)
            self._day_from = boundary
            midnight = next_pacific_midnight(now - self.margin + self._wall_epoch)
            self._day_end = midnight - self._wall_epoch + self.margin
        window = self.window
        # Compare `sent + window <= now`, the same sum `free_at` returns, so that float rounding
        # can never leave an entry in the window at the very time it was promised to leave.
        while minute and minute[0][0] + window <= now:
            self._minute_tokens -= minute.popleft()[1]

    def fits(self, tokens: int) -> bool:
        """Whether a request of `tokens` could ever pass the token limit."""
        return self.tpm is None or tokens <= self.tpm

    def _configured(self, dimension: QuotaDimension) -> int | None:
        known = self._known.get(dimension)
        return known.value if known is not None and known.source == "configured" else None

    def free_at(self, now: float, tokens: int, *, learned: bool = True) -> float:
        """The earliest time at or after `now` when a request of `tokens` may be sent.

        Returns `now` when it may be sent at once, and `math.inf` when it never fits.  With
        `learned` false, only the configured limits count.
        """
        self._expire(now)
        rpm, tpm, rpd = ((self.rpm, self.tpm, self.rpd) if learned else
                         (self._configured(_RPM), self._configured(_TPM), self._configured(_RPD)))
        if tpm is not None and tokens > tpm:
            return math.inf
        at = now
        if rpd is not None and self.day_count >= rpd:
            at = max(at, self._day_end)
        minute = self._minute
        if rpm is not None and len(minute) >= rpm:
            at = max(at, minute[len(minute) - rpm][0] + self.window)
        if tpm is not None and self._minute_tokens + tokens > tpm:
            # Walk the window until enough tokens have left it.
            excess = self._minute_tokens + tokens - tpm
            for sent_at, used in minute:
                excess -= used
                if excess <= 0:
                    at = max(at, sent_at + self.window)
                    break
        return at

    def record(self, now: float, tokens: int) -> None:
        """Count one dispatched request of `tokens` input tokens."""
        self._expire(now)
        self._minute.append((now, tokens))
        self._minute_tokens += tokens
        self.day_count += 1

    def forget(self, sent: float, tokens: int) -> None:
        """Undo `record(sent, tokens)`: the dispatch was taken back before it was sent, or the
        server refused it with a 429 (a refused request does not count against a quota)."""
        minute = self._minute
        for index in range(len(minute) - 1, -1, -1):  # it is recent: search from the end
            if minute[index] == (sent, tokens):
                del minute[index]
                self._minute_tokens -= tokens
                break
        if sent >= self._day_from and self.day_count > 0:  # still counted in today's total
            self.day_count -= 1

    def used(self, dimension: QuotaDimension, now: float) -> int:
        """What counts against `dimension` at `now`: requests or tokens in the window, or
        requests today."""
        self._expire(now)
        if dimension is _RPM:
            return len(self._minute)
        if dimension is _TPM:
            return self._minute_tokens
        return self.day_count

    def usage(self, now: float) -> tuple[int, int, int]:
        """(requests in the last minute, tokens in the last minute, requests today)."""
        self._expire(now)
        return len(self._minute), self._minute_tokens, self.day_count
