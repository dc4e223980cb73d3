"""`sim.processes`: N simulated processes on one pool, uncoordinated or sharing one store."""

from __future__ import annotations

import pytest

from sim.cli import main
from sim.processes import simulate_processes
from sim.scenario import load_scenario


def test_sharing_one_store_brings_429s_back_to_one_process_alone() -> None:
    """Four processes on their own collect many times the 429s of one process; sharing a
    store, no more per answer than one process alone, and every request ends."""
    scenario = load_scenario("free-tier-unknown")
    alone = simulate_processes(scenario, 1, shared=False)
    apart = simulate_processes(scenario, 4, shared=False)
    shared = simulate_processes(scenario, 4, shared=True)
    assert apart.per_answer > 5 * alone.per_answer
    assert shared.per_answer <= alone.per_answer
    assert shared.answered >= alone.answered * 0.95
    for result in (alone, apart, shared):
        assert result.lost == 0
        assert result.answered + result.failed == result.requests


def test_configured_limits_shared_are_never_overspent() -> None:
    """With the limits known, processes on their own overspend them; sharing, never."""
    scenario = load_scenario("saturation")
    assert simulate_processes(scenario, 4, shared=False).rate_limited > 0
    shared = simulate_processes(scenario, 4, shared=True)
    assert shared.rate_limited == 0
    assert shared.withdrawn > 0  # the store did refuse: the processes wanted more


def test_sharing_one_store_answers_as_many_as_one_process_alone() -> None:
    """Saturated, four processes sharing a store answer as many requests as one process alone:
    room that returns goes to the request that must start soonest, whichever process asks
    first.  (Without the store's line, the process polled first won every race, its young
    requests were answered while the others' old ones expired, and when the arrivals ended
    fewer were left to use the last room: 417 answers against 441.)"""
    scenario = load_scenario("saturation")
    alone = simulate_processes(scenario, 1, shared=False)
    shared = simulate_processes(scenario, 4, shared=True)
    assert shared.answered >= alone.answered
    assert shared.rate_limited == 0


def test_same_seed_same_run() -> None:
    """One seed gives one run."""
    scenario = load_scenario("free-tier-unknown")
    assert (simulate_processes(scenario, 3, shared=True, seed=5)
            == simulate_processes(scenario, 3, shared=True, seed=5))


def test_processes_must_be_a_positive_integer() -> None:
    """Zero processes is refused with a message naming the argument."""
    with pytest.raises(ValueError, match="processes"):
        simulate_processes(load_scenario("steady"), 0, shared=True)


def test_command_prints_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m sim processes`` prints one row per arrangement."""
    assert main(["processes", "saturation", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 sharing one store" in out
    assert "2 on their own" in out
    assert "1 alone" in out
