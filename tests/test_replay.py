"""Check the replay: a real client's recorded trace, fitted and replayed, gives back the truth.

`KeyedClient(record=...)` records a run against the fake Gemini server (`sim serve` on
127.0.0.1) in a scenario whose truth is known: per-minute quotas that every project hits, a
per-day quota one project hits, a key revoked at t = 60 and an overload of the best model over
[150, 210).  The client is driven as ``tests/test_cross_validation.py`` drives it
(`recording.record`): the simulator's arrivals submitted at their times, on a
`virtual_loop.VirtualTimeLoop` so that a busy machine cannot move anything in scenario time.
Then `sim.fit` rebuilds the scenario from the trace alone, and:

1. the limits the 429s revealed equal the server's quotas, value for value, and every quota
   the traffic hit is among them (the ones it never reached cannot be revealed);
2. the revoked key is found (from its first refusal), and so is the overload window;
3. replaying the recorded policy (``least-loaded``, exact arrivals) in the simulator with
   `REPLAY_SEEDS` seeds reproduces the recorded counts within these tolerances:

   - answers: each replay within 2 of the recorded count (a request on either side of its
     deadline, as in the cross-validation);
   - 429s: each replay within max(3, 40% of the recorded count).  A (project, minute) whose
     demand exceeds the quota yields about one 429; one with a dispatch within the client's
     reaction time of a window edge may yield one more or one fewer;
   - attempts per answer: the mean over the seeds within 0.15 of the recorded ratio.  What
     the replay cannot copy is the world's dice (which probe of the overloaded model meets a
     503, latencies) and the fitted window's edges (10 s bins): each shifted probe is one
     attempt more or fewer, about 0.02 per answer on this run.

Figures observed (recorded, then the replays' range over the seeds) are in the README
("Replaying your own traffic").
"""

from __future__ import annotations

import math
import statistics

import pytest
import virtual_loop
from recording import record

from keysched.trace import Trace, load
from sim.fit import FitOptions, fit, fit_scenario, revealed_limits
from sim.metrics import Metrics
from sim.replay import replay, summary
from sim.report import format_table
from sim.scenario import FaultKind, Scenario, parse_scenario
from sim.tomlwrite import dumps

PRO = "gemini-2.5-pro"
FLASH = "gemini-2.5-flash"
REPLAY_SEEDS = 5


def truth(seed: int = 11) -> Scenario:
    """Three projects; pro at 4 RPM each (beta also 10 a day), a revoked key, a 503 window.

    Demand (18 requests a minute, a fifth streamed) exceeds pro's quota but not the pool's, so
    every project meets pro's RPM, beta its RPD, and no request comes near its deadline.
    """
    return parse_scenario({
        "description": "replay check", "start": "2026-05-12T10:00:00-07:00",
        "duration": 240, "time_scale": 30, "seed": seed, "limits_known": False,
        "models": [{"name": PRO, "latency_median": 3.0, "latency_sigma": 0.3},
                   {"name": FLASH, "latency_median": 1.0, "latency_sigma": 0.3}],
        "quotas": {PRO: {"rpm": 4}, FLASH: {"rpm": 15, "tpm": 60000}},
        "projects": [{"name": "alpha", "keys": 2},
                     {"name": "beta", "keys": 2, "quotas": {PRO: {"rpd": 10}}},
                     {"name": "gamma"}],
        "workload": [{"rate": 0.3, "input_tokens": [100, 800], "deadline": 60, "stream": 0.2}],
        "faults": [{"kind": "key_revoked", "key": "alpha-2", "start": 60},
                   {"kind": "overloaded", "model": PRO, "start": 150, "end": 210,
                    "probability": 0.8}],
    }, source="<replay check>")


def _figures(m: Metrics) -> tuple[int, int, float]:
    assert m.attempts_per_success is not None
    return m.successes, m.rate_limited, m.attempts_per_success


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Trace:
    """The real client's trace of `truth()`, recorded once for the module."""
    path = tmp_path_factory.mktemp("replay") / "outcomes.jsonl"
    virtual_loop.run(lambda: record(truth(), path))
    trace = load(path)
    assert trace.dropped == 0
    return trace


def test_the_inferred_limits_are_the_servers(recorded: Trace) -> None:
    """Every limit a 429 revealed is the server's quota; every quota the traffic hit is there."""
    server = truth()
    revealed = revealed_limits(recorded)
    assert revealed, "the scenario should make the client meet its quotas"
    for (project, model), dims in revealed.items():
        spec = next(p for p in server.projects if p.name == project).quota(model)
        assert spec is not None
        for dim, values in dims.items():
            assert [value for _, value in values] == [getattr(spec, dim)], (project, model, dim)
    assert {("alpha", PRO, "rpm"), ("beta", PRO, "rpm"), ("gamma", PRO, "rpm"),
            ("beta", PRO, "rpd")} <= {(p, m, d) for (p, m), dims in revealed.items()
                                      for d in dims}
    fitted = fit_scenario(recorded)
    for fitted_project in fitted.projects:
        spec = fitted_project.quota(PRO)
        assert spec is not None
        assert spec.rpm == 4
        assert spec.rpd == (10 if fitted_project.name == "beta" else None)


def test_the_revocation_and_the_overload_are_found(recorded: Trace) -> None:
    """The revoked key from its first refusal on; pro's 503s as a window around [150, 210)."""
    fitted = fit_scenario(recorded, FitOptions(exact_arrivals=True))
    revoked = [f for f in fitted.faults if f.kind is FaultKind.KEY_REVOKED]
    assert [f.key for f in revoked] == ["alpha-2"]
    assert revoked[0].start >= 60.0
    overloads = [f for f in fitted.faults if f.kind is FaultKind.OVERLOADED]
    assert all(f.model == PRO for f in overloads)
    # No 503 before the window; its middle is covered.  (Its end is blurred: after it, the
    # breaker's probes are few, and a bin of them without a 503 is not proof of recovery.)
    assert min(f.start for f in overloads) >= 150.0 - 10.0
    assert any(f.start <= 180.0 < f.end and f.probability > 0.2 for f in overloads)


def test_replaying_the_recorded_policy_reproduces_the_counts(recorded: Trace) -> None:
    """Answers, 429s and attempts per answer of the replays match the recording (docstring)."""
    results = [replay(recorded, policies=["least-loaded"], seed=seed)
               for seed in range(REPLAY_SEEDS)]
    answers, limited, per_answer = _figures(results[0].metrics[0])
    replays = [_figures(result.metrics[1]) for result in results]
    why = f"recorded {(answers, limited, per_answer)}, replayed {replays}"
    print(why)
    assert answers == results[0].metrics[0].requests, why  # unsaturated: all answered
    assert limited > 0, why
    for ok, n429, _ in replays:
        assert abs(ok - answers) <= 2, why
        assert abs(n429 - limited) <= max(3, math.ceil(0.4 * limited)), why
    assert abs(statistics.fmean(r[2] for r in replays) - per_answer) <= 0.15, why


def test_the_fitted_scenario_and_the_replay_show_no_secret(recorded: Trace) -> None:
    """Canary: no key secret of the server's scenario reaches the TOML or the printed replay."""
    result = replay(recorded, policies=["least-loaded", "round-robin"], seed=0,
                    what_ifs=[("gamma", 1)])
    shown = dumps(fit(recorded)) + summary(recorded, result) + format_table(result.metrics)
    for key in truth().keys:
        assert key.secret not in shown
