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
from operator import attrgetter
from typing import NamedTuple

from keysched._tuples import tuple_builder
from sim.draws import uniform_int
from sim.scenario import Scenario

__all__ = ["Arrival", "generate_arrivals"]


class Arrival(NamedTuple):
    """One request entering the system (a named tuple: one is built per simulated request).

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


_new_arrival = tuple_builder(Arrival)  # one per simulated request


def generate_arrivals(scenario: Scenario, rng: random.Random) -> list[Arrival]:
    """All arrivals of `scenario`'s workload, sorted by time; deterministic for a seeded `rng`."""
    arrivals: list[Arrival] = []
    for phase in scenario.workload:
        models, deadline, stream = phase.models, phase.deadline, phase.stream
        tokens = uniform_int(rng, *phase.input_tokens)
        # Per arrival: its size, then (only if the phase streams at all) whether it streams.
        if phase.rate > 0:
            t = phase.start + rng.expovariate(phase.rate)
            while t < phase.end:
                arrivals.append(_new_arrival((t, models, tokens(), deadline,
                                              stream > 0 and rng.random() < stream)))
                t += rng.expovariate(phase.rate)
        for burst in phase.bursts:
            times = sorted(burst.at + rng.random() * burst.spread for _ in range(burst.count))
            arrivals.extend(_new_arrival((t, models, tokens(), deadline,
                                          stream > 0 and rng.random() < stream)) for t in times)
    arrivals.sort(key=attrgetter("time"))
    return arrivals
