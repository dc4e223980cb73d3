"""The simulator's engine: a discrete-event loop in virtual time around the real keysched core.

Theory of operation
-------------------
`EventLoop` is a SimPy-shaped heap of ``(time, priority, counter, event)`` entries: `peek()` is
the time of the next one (`math.inf` when empty), `schedule()` refuses negative delays, and the
counter makes entries at one time and priority pop in the order they were scheduled, so a run
never depends on comparing events.

`simulate` drives the very `keysched.Scheduler` that `KeyedClient` drives.  Arrivals (from
`sim.workload`) are events; each is submitted to the core.  After every event the driver polls
the core and acts on its decisions: a `Dispatch` asks the scenario's `World` what Google answers
and schedules the completion at ``t + reply.latency``; a `Finish` or a `Fail` ends the request.
Between events the clock jumps to ``min(next event, core.next_deadline())``; nothing ticks.

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
- Completions at time t are handled before arrivals at t (priority 0 before 1), and the core is
  polled once per batch of events at one time, which is what a client would see too.
- The run ends when every arrival has been submitted and every request has ended (which can be
  after the scenario's ``duration``: requests admitted late finish or reach their deadline).
- Seeds: the workload, the world and the core each get their own `random.Random`, derived from
  the one seed, so changing the policy changes neither the arrivals nor the world's dice for a
  given call sequence.
"""

from __future__ import annotations

import heapq
import math
import random
import sys
from collections.abc import Callable
from typing import NamedTuple, cast

import attrs

from keysched import Outcome, OutcomeKind, PoolConfig, PoolEvent, Scheduler
from keysched._decisions import Decision, Dispatch, Fail, Finish
from keysched._selection import Policy
from sim.scenario import Scenario
from sim.workload import Arrival, generate_arrivals

__all__ = ["AttemptRecord", "EventLoop", "RequestRecord", "RunResult", "simulate"]


class EventLoop:
    """A heap of timed events in virtual time (SimPy's core, without processes).

    Args:
        start: the initial virtual time.
    """

    __slots__ = ("_counter", "_heap", "now")

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, int, object]] = []
        self._counter = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, delay: float, event: object, priority: int = 1) -> None:
        """Schedule `event` at ``now + delay``.

        Raises:
            ValueError: `delay` is negative or NaN.
        """
        if not delay >= 0:
            raise ValueError(f"negative delay {delay!r}")
        self._counter += 1
        heapq.heappush(self._heap, (self.now + delay, priority, self._counter, event))

    def schedule_at(self, at: float, event: object, priority: int = 1) -> None:
        """Schedule `event` at absolute time `at`.

        Raises:
            ValueError: `at` is before `now` (or NaN).
        """
        if not at >= self.now:
            raise ValueError(f"time {at!r} is before now ({self.now!r})")
        self._counter += 1
        heapq.heappush(self._heap, (at, priority, self._counter, event))

    def peek(self) -> float:
        """The time of the next event, `math.inf` when there is none."""
        return self._heap[0][0] if self._heap else math.inf

    def pop(self) -> tuple[float, object]:
        """Remove the next event, advance `now` to its time, return ``(time, event)``.

        Raises:
            IndexError: no event is scheduled.
        """
        at, _, _, event = heapq.heappop(self._heap)
        self.now = at
        return at, event

    def advance(self, at: float) -> None:
        """Move the clock to `at` without an event (the core's next deadline).

        Raises:
            ValueError: `at` is before `now` or after the next event.
        """
        if not self.now <= at <= self.peek():
            raise ValueError(f"cannot advance to {at!r} (now {self.now!r}, next {self.peek()!r})")
        self.now = at


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


