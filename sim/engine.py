"""The simulator's engine: a discrete-event loop in virtual time around the real keysched core.

Theory of operation
-------------------
`simulate` drives the very `keysched.Scheduler` that `KeyedClient` drives.  Arrivals (from
`sim.workload`, already sorted by time) are read in order; each is submitted to the core.
Attempts in flight sit in a heap of ``(end, sent, ...)`` entries, where ``sent`` numbers them
in dispatch order, so completions at one time come out in the order they were sent and a run
never depends on comparing events.  After every batch of events at one time the driver polls
the core and acts on its decisions: a `Dispatch` asks the scenario's `World` what Google
answers and schedules the completion at ``t + reply.latency``; a `Finish` or a `Fail` ends the
request.  Between events the clock jumps to ``min(next event, core.next_deadline())``; nothing
ticks.

This is SimPy's scheme (a heap of timed events) reduced to what the simulator needs: with one
kind of event in the heap and the arrivals already in order, a bare list and `heapq` save a
method call and a heap push per request over a general event loop.

The hot loop (a few iterations per simulated request) builds records without Python-level
constructors and takes the core's pool events once at the end.

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
- Completions at time t are handled before arrivals at t, and the core is polled once per
  batch of events at one time, which is what a client would see too.
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
from operator import itemgetter
from typing import NamedTuple

import attrs

from keysched import PoolConfig, PoolEvent
from keysched._tuples import tuple_builder
from keysched.driver import Dispatch, Fail, Finish, Outcome, OutcomeKind, Policy, Scheduler
from sim.scenario import Scenario
from sim.workload import Arrival, generate_arrivals

__all__ = ["AttemptRecord", "RequestRecord", "RunResult", "simulate"]


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
                + [tuple(e) for e in self.events])


_TIMEOUT = Outcome(kind=OutcomeKind.TIMEOUT)
_SUCCESS, _BLOCKED = OutcomeKind.SUCCESS, OutcomeKind.BLOCKED
_MASK = 0xFFFFFFFF

_attempt_record = tuple_builder(AttemptRecord)  # one per simulated attempt
_request_record = tuple_builder(RequestRecord)
_DISPATCH_ORDER = itemgetter(0, 2, 3)  # an attempt's (time, request, number)


class _Open:
    """A request the driver is following."""

    __slots__ = ("arrival", "attempts", "first", "limit", "model")

    def __init__(self, arrival: Arrival, limit: float) -> None:
        self.arrival = arrival
        self.limit = limit  # its full deadline in virtual time: no attempt outlives it
        self.first: float | None = None  # when its first attempt was sent
        self.attempts = 0
        self.model: str | None = None  # the model of its last answer


def _config(scenario: Scenario, policy: Policy) -> PoolConfig:
    from sim.policies import GIVEN_LIMITS

    told = scenario.limits_known or policy.name in GIVEN_LIMITS
    limits = scenario.known_limits() if told else ()
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
    labels: dict[str, tuple[str, str]] = {k.secret: (k.label, k.project) for k in scenario.keys}

    open_requests: dict[int, _Open] = {}
    # Attempts in flight as (end, sent, attempt, outcome, request, model): `sent` numbers them in
    # dispatch order, so completions at one time come out in the order they were sent.
    completions: list[tuple[float, int, int, Outcome, _Open, str]] = []
    sent = 0
    attempts_out: list[AttemptRecord] = []
    ended: list[RequestRecord] = []
    # Bound methods and globals as locals: this loop runs a few times per simulated request.
    submit, poll, complete = core.submit, core.poll, core.complete
    next_deadline = core.next_deadline
    world_attempt = world.attempt
    heappush, heappop = heapq.heappush, heapq.heappop
    inf = math.inf
    n_arrivals = len(arrivals)
    index = 0  # the next arrival; arrivals come sorted, so they need no heap
    next_arrival = arrivals[0].time if arrivals else inf
    total = n_arrivals or 1
    next_report = 0
    now = 0.0

    while True:
        at = completions[0][0] if completions else inf
        if next_arrival < at:
            at = next_arrival
        wake = next_deadline()
        if at == inf and (wake == inf or not open_requests):
            break
        if wake < at:
            now = wake
        else:
            # Every event at time `at` (completions before arrivals), then one poll.
            now = at
            while completions and completions[0][0] == at:
                _, _, attempt, outcome, state, model = heappop(completions)
                if outcome.kind is _SUCCESS or outcome.kind is _BLOCKED:
                    state.model = model
                complete(attempt, outcome, at)
            while next_arrival == at:
                arrival = arrivals[index]
                rid = submit(at, models=arrival.models, input_tokens=arrival.input_tokens,
                             deadline=arrival.deadline - min(allowance, arrival.deadline / 2))
                open_requests[rid] = _Open(arrival, at + arrival.deadline)
                if progress is not None and index >= next_report:
                    progress(index / total)
                    next_report = index + max(1, total // 20)
                index += 1
                next_arrival = arrivals[index].time if index < n_arrivals else inf
        for decision in poll(now):
            if type(decision) is Dispatch:
                state = open_requests[decision.request]
                if state.first is None:
                    state.first = now
                state.attempts += 1
                arrival = state.arrival
                secret = decision.key.secret
                model = decision.model
                reply = world_attempt(now, secret, model, arrival.input_tokens,
                                      stream=arrival.stream)
                end = now + reply.latency
                outcome = reply.outcome
                if end > state.limit:
                    end, outcome = max(state.limit, now), _TIMEOUT
                label, project = labels[secret]
                # `_value_`: the plain attribute behind `Enum.value`, which is a slower property.
                attempts_out.append(_attempt_record((now, end, decision.request, decision.number,
                                                     label, project, model,
                                                     outcome.kind._value_)))
                sent += 1
                heappush(completions, (end, sent, decision.attempt, outcome, state, model))
            elif type(decision) is Finish:
                rid = decision.request
                state = open_requests.pop(rid)
                arrival = state.arrival
                ended.append(_request_record((rid, arrival.time, arrival.models,
                                              arrival.input_tokens, state.first, now, True, None,
                                              state.model, state.attempts)))
            else:
                assert isinstance(decision, Fail)
                rid = decision.request
                state = open_requests.pop(rid)
                arrival = state.arrival
                ended.append(_request_record((rid, arrival.time, arrival.models,
                                              arrival.input_tokens, state.first, now, False,
                                              decision.reason.value, None, state.attempts)))
    # The core keeps every event until taken, so one take at the end loses none.
    events = core.take_events() if record_events else []
    if progress is not None:
        progress(1.0)
    # Attempts were appended as dispatched; the trace orders those sent at one time by request
    # and number, and requests by id.
    attempts_out.sort(key=_DISPATCH_ORDER)
    ended.sort()  # ids are unique, so records order by id alone
    return RunResult(scenario=scenario, policy=policy.name, seed=seed, end_time=now,
                     requests=tuple(ended), attempts=tuple(attempts_out), events=tuple(events),
                     counters=world.counters(), lost=len(open_requests))


def stderr_progress(label: str) -> Callable[[float], None]:
    """A `progress` callback printing ``label: NN%`` on one stderr line."""

    def report(fraction: float) -> None:
        end = "\n" if fraction >= 1.0 else ""
        print(f"\r{label}: {fraction:4.0%}", end=end, file=sys.stderr, flush=True)

    return report
