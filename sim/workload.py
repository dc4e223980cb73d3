"""Turn a scenario's workload phases into a list of arrivals.

Decisions where the issue was silent:

- Each phase is an independent Poisson process (exponential gaps at `rate` per second) over
  [start, end); phases may overlap, which is how a mix of request kinds is written.
- A burst adds `count` arrivals uniformly spread over [at, at + spread) with the phase's models,
  sizes and deadline; a burst outside the phase's interval is still honoured.
- Input sizes are uniform integers over the phase's range; whether an arrival streams is a
  Bernoulli draw with the phase's `stream` probability.
- Phases are generated in file order from the one `random.Random` passed in, then sorted by time
  (stable), so the same seed always yields the same list.
"""

from __future__ import annotations

import random

import attrs

from sim.scenario import Scenario, WorkloadSpec

__all__ = ["Arrival", "generate_arrivals"]


@attrs.frozen(kw_only=True)
class Arrival:
    """One request entering the system.

    Attributes:
        time: virtual seconds from the scenario start.
        models: the models the request may use, best first.
        input_tokens: its input size in tokens.
        deadline: seconds it may take in total, from `time`.
        stream: whether it asks for a streamed answer.
    """

    time: float
    models: tuple[str, ...]
    input_tokens: int
    deadline: float
    stream: bool = False


def _one(phase: WorkloadSpec, time: float, rng: random.Random) -> Arrival:
    low, high = phase.input_tokens
    return Arrival(time=time, models=phase.models, input_tokens=rng.randint(low, high),
                   deadline=phase.deadline,
                   stream=phase.stream > 0 and rng.random() < phase.stream)


def generate_arrivals(scenario: Scenario, rng: random.Random) -> list[Arrival]:
    """All arrivals of `scenario`'s workload, sorted by time; deterministic for a seeded `rng`."""
    arrivals: list[Arrival] = []
    for phase in scenario.workload:
        if phase.rate > 0:
            t = phase.start + rng.expovariate(phase.rate)
            while t < phase.end:
                arrivals.append(_one(phase, t, rng))
                t += rng.expovariate(phase.rate)
        for burst in phase.bursts:
            times = sorted(burst.at + rng.random() * burst.spread for _ in range(burst.count))
            arrivals.extend(_one(phase, t, rng) for t in times)
    arrivals.sort(key=lambda a: a.time)
    return arrivals
