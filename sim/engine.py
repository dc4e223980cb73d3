"""The simulator's engine: timed events in virtual time, and the driver of the real keysched core.

Theory of operation
-------------------
`Engine` is SimPy's Environment reduced to what the simulator needs: a heap of
``(time, priority, sequence, event)``, an event being a function of the time it happens at.
`Engine.schedule` adds one, `Engine.peek` says when the next one is due (``math.inf`` when
none is), `Engine.step` pops it, moves the clock there and fires it (`Engine.step_all`: every
event due at that time).  The sequence number breaks ties, so events at one time and priority
fire in the order they were scheduled and a run never compares two events.  There are two
kinds of event: an attempt's answer (`_Client._answered`, priority `ANSWER`) and the workload
(`_Workload.fire`, priority `ARRIVAL`), which submits every arrival due at its time and then
schedules itself at the next arrival's time, so the heap holds the attempts in flight and one
more entry.

`simulate` drives the very `keysched.Scheduler` that `KeyedClient` drives (`_Client` below),
on the engine: it fires every event due at the next time (answers before arrivals, answers in
the order their attempts were sent), then polls the core once and acts on its decisions.  A
`Dispatch` asks the scenario's `World` what Google answers and schedules the answer at
``now + reply.latency``; a `Finish` or a `Fail` ends the request.  When the core's own next
deadline (a cooldown's end, a request's deadline) comes before the next event, the engine's
clock jumps there and the core is polled; nothing ticks.

The driver tells its observers (`sim.records`) about every attempt and every request end; it
keeps nothing per request once it has ended.  ``simulate()`` observes with a `FullRecorder`
and returns every record; `run` takes any observers and returns a `RunSummary`.

One `_Client` owns one core; the loop in `_drive` is the only place that knows there is one.
A model of several processes sharing a world would give each its own `_Client` on one engine.

Decisions where the issue was silent:

- Core time is virtual time: seconds from the scenario's start (``wall_epoch`` is the
  scenario's start epoch, so per-day budgets end at the scenario's midnight Pacific).
- The driver bounds an attempt by its request's deadline, as `KeyedClient` does: an answer that
  would arrive after the deadline is reported as a `TIMEOUT` at the deadline (the request then
  fails with ``deadline``).  The world still counted the attempt, as Google would.
- The core is given each request's deadline for *starting* attempts: the request's deadline
  less an allowance for one attempt (the slowest model's latency at three sigma, at most half
  the deadline); the attempt in flight is bounded by the full deadline.  Without it, a FIFO
  queue under saturation sends its oldest requests with a fraction of a second left, and they
  time out after spending quota (a driver of the real client needs the same margin).  Every
  policy gets the same allowance.
- Answers at time t are handled before arrivals at t, and the core is polled once per batch of
  events at one time, which is what a client would see too.
- The run ends when every arrival has been submitted and every request has ended (which can be
  after the scenario's ``duration``: requests admitted late finish or reach their deadline).
- Seeds: the workload, the world and the core each get their own `random.Random`, derived from
  the one seed, so changing the policy changes neither the arrivals nor the world's dice for a
  given call sequence.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import partial

from keysched import PoolConfig
from keysched.driver import Dispatch, Fail, Finish, Outcome, OutcomeKind, Policy, Scheduler
from sim.records import (
    AttemptRecord,
    FullRecorder,
    Observer,
    RequestRecord,
    RunResult,
    RunSummary,
)
from sim.scenario import Scenario
from sim.workload import Arrival, stream_arrivals
from sim.world import World

__all__ = ["ANSWER", "ARRIVAL", "AttemptRecord", "Engine", "Event", "RequestRecord",
           "RunResult", "RunSummary", "pool_config", "run", "simulate"]

ANSWER = 0
"""The priority of an attempt's answer: before arrivals at the same time."""
ARRIVAL = 1
"""The priority of arrivals."""


Event = Callable[[float], None]
"""Something that happens at a time: the engine calls it with that time."""


