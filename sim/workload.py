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
- `stream_arrivals` draws the same numbers in the same order but keeps each phase's Poisson
  stream and each burst as compact arrays (17 bytes an arrival instead of a named tuple of
  objects) and yields the arrivals by merging those time-ordered runs (`heapq.merge` is stable,
  so ties come out as the sort put them): a million-request run holds its workload in 17 MB.
"""

from __future__ import annotations

import heapq
import random
from array import array
from collections.abc import Iterator
from operator import attrgetter
from typing import NamedTuple

from sim.draws import uniform_int
from sim.scenario import Scenario

__all__ = ["Arrival", "generate_arrivals", "stream_arrivals"]


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


class _Run:
    """Arrivals of one phase's Poisson stream or of one burst, in time order, as arrays."""

    def __init__(self, models: tuple[str, ...], deadline: float) -> None:
        self.models = models
        self.deadline = deadline
        self.times = array("d")
        self.tokens = array("q")
        self.streams = bytearray()

    def add(self, time: float, tokens: int, stream: bool) -> None:
        self.times.append(time)
        self.tokens.append(tokens)
        self.streams.append(stream)

    def __iter__(self) -> Iterator[Arrival]:
        models, deadline = self.models, self.deadline
        for time, tokens, stream in zip(self.times, self.tokens, self.streams, strict=True):
            yield Arrival(time, models, tokens, deadline, bool(stream))


def _runs(scenario: Scenario, rng: random.Random) -> list[_Run]:
    """Every phase's draws in file order: its Poisson stream, then each of its bursts."""
    runs = []
    for phase in scenario.workload:
        stream = phase.stream
        tokens = uniform_int(rng, *phase.input_tokens)
        # Per arrival: its size, then (only if the phase streams at all) whether it streams.
        if phase.rate > 0:
            run = _Run(phase.models, phase.deadline)
            t = phase.start + rng.expovariate(phase.rate)
            while t < phase.end:
                run.add(t, tokens(), stream > 0 and rng.random() < stream)
                t += rng.expovariate(phase.rate)
            runs.append(run)
        for burst in phase.bursts:
            run = _Run(phase.models, phase.deadline)
            for t in sorted(burst.at + rng.random() * burst.spread for _ in range(burst.count)):
                run.add(t, tokens(), stream > 0 and rng.random() < stream)
            runs.append(run)
    return runs


def stream_arrivals(scenario: Scenario, rng: random.Random) -> tuple[Iterator[Arrival], int]:
    """The arrivals of `generate_arrivals`, one at a time, and how many there are."""
    runs = _runs(scenario, rng)
    return heapq.merge(*runs, key=attrgetter("time")), sum(len(r.times) for r in runs)


def generate_arrivals(scenario: Scenario, rng: random.Random) -> list[Arrival]:
    """All arrivals of `scenario`'s workload, sorted by time; deterministic for a seeded `rng`."""
    return list(stream_arrivals(scenario, rng)[0])
