"""Every metric, on small runs checked by hand."""

from __future__ import annotations

import math

import attrs
import pytest

from sim.engine import AttemptRecord, RequestRecord, RunResult, run, simulate
from sim.metrics import MetricsRecorder, capacity, compute, jain, percentile, revocation_times
from sim.scenario import QuotaChange, load_scenario, parse_scenario

SCENARIO = parse_scenario({
    "description": "hand-checked",
    "start": "2026-05-12T10:00:30-07:00",  # half a minute in: 120 s touch 3 minute windows
    "duration": 120,
    "models": [{"name": "best", "latency_median": 1.0}, {"name": "lite", "latency_median": 1.0}],
    "quotas": {"best": {"rpm": 10, "tpm": 1000, "rpd": 25},
               "lite": {"rpm": 5, "tpm": 100_000, "rpd": 1000}},
    "projects": [{"name": "p", "keys": 2}, {"name": "q", "keys": 2}],
    "workload": [{"rate": 1.0, "input_tokens": [100, 300]}],
    "faults": [{"kind": "key_revoked", "key": "q-2", "start": 50},
               {"kind": "overloaded", "model": "best", "start": 10, "end": 20}],
})


def _a(time: float, request: int, key: str, model: str, outcome: str,
       number: int = 1) -> AttemptRecord:
    return AttemptRecord(time, time + 1, request, number, key, key[0], model, outcome)


def _r(rid: int, arrival: float, first: float | None, end: float, ok: bool,
       model: str | None = None, reason: str | None = None, attempts: int = 1) -> RequestRecord:
    return RequestRecord(rid, arrival, ("best", "lite"), 100, first, end, ok, reason, model,
                         attempts)


RUN = RunResult(
    scenario=SCENARIO, policy="hand", seed=0, end_time=200.0,
    requests=(
        _r(1, 0.0, 0.0, 2.0, True, "best"),
        _r(2, 10.0, 11.0, 15.0, True, "lite", attempts=2),
        _r(3, 12.0, 12.0, 13.0, False, reason="request_error"),
        _r(4, 55.0, 56.0, 60.0, True, "best", attempts=3),
        _r(5, 130.0, None, 160.0, False, reason="deadline", attempts=0),
    ),
    attempts=(
        _a(0.0, 1, "p-1", "best", "success"),
        _a(11.0, 2, "p-2", "best", "overloaded"),
        _a(12.0, 2, "q-1", "lite", "success", 2),
        _a(12.0, 3, "p-1", "best", "request_error"),
        _a(56.0, 4, "q-2", "best", "key_invalid"),
        _a(57.0, 4, "p-2", "best", "rate_limited_minute", 2),
        _a(58.0, 4, "q-1", "best", "success", 3),
    ),
    events=(), counters={})


def test_percentile_is_nearest_rank() -> None:
    """Nearest-rank percentiles of 1..10 and of one value."""
    values = [float(v) for v in range(10, 0, -1)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 95) == 10.0
    assert percentile(values, 10) == 1.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_jain_index_bounds() -> None:
    """Jain's index is 1 for equal loads, 1/n when one takes all, None for nothing."""
    assert jain([4, 4, 4]) == 1.0
    assert jain([9, 0, 0]) == pytest.approx(1 / 3)
    assert jain([1, 3]) == pytest.approx(16 / 20)
    assert jain([0, 0]) == 1.0
    assert jain([]) is None


def test_capacity_counts_minute_windows_days_and_tokens() -> None:
    """Capacity is, per group, the least of RPM, RPD and TPM bounds over the windows touched."""
    # 3 minute windows, 1 day.  best: min(10*3, 25, 1000//100*3=30) = 25; lite: min(15, 1000,
    # 100000//100*3) = 15.  Two projects: 2 * (25 + 15) = 80.
    assert capacity(SCENARIO) == 80


def test_revocation_times_by_key() -> None:
    """Only the revoked key has a revocation time."""
    assert revocation_times(SCENARIO) == {"q-2": 50.0}