class Engine:
    """A heap of timed events, as SimPy's Environment: `schedule`, `peek`, `step`.

    Args:
        now: the clock's start (virtual seconds).
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._queue: list[tuple[float, int, int, Event]] = []
        self._sequence = itertools.count()

    def schedule(self, at: float, event: Event, priority: int = ANSWER) -> None:
        """Fire `event` at time `at`; among events at one time, lower `priority` first.

        Raises:
            ValueError: `at` is before the clock.
        """
        if at < self.now:
            raise ValueError(f"cannot schedule an event at {at!r}, before now ({self.now!r})")
        heapq.heappush(self._queue, (at, priority, next(self._sequence), event))

    def peek(self) -> float:
        """When the next event is due (``math.inf`` when none is)."""
        return self._queue[0][0] if self._queue else math.inf

    def step(self) -> None:
        """Move the clock to the next event and fire it.

        Raises:
            IndexError: no event is scheduled.
        """
        at, _, _, event = heapq.heappop(self._queue)
        self.now = at
        event(at)

    def step_all(self) -> float:
        """`step` until every event due at the next event's time has fired; returns that time.

        Events scheduled for that same time while they fire are fired too.

        Raises:
            IndexError: no event is scheduled.
        """
        at = self._queue[0][0]
        while self._queue and self._queue[0][0] == at:
            self.step()
        return at

    def advance(self, to: float) -> None:
        """Move the clock to `to` with no event (the core asked to be woken then).

        Raises:
            ValueError: `to` is before the clock or after the next event.
        """
        if not self.now <= to <= self.peek():
            raise ValueError(f"cannot advance the clock from {self.now!r} to {to!r}")
        self.now = to


_TIMEOUT = Outcome(kind=OutcomeKind.TIMEOUT)
_ANSWERED = (OutcomeKind.SUCCESS, OutcomeKind.BLOCKED)  # the model that answered is recorded
_MASK = 0xFFFFFFFF


class _Request:
    """A request the driver is following, from its arrival to its end."""

    __slots__ = ("arrival", "attempts", "first", "limit", "model")

    def __init__(self, arrival: Arrival, limit: float) -> None:
        self.arrival = arrival
        self.limit = limit  # its full deadline in virtual time: no attempt outlives it
        self.first: float | None = None  # when its first attempt was sent
        self.attempts = 0
        self.model: str | None = None  # the model of its last answer


class _Client:
    """One core and the requests it serves: submits arrivals, sends its attempts to the world,
    feeds the answers back and ends requests."""

    def __init__(self, engine: Engine, core: Scheduler, world: World, scenario: Scenario,
                 observers: Sequence[Observer]) -> None:
        self.engine = engine
        self.core = core
        self.world = world
        self.observers = tuple(observers)
        self.open: dict[int, _Request] = {}
        self.submitted = 0
        self._allowance = max(m.latency_median * math.exp(3 * m.latency_sigma)
                              for m in scenario.models)
        self._labels = {k.secret: (k.label, k.project) for k in scenario.keys}

    def submit(self, arrival: Arrival, now: float) -> None:
        """Hand `arrival` to the core (deadline less the allowance for one attempt)."""
        start_by = arrival.deadline - min(self._allowance, arrival.deadline / 2)
        rid = self.core.submit(now, models=arrival.models, input_tokens=arrival.input_tokens,
                               deadline=start_by)
        self.open[rid] = _Request(arrival, now + arrival.deadline)
        self.submitted += 1

    def poll(self, now: float) -> None:
        """Poll the core at `now` and act on each decision."""
        for decision in self.core.poll(now):
            if type(decision) is Dispatch:
                self._send(decision, now)
            elif type(decision) is Finish:
                self._end(decision.request, now, None)
            else:
                assert type(decision) is Fail
                self._end(decision.request, now, decision.reason.value)

    def _send(self, decision: Dispatch, now: float) -> None:
        request = self.open[decision.request]
        if request.first is None:
            request.first = now
        request.attempts += 1
        arrival = request.arrival
        secret, model = decision.key.secret, decision.model
        reply = self.world.attempt(now, secret, model, arrival.input_tokens,
                                   stream=arrival.stream)
        end, outcome = now + reply.latency, reply.outcome
        if end > request.limit:
            end, outcome = max(request.limit, now), _TIMEOUT
        label, project = self._labels[secret]
        record = AttemptRecord(now, end, decision.request, decision.number, label, project,
                               model, outcome.kind.value)
        for observer in self.observers:
            observer.attempt(record, reply)
        self.engine.schedule(end, partial(self._answered, decision.attempt, outcome, request,
                                          model))

    def _answered(self, attempt: int, outcome: Outcome, request: _Request, model: str,
                  now: float) -> None:
        """An event: the answer to `attempt` arrives."""
        if outcome.kind in _ANSWERED:
            request.model = model
        self.core.complete(attempt, outcome, now)

    def _end(self, rid: int, now: float, reason: str | None) -> None:
        request = self.open.pop(rid)
        arrival = request.arrival
        record = RequestRecord(rid, arrival.time, arrival.models, arrival.input_tokens,
                               request.first, now, reason is None, reason,
                               request.model if reason is None else None, request.attempts)
        for observer in self.observers:
            observer.request_ended(record)


class _Workload:
    """An event: the arrivals due now are submitted; it then schedules itself for the next."""

    def __init__(self, engine: Engine, client: _Client, arrivals: Iterator[Arrival],
                 total: int, progress: Callable[[float], None] | None) -> None:
        self.engine = engine
        self.client = client
        self.arrivals = arrivals
        self.next = next(arrivals, None)
        self.total = max(1, total)
        self.progress = progress
        self._report_at = 0  # the submitted count at which progress is next reported
        if self.next is not None:
            engine.schedule(self.next.time, self.fire, ARRIVAL)

    def fire(self, now: float) -> None:
        while self.next is not None and self.next.time == now:
            if self.progress is not None and self.client.submitted >= self._report_at:
                self.progress(self.client.submitted / self.total)
                self._report_at = self.client.submitted + max(1, self.total // 20)
            self.client.submit(self.next, now)
            self.next = next(self.arrivals, None)
        if self.next is not None:
            self.engine.schedule(self.next.time, self.fire, ARRIVAL)


def _drive(engine: Engine, client: _Client) -> None:
    """Fire events and poll the core until every arrival is in and every request has ended."""
    while True:
        at = engine.peek()
        wake = client.core.next_deadline()
        if at == math.inf and (wake == math.inf or not client.open):
            return
        if wake < at:
            engine.advance(wake)
        else:
            engine.step_all()
        client.poll(engine.now)


def pool_config(scenario: Scenario, policy: Policy) -> PoolConfig:
    """The core's configuration for a run of `policy` on `scenario`: the scenario's keys and
    models, and its quotas as limits when the scenario or the policy says they are known."""
    from sim.policies import GIVEN_LIMITS

    told = scenario.limits_known or policy.name in GIVEN_LIMITS
    limits = scenario.known_limits() if told else ()
    return PoolConfig(keys=scenario.pool_keys(), models=scenario.models_best_first, limits=limits)


def run(scenario: Scenario, policy: str | Policy = "least-loaded", seed: int | None = None,
        *, observers: Sequence[Observer] = (), record_events: bool = True,
        progress: Callable[[float], None] | None = None) -> RunSummary:
    """Run `policy` through `scenario` in virtual time, telling `observers` what happens.

    Args:
        scenario: the scenario (see `sim.scenario.load_scenario`).
        policy: a `keysched.Policy`, or the name of one in `sim.policies.POLICIES`.
        seed: the run's seed (default: the scenario's own); one seed gives one run, event for
            event.
        observers: told about every attempt and every request end (see `sim.records`).
        record_events: keep the core's pool events (for plots).
        progress: called now and then with the fraction of arrivals submitted (0..1).

    Returns:
        The run's summary (its records went to the observers).

    Raises:
        KeyError: an unknown policy name.
    """
    if isinstance(policy, str):
        from sim.policies import get_policy

        policy = get_policy(policy)
    seed = scenario.seed if seed is None else seed
    arrivals, total = stream_arrivals(scenario, random.Random(seed))
    world = World(scenario, seed=(seed * 7919 + 1) & _MASK)
    core = Scheduler(pool_config(scenario, policy), rng=random.Random((seed * 104729 + 2) & _MASK),
                     policy=policy, wall_epoch=scenario.start_epoch, record_events=record_events)
    engine = Engine()
    client = _Client(engine, core, world, scenario, observers)
    _Workload(engine, client, arrivals, total, progress)
    _drive(engine, client)
    # The core keeps every event until taken, so one take at the end loses none.
    events = core.take_events() if record_events else []
    if progress is not None:
        progress(1.0)
    return RunSummary(scenario=scenario, policy=policy.name, seed=seed, end_time=engine.now,
                      events=tuple(events), counters=world.counters(), lost=len(client.open),
                      submitted=client.submitted)


def simulate(scenario: Scenario, policy: str | Policy = "least-loaded", seed: int | None = None,
             *, record_events: bool = True, observers: Sequence[Observer] = (),
             progress: Callable[[float], None] | None = None) -> RunResult:
    """`run` keeping every record: the run's `RunResult` (for plots, tests and traces).

    Takes the arguments of `run`; `observers` are told too.
    """
    recorder = FullRecorder()
    summary = run(scenario, policy, seed, observers=(recorder, *observers),
                  record_events=record_events, progress=progress)
    return recorder.result(summary)


def stderr_progress(label: str) -> Callable[[float], None]:
    """A `progress` callback printing ``label: NN%`` on one stderr line."""

    def report(fraction: float) -> None:
        end = "\n" if fraction >= 1.0 else ""
        print(f"\r{label}: {fraction:4.0%}", end=end, file=sys.stderr, flush=True)

    return report