@attrs.frozen(kw_only=True)
class RunResult:
    """Everything one run produced; `sim.metrics.compute` turns it into numbers.

    Attributes:
        scenario: the scenario run.
        policy: the policy's name.
        seed: the seed of the run.
        end_time: virtual time when the last request ended.
        requests: every request, in submission order.
        attempts: every attempt, in dispatch order.
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
                + [attrs.astuple(e) for e in self.events])


_ARRIVAL, _COMPLETION = 1, 0  # priorities: completions at t before arrivals at t
_TIMEOUT = Outcome(kind=OutcomeKind.TIMEOUT)
_MASK = 0xFFFFFFFF


class _Open:
    """A request the driver is following: its arrival, first dispatch and attempt count."""

    __slots__ = ("arrival", "attempts", "first")

    def __init__(self, arrival: Arrival) -> None:
        self.arrival = arrival
        self.first: float | None = None
        self.attempts = 0


def _config(scenario: Scenario, policy: Policy) -> PoolConfig:
    limits = scenario.known_limits() if scenario.limits_known else ()
    return PoolConfig(keys=scenario.pool_keys(), models=scenario.models_best_first, limits=limits)


def simulate(scenario: Scenario, policy: str | Policy = "least-loaded", seed: int | None = None,
             *, record_events: bool = True,
             progress: Callable[[float], None] | None = None) -> RunResult:
    """Run `policy` through `scenario` in virtual time.

    Args:
        scenario: the scenario (see `sim.scenario.load_scenario`).
        policy: a `keysched.Policy`, or the name of one in `sim.policies.POLICIES`.
        seed: the run's seed (default: the scenario's own); one seed gives one run, event for
            event.
        record_events: keep the core's pool events (for plots).
        progress: called now and then with the fraction of arrivals submitted (0..1).

    Returns:
        The run's records.

    Raises:
        KeyError: an unknown policy name.
    """
    from sim.world import World

    if isinstance(policy, str):
        from sim.policies import get_policy

        policy = get_policy(policy)
    seed = scenario.seed if seed is None else seed
    arrivals: list[Arrival] = generate_arrivals(scenario, random.Random(seed))
    world = World(scenario, seed=(seed * 7919 + 1) & _MASK)
    core = Scheduler(_config(scenario, policy), rng=random.Random((seed * 104729 + 2) & _MASK),
                     policy=policy, wall_epoch=scenario.start_epoch, record_events=record_events)
    allowance = max(m.latency_median * math.exp(3 * m.latency_sigma) for m in scenario.models)
    loop = EventLoop(0.0)
    for index, arrival in enumerate(arrivals):
        loop.schedule_at(arrival.time, index, _ARRIVAL)

    labels: dict[str, tuple[str, str]] = {k.secret: (k.label, k.project) for k in scenario.keys}
    # Per request: [arrival index, first dispatch, attempts]; per attempt in flight: its record.
    open_requests: dict[int, _Open] = {}
    in_flight: dict[int, tuple[float, int, int, str, str, str, float]] = {}
    deadline_of: dict[int, float] = {}
    attempt_out: list[AttemptRecord] = []
    ended: list[RequestRecord] = []
    events: list[PoolEvent] = []
    attempt_outcome: dict[int, str] = {}
    world_attempt = world.attempt
    heappop = heapq.heappop
    heap = loop._heap
    total = len(arrivals) or 1
    next_report = 0

    def handle(decisions: list[Decision], now: float) -> None:
        for decision in decisions:
            if type(decision) is Dispatch:
                rid = decision.request
                state = open_requests[rid]
                arrival = state.arrival
                if state.first is None:
                    state.first = now
                state.attempts += 1
                secret = decision.key.secret
                reply = world_attempt(now, secret, decision.model, arrival.input_tokens,
                                      stream=arrival.stream)
                end = now + reply.latency
                outcome = reply.outcome
                limit = deadline_of[rid]
                if end > limit:
                    end, outcome = max(limit, now), _TIMEOUT
                label, project = labels[secret]
                in_flight[decision.attempt] = (now, rid, decision.number, label, project,
                                               decision.model, end)
                attempt_outcome[decision.attempt] = outcome.kind.value
                loop._counter += 1
                heapq.heappush(heap, (end, _COMPLETION, loop._counter,
                                      (decision.attempt, outcome)))
            elif type(decision) is Finish:
                _end(decision.request, now, True, None, decision.attempt)
            else:
                assert isinstance(decision, Fail)
                _end(decision.request, now, False, decision.reason.value, None)

    served: dict[int, str] = {}

    def _end(rid: int, now: float, ok: bool, reason: str | None, attempt: int | None) -> None:
        state = open_requests.pop(rid)
        arrival = state.arrival
        del deadline_of[rid]
        ended.append(RequestRecord(
            id=rid, arrival=arrival.time, models=arrival.models,
            input_tokens=arrival.input_tokens, first_dispatch=state.first,
            end=now, ok=ok, reason=reason, model=served.pop(rid, None) if ok else None,
            attempts=state.attempts))
        if not ok:
            served.pop(rid, None)

    while True:
        at = heap[0][0] if heap else math.inf
        wake = core.next_deadline()
        if at == math.inf and (wake == math.inf or not open_requests):
            break
        if wake < at:
            loop.now = wake
            handle(core.poll(wake), wake)
            continue
        # Every event at time `at`, then one poll.
        loop.now = at
        while heap and heap[0][0] == at:
            _, priority, _, event = heappop(heap)
            if priority == _ARRIVAL:
                index = cast(int, event)
                arrival = arrivals[index]
                rid = core.submit(at, models=arrival.models, input_tokens=arrival.input_tokens,
                                  deadline=arrival.deadline - min(allowance,
                                                                  arrival.deadline / 2))
                open_requests[rid] = _Open(arrival)
                deadline_of[rid] = at + arrival.deadline
                if progress is not None and index >= next_report:
                    progress(index / total)
                    next_report = index + max(1, total // 20)
            else:
                attempt, outcome = cast(tuple[int, Outcome], event)
                sent, rid, number, label, project, model, end = in_flight.pop(attempt)
                attempt_out.append(AttemptRecord(sent, end, rid, number, label, project, model,
                                                 attempt_outcome.pop(attempt)))
                if outcome.kind is OutcomeKind.SUCCESS or outcome.kind is OutcomeKind.BLOCKED:
                    served[rid] = model
                core.complete(attempt, outcome, at)
        handle(core.poll(at), at)
        if record_events:
            events.extend(core.take_events())
    if record_events:
        events.extend(core.take_events())
    if progress is not None:
        progress(1.0)
    # Attempts are appended at completion; the trace lists them in dispatch order.
    attempt_out.sort(key=lambda a: (a.time, a.request, a.number))
    ended.sort(key=lambda r: r.id)
    return RunResult(scenario=scenario, policy=policy.name, seed=seed, end_time=loop.now,
                     requests=tuple(ended), attempts=tuple(attempt_out), events=tuple(events),
                     counters=world.counters(), lost=len(open_requests))


def stderr_progress(label: str) -> Callable[[float], None]:
    """A `progress` callback printing ``label: NN%`` on one stderr line."""

    def report(fraction: float) -> None:
        end = "\n" if fraction >= 1.0 else ""
        print(f"\r{label}: {fraction:4.0%}", end=end, file=sys.stderr, flush=True)

    return report