def test_counts_and_ratios() -> None:
    """Requests, successes, failures, attempts and waste match the hand count."""
    m = compute(RUN)
    assert (m.requests, m.successes, m.attempts) == (5, 3, 7)
    assert m.failures == {"request_error": 1, "deadline": 1}
    assert m.best_model_share == pytest.approx(2 / 3)
    assert m.attempts_per_success == pytest.approx(7 / 3)
    assert m.wasted == {"overloaded": 1, "request_error": 1, "key_invalid": 1,
                        "rate_limited_minute": 1}
    assert m.wasted_total == 4
    assert m.waste_ratio == pytest.approx(4 / 3)
    assert m.rate_limited == 1
    assert m.lost == 0


def test_latency_and_queueing_percentiles() -> None:
    """End-to-end latency covers successes; queueing covers requests that made an attempt."""
    m = compute(RUN)
    # Successes: 2, 5, 5 seconds.  Queueing: 0, 1, 0, 1.
    assert (m.latency.p50, m.latency.p95, m.latency.p99) == (5.0, 5.0, 5.0)
    assert (m.queueing.p50, m.queueing.p95) == (0.0, 1.0)


def test_fairness_over_keys_of_equal_capacity() -> None:
    """Revoked keys are left out; the rest (p-1 2, p-2 2, q-1 2) are perfectly even."""
    assert compute(RUN).fairness == pytest.approx(1.0)


def test_utilisation_counts_successes_started_in_the_duration() -> None:
    """Three successful attempts started before 120 s, over a capacity of 80."""
    m = compute(RUN)
    assert m.capacity == 80
    assert m.utilisation == pytest.approx(3 / 80)


def test_recovery_time_after_a_fault_window() -> None:
    """The overload on `best` ends at 20; the next success on `best` starts at 58."""
    assert compute(RUN).recovery_time == pytest.approx(38.0)


def test_requests_after_revocation() -> None:
    """One attempt reached q-2 after it was revoked at 50."""
    m = compute(RUN)
    assert (m.after_revocation, m.after_revocation_max_per_key) == (1, 1)
    assert m.after_revocation_known == 0


def test_json_is_stable_and_marks_unrecovered_runs() -> None:
    """The JSON layout has fixed keys; a never-recovered run reports null and recovered false."""
    no_success_after = RunResult(scenario=SCENARIO, policy="hand", seed=0, end_time=200.0,
                                 requests=RUN.requests[:1], attempts=RUN.attempts[:1],
                                 events=(), counters={})
    m = compute(no_success_after)
    assert m.recovery_time == math.inf
    data = m.to_json()
    assert data["recovery_time"] is None
    assert data["recovered"] is False
    assert list(data) == list(compute(RUN).to_json())
    assert set(data["latency"]) == {"p50", "p95", "p99"}


def test_capacity_is_summed_day_by_day_across_pacific_midnight() -> None:
    """A run over midnight gets each day's own cap: 1 request before it, 20 after, not 30."""
    scenario = parse_scenario({
        "description": "over midnight", "start": "2026-03-07T23:59:00-08:00", "duration": 1800,
        "models": [{"name": "m1", "latency_median": 1.0, "latency_sigma": 0.0}],
        "quotas": {"m1": {"rpm": 1, "rpd": 20}}, "projects": [{"name": "a", "keys": 1}],
        "workload": [{"rate": 1.0, "input_tokens": [10, 10], "deadline": 60}],
    })
    assert capacity(scenario) == 1 + 20  # min(1 x 1 minute, 20) + min(1 x 30 minutes, 20)


