"""Many processes on one pool, in virtual time: each on its own, or all sharing one store.

Theory of operation
-------------------
`simulate_processes` runs N `keysched.driver.Scheduler`s, one per simulated process (a
gunicorn worker, a Celery worker), against one `World` (one Google).  Arrivals are dealt to the
processes in turn.  Each process's core sees only its own requests, as in a real deployment.

- **Uncoordinated** (``shared=False``): each core knows only what its own attempts taught it,
  so N processes collect up to N times the 429s, and a key disabled by one is still tried by
  the others.
- **Shared** (``shared=True``): the processes share one `keysched.driver.SharedPool`, the
  rules `MemoryStore` and `RedisStore` run, driven through the very `CoreFacts` seam that
  `KeyedClient`'s `StoreLink` uses: each dispatch is admitted by the store (budgets checked
  and taken, facts other processes learned brought back) or withdrawn, and each end settles
  its units and publishes what its core learned.  The store answers instantly here: a Redis
  round trip is a fraction of a millisecond, far below the scenarios' latencies.

The loop is the engine's (`sim.engine`): a heap of completions, arrivals in order, and the
clock jumping to the next event or the earliest ``next_deadline()`` of any core.  It lives in
its own module so that the engine stays the single-process reference the sim hashes pin down.

Decisions where the issue was silent:

- Leases are taken and released (their in-flight counts are exact) but never expire here: no
  simulated process crashes.
- Each process gets its own seeds (derived from the run's), so runs with one seed are
  identical event for event.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections.abc import Sequence
from typing import Any

import attrs

from keysched import Outcome, OutcomeKind, PoolConfig
from keysched.driver import (
    Claim,
    CoreFacts,
    Dispatch,
    Fail,
    Finish,
    Scheduler,
    Settlement,
    SharedPool,
    next_pacific_midnight,
)
from sim.scenario import Scenario
from sim.workload import generate_arrivals

__all__ = ["ProcessesResult", "add_command", "simulate_processes"]

_MASK = 0xFFFFFFFF
_TIMEOUT = Outcome(kind=OutcomeKind.TIMEOUT)
_429S = CoreFacts.REFUNDED  # every 429; their units go back to the budget, as the client does
_LEASE = 1e9  # see "Decisions"


@attrs.frozen(kw_only=True)
class ProcessesResult:
    """How N processes fared on one pool.

    Attributes:
        processes: how many processes.
        shared: whether they shared one store.
        requests: requests submitted (all processes).
        answered: requests answered.
        failed: requests that ended without an answer.
        attempts: attempts sent to the world.
        rate_limited: attempts the world refused with a 429.
        withdrawn: attempts the shared store refused before they were sent (one store call
            each).
        held_back: attempts withdrawn without a store call: a refusal or a fact the same
            process took after deciding them had already shown their lane full.
        lost: requests that never ended (0 unless something is broken).
    """

    processes: int
    shared: bool
    requests: int
    answered: int
    failed: int
    attempts: int
    rate_limited: int
    withdrawn: int
    held_back: int
    lost: int

    @property
    def per_answer(self) -> float:
        """429s per answer."""
        return self.rate_limited / self.answered if self.answered else math.inf


class _Process:
    """One simulated process: its core, and (when shared) its seam to the store."""

    def __init__(self, index: int, config: PoolConfig, seed: int, epoch: float,
                 shared: bool) -> None:
        self.core = Scheduler(config, rng=random.Random((seed * 104729 + 2 + index) & _MASK),
                              wall_epoch=epoch, record_events=shared)
        self.facts = CoreFacts(self.core, epoch) if shared else None
        self.owner = f"process-{index}"
        self.claims = 0


def simulate_processes(scenario: Scenario, processes: int = 4, *, shared: bool,
                       seed: int | None = None) -> ProcessesResult:
    """Run `processes` uncoordinated or sharing cores through `scenario` in virtual time.

    Raises:
        ValueError: fewer than one process.
    """
    from sim.world import World

    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
    seed = scenario.seed if seed is None else seed
    arrivals = generate_arrivals(scenario, random.Random(seed))
    world = World(scenario, seed=(seed * 7919 + 1) & _MASK)
    config = PoolConfig(keys=scenario.pool_keys(), models=scenario.models_best_first,
                        limits=scenario.known_limits() if scenario.limits_known else ())
    epoch = scenario.start_epoch
    procs = [_Process(i, config, seed, epoch, shared) for i in range(processes)]
    store = SharedPool()
    allowance = max(m.latency_median * math.exp(3 * m.latency_sigma) for m in scenario.models)
    # (end, order, process, attempt, outcome, claim, tokens)
    completions: list[tuple[float, int, int, int, Outcome, Claim | None]] = []
    # -> (deadline, tokens, start_by: the core's, its place in the store's line)
    open_requests: dict[tuple[int, int], tuple[float, int, float]] = {}
    counts = {"answered": 0, "failed": 0, "attempts": 0, "rate_limited": 0, "withdrawn": 0,
              "held_back": 0}
    order = 0
    index = 0
    now = 0.0
    while True:
        next_arrival = arrivals[index].time if index < len(arrivals) else math.inf
        at = min(completions[0][0] if completions else math.inf, next_arrival)
        wake = min(p.core.next_deadline() for p in procs)
        if at == math.inf and (wake == math.inf or not open_requests):
            break
        now = min(at, wake)
        while completions and completions[0][0] == now:
            _, _, which, attempt, outcome, claim = heapq.heappop(completions)
            proc = procs[which]
            proc.core.complete(attempt, outcome, now)
            if outcome.kind in _429S:
                counts["rate_limited"] += 1
            if claim is not None:
                store.settle([Settlement(claim, refund=outcome.kind in _429S)], ())
        while index < len(arrivals) and arrivals[index].time == now:
            arrival = arrivals[index]
            which = index % processes
            core_deadline = arrival.deadline - min(allowance, arrival.deadline / 2)
            rid = procs[which].core.submit(
                now, models=arrival.models, input_tokens=arrival.input_tokens,
                deadline=core_deadline)
            open_requests[which, rid] = (now + arrival.deadline, arrival.input_tokens,
                                         now + core_deadline)
            index += 1
        for which, proc in enumerate(procs):
            order = _poll(proc, which, now, world, store, completions, open_requests, counts,
                          order)
    return ProcessesResult(processes=processes, shared=shared, requests=len(arrivals),
                           lost=len(open_requests), **counts)


def _poll(proc: _Process, which: int, now: float, world: Any, store: SharedPool,
          completions: list[tuple[float, int, int, int, Outcome, Claim | None]],
          open_requests: dict[tuple[int, int], tuple[float, int, float]], counts: dict[str, int],
          order: int) -> int:
    """Poll one process's core until it decides nothing more at `now`; returns `order`."""
    core, facts = proc.core, proc.facts
    decisions = core.poll(now)
    rounds = 0
    while decisions:
        rounds += 1
        if rounds > 10_000:  # each round withdraws what the core has just learned is held back
            raise RuntimeError(f"process {which} keeps deciding attempts the store refuses")
        for decision in decisions:
            if isinstance(decision, Dispatch):
                limit, tokens, start_by = open_requests[which, decision.request]
                claim = None
                if facts is not None:
                    if facts.held_back(decision, now):
                        counts["held_back"] += 1
                        continue
                    proc.claims += 1
                    claim = facts.claim(proc.owner, str(proc.claims), decision, tokens, True,
                                        now=now, day_end=next_pacific_midnight(now + facts.wall_epoch),
                                        lease_ttl=_LEASE, key_cap=0, start_by=start_by)
                    grant = store.admit(claim, facts.version, now + facts.wall_epoch)
                    if not facts.answer(grant, claim, decision.attempt, now):
                        counts["withdrawn"] += 1
                        continue
                reply = world.attempt(now, decision.key.secret, decision.model, tokens)
                end, outcome = now + reply.latency, reply.outcome
                if end > limit:
                    end, outcome = max(limit, now), _TIMEOUT
                counts["attempts"] += 1
                order += 1
                heapq.heappush(completions, (end, order, which, decision.attempt, outcome,
                                             claim))
            elif isinstance(decision, Finish):
                del open_requests[which, decision.request]
                counts["answered"] += 1
            else:
                assert isinstance(decision, Fail)
                del open_requests[which, decision.request]
                counts["failed"] += 1
        if facts is not None:
            published = facts.facts_from_events(core.take_events())
            if published:
                store.settle((), published)
        decisions = core.poll(now)
    if facts is not None:  # events of completions, with no decision after them
        published = facts.facts_from_events(core.take_events())
        if published:
            store.settle((), published)
    return order


