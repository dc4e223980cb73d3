"""How long answered attempts take: the driver's estimate of what one more attempt needs.

A request whose deadline is closer than one attempt should not start one: the attempt would
spend a unit of quota and time out, and a younger request could have had that unit (under FIFO
at saturation, every slot of a window went to such a doomed head, and the window was lost).  The
driver tells the core, per request, when it is too late to start (`Scheduler.submit`'s
``start_within``): the deadline less `allowance`.

Decision where the issue was silent: the allowance is twice an exponentially weighted mean of
answered attempts' durations (a weight of 1/16 per answer), and never more than half the
deadline, so that a short deadline still gets its attempts.  Before the first answer it is zero:
nothing is known, and nothing is held back.
"""

from __future__ import annotations

__all__ = ["AttemptDurations"]


class AttemptDurations:
    """A running estimate of how long an answered attempt takes."""

    __slots__ = ("typical",)

    def __init__(self) -> None:
        self.typical = 0.0

    def add(self, seconds: float) -> None:
        """Count one answered attempt that took `seconds`."""
        if seconds >= 0:
            self.typical += (seconds - self.typical) / 16 if self.typical else seconds

    def allowance(self, deadline: float) -> float:
        """The time before `deadline` after which an attempt should not start."""
        return min(deadline / 2, 2 * self.typical)
