"""The simulator's engine and driver."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.draws import uniform_int
from sim.engine import ANSWER, ARRIVAL, Engine, run, simulate
from sim.records import FullRecorder
from sim.scenario import Scenario, parse_scenario
from sim.workload import Arrival, stream_arrivals

TINY = {
    "description": "two keys, one model, light load",
    "start": "2026-05-12T10:00:00-07:00",
    "duration": 60,
    "seed": 3,
    "models": [{"name": "m", "latency_median": 1.0, "latency_sigma": 0.2}],
    "quotas": {"m": {"rpm": 100, "tpm": 1_000_000, "rpd": 1000}},
    "projects": [{"name": "a", "keys": 2}],
    "workload": [{"rate": 0.5, "input_tokens": [100, 200], "deadline": 30}],
}


def test_every_request_ends_once_on_a_tiny_run() -> None:
    """Each arrival becomes one request record, and every success has a successful attempt."""
    scenario = parse_scenario(TINY)
    result = simulate(scenario, "least-loaded")
    assert result.lost == 0
    assert len({r.id for r in result.requests}) == len(result.requests) > 10
    assert all(r.ok for r in result.requests)
    assert sum(a.outcome == "success" for a in result.attempts) == len(result.requests)
    assert all(r.first_dispatch is not None and r.arrival <= r.first_dispatch <= r.end
               for r in result.requests)


def test_same_seed_same_run() -> None:
    """Two runs with one seed produce the same trace, event for event; another seed differs."""
    scenario = parse_scenario({**TINY, "faults": [
        {"kind": "server_error", "probability": 0.2}, {"kind": "key_revoked", "key": "a-1",
                                                        "start": 30}]})
    for policy in ("least-loaded", "router-like"):
        first = simulate(scenario, policy, seed=7)
        again = simulate(scenario, policy, seed=7)
        assert first.trace() == again.trace()
        assert simulate(scenario, policy, seed=8).trace() != first.trace()


def test_attempt_is_bounded_by_the_request_deadline() -> None:
    """An answer slower than the deadline is reported as a timeout at the deadline."""
    slow = {**TINY, "models": [{"name": "m", "latency_median": 50.0, "latency_sigma": 0.0}],
            "workload": [{"rate": 0.0, "deadline": 20, "bursts": [{"at": 1, "count": 1}]}]}
    result = simulate(parse_scenario(slow), "least-loaded")
    (request,) = result.requests
    assert not request.ok
    assert request.reason == "deadline"
    assert request.end == pytest.approx(request.arrival + 20)
    assert result.attempts[0].outcome == "timeout"


def test_unknown_policy_name_lists_the_known_ones() -> None:
    """A typo in a policy name says which names exist."""
    with pytest.raises(KeyError, match="least-loaded"):
        simulate(parse_scenario(TINY), "least-loded")


class _Note:
    """An event that notes its name and the time it fired."""

    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name = name
        self.log = log

    def __call__(self, now: float) -> None:
        self.log.append((self.name, now))


def test_engine_fires_by_time_then_priority_then_scheduling_order() -> None:
    """Events fire in time order; at one time, lower priority first, then as scheduled."""
    engine = Engine(now=5.0)
    log: list[tuple[str, float]] = []
    engine.schedule(7.0, _Note("arrival", log), ARRIVAL)
    engine.schedule(7.0, _Note("answer-1", log), ANSWER)
    engine.schedule(6.0, _Note("early", log))
    engine.schedule(7.0, _Note("answer-2", log), ANSWER)
    assert engine.peek() == 6.0
    while engine.peek() != math.inf:
        engine.step()
    assert log == [("early", 6.0), ("answer-1", 7.0), ("answer-2", 7.0), ("arrival", 7.0)]
    assert engine.now == 7.0


def test_engine_refuses_the_past_and_changes_nothing() -> None:
    """Scheduling before the clock, or advancing backwards or past the next event, raises a
    `ValueError` and leaves the engine as it was; stepping an empty engine is an `IndexError`."""
    engine = Engine(now=10.0)
    with pytest.raises(ValueError, match="before now"):
        engine.schedule(9.5, _Note("late", []))
    assert engine.peek() == math.inf
    engine.schedule(12.0, _Note("next", []))
    with pytest.raises(ValueError, match="advance"):
        engine.advance(9.0)
    with pytest.raises(ValueError, match="advance"):
        engine.advance(12.5)
    assert (engine.now, engine.peek()) == (10.0, 12.0)
    engine.advance(11.0)
    engine.step()
    with pytest.raises(IndexError):
        engine.step()


def test_observers_see_what_the_full_record_keeps() -> None:
    """An observer given to `run` is told every attempt and every request end that `simulate`
    records; the `RunSummary` agrees with the `RunResult`."""
    scenario = parse_scenario({**TINY, "faults": [{"kind": "server_error",
                                                   "probability": 0.3}]})
    recorder = FullRecorder()
    summary = run(scenario, "least-loaded", seed=4, observers=[recorder])
    result = simulate(scenario, "least-loaded", seed=4)
    assert recorder.result(summary).trace() == result.trace()
    assert sorted(recorder.attempts) == list(result.attempts)
    assert summary.submitted == len(result.requests) > 10
    assert (summary.end_time, summary.lost, summary.counters) == (
        result.end_time, result.lost, result.counters)
    assert any(a.outcome == "server_error" for a in result.attempts)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.5, 3.0, 7.25]), st.integers(1, 3)),
                max_size=12), st.randoms(use_true_random=False))
def test_streamed_arrivals_are_the_sorted_list(bursts: list[tuple[float, int]],
                                               rng: random.Random) -> None:
    """`stream_arrivals` yields what sorting every phase's arrivals (stably, by time) gives,
    bursts at equal times included, for any seed."""
    scenario = parse_scenario({**TINY, "duration": 10, "workload": [
        {"rate": 2.0, "end": 8, "bursts": [{"at": at, "count": n} for at, n in bursts]},
        {"rate": 1.0, "start": 3, "stream": 0.5, "bursts": [{"at": 1.5, "count": 2}]}]})
    seed = rng.randrange(2**32)
    streamed, total = stream_arrivals(scenario, random.Random(seed))
    assert list(streamed) == _naive_arrivals(scenario, random.Random(seed))
    assert total == len(_naive_arrivals(scenario, random.Random(seed)))


def _naive_arrivals(scenario: Scenario, rng: random.Random) -> list[Arrival]:
    """The workload as it was generated before streaming: every arrival in a list, sorted."""
    arrivals = []
    for phase in scenario.workload:
        tokens = uniform_int(rng, *phase.input_tokens)
        if phase.rate > 0:
            t = phase.start + rng.expovariate(phase.rate)
            while t < phase.end:
                arrivals.append(Arrival(t, phase.models, tokens(), phase.deadline,
                                        phase.stream > 0 and rng.random() < phase.stream))
                t += rng.expovariate(phase.rate)
        for burst in phase.bursts:
            times = sorted(burst.at + rng.random() * burst.spread for _ in range(burst.count))
            arrivals.extend(Arrival(t, phase.models, tokens(), phase.deadline,
                                    phase.stream > 0 and rng.random() < phase.stream)
                            for t in times)
    arrivals.sort(key=lambda a: a.time)
    return arrivals
