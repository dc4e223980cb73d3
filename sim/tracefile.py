"""``--trace FILE``: a run's attempts as JSON lines, written as the run goes.

Theory of operation
-------------------
`TraceWriter` is an observer of a run (`sim.records.Observer`): for every attempt the driver
sends, it writes one JSON object on one line, so a run of any length writes its trace without
holding it.  The fields are the ones a recorder of real traffic can also fill in, so that one
reader serves both::

    {"t": 12.5, "request": 7, "attempt": 1, "key": "a-1", "project": "a", "model": "m",
     "outcome": "rate_limited_minute", "status": 429, "retry_delay": 47.5,
     "quota": [{"id": "GenerateRequestsPerMinute...", "dimension": "requests_per_minute",
                "value": 30}],
     "tokens_in": null, "tokens_out": null, "latency": 0.05, "stream": false}

- ``t``: when the attempt was sent (virtual seconds from the scenario's start); ``latency``:
  until its answer (or failure) was complete.
- ``request``, ``attempt``: the core's request id and the attempt's number within it (from 1).
- ``key``: the key's *label*, never its secret; ``project``, ``model``.
- ``outcome``: the `keysched.OutcomeKind` value; ``status``: the HTTP status (0: no response);
  ``retry_delay``: the server's retry delay in seconds, ``null`` if it gave none; ``quota``: the
  quotas a 429 named.
- ``tokens_in``, ``tokens_out``: the usage the answer reported (``null`` without an answer).
- ``stream``: whether the attempt asked for a stream.

Decisions where the issues were silent:

- This is a small local writer of the fields the issue lists, written before the shared trace
  format (``keysched/trace.py``) landed; when it lands, `attempt_line` becomes that module's.
- An attempt the driver cut at its request's deadline is written as the client saw it: outcome
  ``timeout``, status 0, no retry delay, no usage.
"""

from __future__ import annotations

import json
from typing import IO, Any

from sim.records import AttemptRecord, RequestRecord
from sim.world import Reply

__all__ = ["TraceWriter", "attempt_line"]


def attempt_line(record: AttemptRecord, reply: Reply) -> dict[str, Any]:
    """One attempt's trace object (see the module docstring)."""
    outcome = reply.outcome
    cut = record.outcome != outcome.kind.value  # the driver's deadline, not the world's answer
    return {
        "t": record.time,
        "request": record.request,
        "attempt": record.number,
        "key": record.key,
        "project": record.project,
        "model": record.model,
        "outcome": record.outcome,
        "status": 0 if cut else reply.status,
        "retry_delay": None if cut else outcome.retry_after,
        "quota": [] if cut else [{"id": v.quota_id, "dimension": v.dimension.value,
                                  "value": v.value} for v in outcome.violations],
        "tokens_in": None if cut else outcome.input_tokens,
        "tokens_out": None if cut else outcome.output_tokens,
        "latency": record.end - record.time,
        "stream": reply.stream,
    }


class TraceWriter:
    """An observer writing one JSON line per attempt to `out` (a text file it does not close)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lines = 0

    def attempt(self, record: AttemptRecord, reply: Reply) -> None:
        self.out.write(json.dumps(attempt_line(record, reply), separators=(",", ":")) + "\n")
        self.lines += 1

    def request_ended(self, record: RequestRecord) -> None:
        """Request ends are not traced: a reader derives them from the attempts."""
