"""``--trace FILE``: a simulated run written as the run goes, in `keysched.trace`'s format.

Theory of operation
-------------------
`TraceWriter` is an observer of a run (`sim.records.Observer`).  It writes the header (source
``"sim"``, the scenario's start epoch as ``start``, the pool's keys by label, its models and the
limits the core was configured with), then an ``attempt`` line per attempt and a ``request``
line per request end, each as soon as it is complete, so a run of any length writes its trace
without holding it.  The format (`keysched.trace`) is the one the real client's recorder
writes, so a simulated run and a real one compare line by line, and ``sim replay`` reads both.

The format orders lines by ``t``, and an attempt line's ``t`` is its *end*; the driver tells
observers about an attempt when it is sent.  The writer therefore holds the attempts in flight
in a heap by end and writes those that have ended before each later line (and the rest at
`close`): what it holds is bounded by the attempts in flight, not by the run.

Decisions where the issues were silent:

- An attempt the driver cut at its request's deadline is written as the client saw it: outcome
  ``timeout``, no status, no retry delay, no usage, no violations.
- ``status`` is null when no response arrived (the world's status 0: a reset or a hang).
- Attempt lines ending at the same time keep the order they were sent in; a request's line
  comes after the attempt lines that end at its time.
"""

from __future__ import annotations

import heapq
import itertools
from typing import IO

from keysched import PoolConfig
from keysched.trace import (
    AttemptLine,
    PoolInfo,
    RequestLine,
    TraceHeader,
    ViolationInfo,
    dumps,
)
from sim.records import AttemptRecord, RequestRecord
from sim.scenario import Scenario
from sim.world import Reply

__all__ = ["TraceWriter", "attempt_line", "header"]


def header(scenario: Scenario, config: PoolConfig) -> TraceHeader:
    """The trace header of a run of `scenario` whose core was configured with `config` (its
    keys are the scenario's, by label and project)."""
    return TraceHeader(source="sim", start=scenario.start_epoch,
                       pool=PoolInfo.from_config(config))


def attempt_line(record: AttemptRecord, reply: Reply) -> AttemptLine:
    """One attempt's line (see the module docstring)."""
    outcome = reply.outcome
    violations: tuple[ViolationInfo, ...] = ()
    if record.outcome != outcome.kind.value:  # the driver's deadline, not the world's answer
        status, retry_delay, tokens_in, tokens_out = None, None, None, None
    else:
        status = reply.status or None
        retry_delay = outcome.retry_after
        violations = tuple(ViolationInfo.of(v) for v in outcome.violations)
        tokens_in, tokens_out = outcome.input_tokens, outcome.output_tokens
    return AttemptLine(t=record.end, request=record.request, attempt=record.number,
                       key=record.key, project=record.project, model=record.model,
                       outcome=record.outcome, status=status, retry_delay=retry_delay,
                       violations=violations, tokens_in=tokens_in, tokens_out=tokens_out,
                       latency=record.end - record.time, stream=reply.stream)


class TraceWriter:
    """An observer writing a run's trace to `out` (a text file it does not close).

    Args:
        out: where the lines go.
        scenario: the scenario of the run.
        config: the core's configuration (its models and limits go into the header).
    """

    def __init__(self, out: IO[str], scenario: Scenario, config: PoolConfig) -> None:
        self.out = out
        self.lines = 0
        self._in_flight: list[tuple[float, int, AttemptLine]] = []
        self._sent = itertools.count()  # attempts ending together keep their sending order
        self._write(dumps(header(scenario, config)))

    def attempt(self, record: AttemptRecord, reply: Reply) -> None:
        self._flush(record.time)
        line = attempt_line(record, reply)
        heapq.heappush(self._in_flight, (line.t, next(self._sent), line))

    def request_ended(self, record: RequestRecord) -> None:
        self._flush(record.end)
        self._write(dumps(RequestLine(t=record.end, request=record.id,
                                      submitted=record.arrival, ok=record.ok,
                                      reason=record.reason, attempts=record.attempts)))

    def close(self) -> None:
        """Write the attempts still held (the run is over)."""
        self._flush(float("inf"))

    def _flush(self, now: float) -> None:
        """Write every held attempt line that ended by `now`."""
        while self._in_flight and self._in_flight[0][0] <= now:
            self._write(dumps(heapq.heappop(self._in_flight)[2]))

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.lines += 1