def _table(results: Sequence[ProcessesResult]) -> str:
    lines = [f"{'processes':<24} {'answers':>8} {'failed':>7} {'attempts':>9} {'429s':>6} "
             f"{'429s/answer':>12} {'withdrawn':>10}"]
    for r in results:
        what = f"{r.processes} {'sharing one store' if r.shared else 'on their own'}"
        if r.processes == 1:
            what = "1 alone"
        lines.append(f"{what:<24} {r.answered:>8} {r.failed:>7} {r.attempts:>9} "
                     f"{r.rate_limited:>6} {r.per_answer:>12.3f} {r.withdrawn:>10}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from sim.scenario import load_scenario

    for name in args.scenarios:
        scenario = load_scenario(name)
        results = [simulate_processes(scenario, 1, shared=False, seed=args.seed),
                   simulate_processes(scenario, args.processes, shared=False, seed=args.seed),
                   simulate_processes(scenario, args.processes, shared=True, seed=args.seed)]
        print(f"{scenario.name}: {scenario.description}")
        print(_table(results))
        print()
    return 0


def add_command(subparsers: Any) -> None:
    """Register ``python -m sim processes``."""
    parser = subparsers.add_parser(
        "processes", help="N processes on one pool: each on its own vs sharing one store",
        description="Deal a scenario's requests to N processes (cores) and compare them "
                    "uncoordinated, sharing one store (keysched's shared pool), and one "
                    "process alone.")
    parser.add_argument("scenarios", nargs="*", default=["free-tier-unknown", "saturation"],
                        help="scenario files or built-in names (default: free-tier-unknown "
                             "saturation)")
    parser.add_argument("--processes", type=int, default=4, help="how many (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed")
    parser.set_defaults(handler=_run)