def test_capacity_follows_quota_changes() -> None:
    """A tier change raises (or cuts) the capacity from its time on, per project it names.

    10 minutes at rpm 10: project a is upgraded to rpm 30 at 4 minutes; b keeps rpm 10.  a: 4 x
    10 + 6 x 30 = 220; b: 100.  Without the changes both would be 100 (the bug: `util` above 100%
    on `tier-change`).  An RPD of 150 from 6 minutes on holds a's day to 150 (100 admitted
    before it, 50 more after); one of 50 cannot take back the 100 admitted before it.
    """
    scenario = parse_scenario({
        "description": "tier change", "start": "2026-03-07T12:00:00-08:00", "duration": 600,
        "models": [{"name": "m1", "latency_median": 1.0, "latency_sigma": 0.0}],
        "quotas": {"m1": {"rpm": 10}}, "projects": [{"name": "a", "keys": 1},
                                                    {"name": "b", "keys": 1}],
        "workload": [{"rate": 1.0, "input_tokens": [10, 10], "deadline": 60}],
        "quota_changes": [{"at": 240, "project": "a", "model": "m1", "rpm": 30}],
    })
    assert capacity(scenario) == 4 * 10 + 6 * 30 + 100
    for rpd, a in ((150, 150), (50, 100)):
        cut_at_6 = QuotaChange(at=360, project="a", model="m1", rpd=rpd)
        cut = attrs.evolve(scenario, quota_changes=(*scenario.quota_changes, cut_at_6))
        assert capacity(cut) == a + 100
    everyone = attrs.evolve(scenario, quota_changes=(QuotaChange(at=300, model="m1", rpm=20),))
    assert capacity(everyone) == 2 * (5 * 10 + 5 * 20)
    # A change inside a minute: the world checks that minute's count against the new limit.
    within = attrs.evolve(scenario, quota_changes=(QuotaChange(at=30, model="m1", rpm=1000),))
    assert capacity(within) == 2 * 10 * 1000
    cut_within = attrs.evolve(scenario, quota_changes=(QuotaChange(at=30, model="m1", rpm=5),))
    assert capacity(cut_within) == 2 * (10 + 9 * 5)


def test_a_revocation_with_an_end_counts_only_its_window() -> None:
    """Attempts on a key after its revocation ended are not counted as sent to a revoked key."""
    scenario = parse_scenario({
        "description": "brief revocation", "start": "2026-03-07T12:00:00-08:00",
        "duration": 120,
        "models": [{"name": "m1", "latency_median": 1.0}],
        "projects": [{"name": "a", "keys": 2}],
        "workload": [{"rate": 0.5, "input_tokens": [10, 10]}],
        "faults": [{"kind": "key_revoked", "key": "a-1", "start": 20, "end": 22}],
    })
    run = RunResult(
        scenario=scenario, policy="hand", seed=0, end_time=100.0,
        requests=(_r(1, 21.0, 21.0, 22.0, False, reason="attempts_exhausted"),
                  _r(2, 30.0, 30.0, 31.0, True, model="m1")),
        attempts=(_a(21.0, 1, "a-1", "m1", "key_invalid"), _a(30.0, 2, "a-1", "m1", "success")),
        events=(), counters={}, lost=0)
    metrics = compute(run)
    assert (metrics.after_revocation, metrics.after_revocation_max_per_key) == (1, 1)


@pytest.mark.parametrize(("name", "policy"), [("revoked-keys", "round-robin"),
                                               ("overload-storm", "least-loaded"),
                                               ("saturation", "router-like")])
def test_metrics_as_the_run_goes_equal_metrics_of_the_full_record(name: str,
                                                                   policy: str) -> None:
    """`MetricsRecorder` told a run as it goes gives the very `Metrics` that `compute` gives
    from the run's full records (revocations, recoveries and queueing included)."""
    scenario = load_scenario(name)
    recorder = MetricsRecorder(scenario)
    summary = run(scenario, policy, observers=[recorder], record_events=False)
    live = recorder.metrics(summary)
    assert live == compute(simulate(scenario, policy))
    assert live.requests == summary.submitted > 0


def test_revocations_learned_from_a_refusal_that_ends_before_an_earlier_sent_one() -> None:
    """`after_revocation_known` counts attempts sent after the first refusal *came back*, even
    when an attempt sent later came back sooner."""
    attempts = (
        AttemptRecord(60.0, 70.0, 1, 1, "q-2", "q", "best", "key_invalid"),   # back at 70
        AttemptRecord(61.0, 62.0, 2, 1, "q-2", "q", "best", "key_invalid"),   # back at 62
        AttemptRecord(62.0, 63.0, 3, 1, "q-2", "q", "best", "key_invalid"),   # sent at 62: known
        AttemptRecord(64.0, 65.0, 4, 1, "q-2", "q", "best", "key_invalid"))   # known
    result = RunResult(scenario=SCENARIO, policy="hand", seed=0, end_time=100.0, requests=(),
                       attempts=attempts, events=(), counters={})
    m = compute(result)
    assert (m.after_revocation, m.after_revocation_known) == (4, 2)
