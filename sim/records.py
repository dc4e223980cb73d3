"""What a simulation run reports, and the observers that listen to it.

Theory of operation
-------------------
The driver (`sim.engine`) does not keep a record of every request.  It tells its *observers*
about each attempt as it is sent (the world answers at once, so the record already holds the
answer and its end time) and about each request as it ends.  An observer keeps what it needs:

- `FullRecorder` keeps every record, as the plots, the tests and the event-for-event hash
  (`scripts/sim_hashes.py`) need; ``simulate()`` runs with one and returns a `RunResult`.
- `sim.metrics.MetricsRecorder` keeps counters, one count per key and per fault, and two arrays
  of floats (for exact percentiles): what ``python -m sim`` needs, in memory that grows by
  16 bytes per request instead of a record per request and per attempt.
- `sim.tracefile.TraceWriter` writes one JSON line per attempt (``--trace FILE``).

Decisions where the issues were silent:

- An observer sees attempts in dispatch order and requests in the order they end.  The
  `RunResult` orders them as the trace always did (attempts by time, request, number; requests
  by id), so `RunResult.trace()` is unchanged.
- The observer receives the world's `Reply` with each attempt record (the trace file wants the
  status, retry delay and token counts); an attempt the driver cut at its request's deadline has
  the ``timeout`` outcome in its record and the world's reply beside it.
"""

from __future__ import annotations

from operator import attrgetter
from typing import NamedTuple, Protocol

import attrs

from keysched import PoolEvent
from sim.scenario import Scenario
from sim.world import Reply

__all__ = ["AttemptRecord", "FullRecorder", "Observer", "RequestRecord", "RunResult",
           "RunSummary"]


class AttemptRecord(NamedTuple):
    """One attempt: sent at `time`, answered at `end` with `outcome` (an `OutcomeKind` value)."""

    time: float
    end: float
    request: int
    number: int
    key: str
    project: str
    model: str
    outcome: str


class RequestRecord(NamedTuple):
    """One request from arrival to end.

    Attributes:
        id: the core's request id.
        arrival: when it arrived (virtual seconds).
        models: the models it allowed, best first.
        input_tokens: its size.
        first_dispatch: when its first attempt was sent (``None``: never sent).
        end: when it ended.
        ok: whether it got an answer.
        reason: the `FailReason` value when it failed, ``None`` when it succeeded.
        model: the model that answered (``None`` when it failed).
        attempts: how many attempts it made.
    """

    id: int
    arrival: float
    models: tuple[str, ...]
    input_tokens: int
    first_dispatch: float | None
    end: float
    ok: bool
    reason: str | None
    model: str | None
    attempts: int


class Observer(Protocol):
    """Told about a run as it goes (see the module docstring)."""

    def attempt(self, record: AttemptRecord, reply: Reply) -> None:
        """An attempt was sent; `record` holds its answer, `reply` the world's full reply."""

    def request_ended(self, record: RequestRecord) -> None:
        """A request ended (answered or failed)."""


@attrs.frozen(kw_only=True)
class RunSummary:
    """What every run returns, whoever observed it.

    Attributes:
        scenario: the scenario run.
        policy: the policy's name.
        seed: the seed of the run.
        end_time: virtual time when the last request ended.
        events: the core's pool events (cooldowns, disabled keys, fallbacks), in order (empty
            when the run did not record them).
        counters: the world's counters (`World.counters`) at the end.
        lost: requests submitted that never ended (always 0 unless the core has a bug).
        submitted: requests submitted.
    """

    scenario: Scenario
    policy: str
    seed: int
    end_time: float
    events: tuple[PoolEvent, ...]
    counters: dict[str, dict[str, dict[str, int]]]
    lost: int = 0
    submitted: int = 0


@attrs.frozen(kw_only=True)
class RunResult:
    """Everything one run produced, every record kept; `sim.metrics.compute` turns it into numbers.

    Attributes:
        scenario: the scenario run.
        policy: the policy's name.
        seed: the seed of the run.
        end_time: virtual time when the last request ended.
        requests: every request, by id.
        attempts: every attempt, by time, request and number.
        events: the core's pool events (cooldowns, disabled keys, fallbacks), in order.
        counters: the world's counters (`World.counters`) at the end.
        lost: requests submitted that never ended (always 0 unless the core has a bug).
    """

    scenario: Scenario
    policy: str
    seed: int
    end_time: float
    requests: tuple[RequestRecord, ...]
    attempts: tuple[AttemptRecord, ...]
    events: tuple[PoolEvent, ...]
    counters: dict[str, dict[str, dict[str, int]]]
    lost: int = 0

    def trace(self) -> list[tuple[object, ...]]:
        """The run as comparable tuples (attempts, then request ends, then events)."""
        return ([tuple(a) for a in self.attempts] + [tuple(r) for r in self.requests]
                + [tuple(e) for e in self.events])


_DISPATCH_ORDER = attrgetter("time", "request", "number")


class FullRecorder:
    """Keeps every attempt and request record; `result` makes them a `RunResult`."""

    def __init__(self) -> None:
        self.attempts: list[AttemptRecord] = []
        self.requests: list[RequestRecord] = []

    def attempt(self, record: AttemptRecord, reply: Reply) -> None:
        self.attempts.append(record)

    def request_ended(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def result(self, summary: RunSummary) -> RunResult:
        """The run's `RunResult`: `summary` with the records in the trace's order."""
        # Attempts sent at one time are ordered by request and number; requests by id.
        return RunResult(scenario=summary.scenario, policy=summary.policy, seed=summary.seed,
                         end_time=summary.end_time,
                         requests=tuple(sorted(self.requests, key=attrgetter("id"))),
                         attempts=tuple(sorted(self.attempts, key=_DISPATCH_ORDER)),
                         events=summary.events, counters=summary.counters, lost=summary.lost)
