"""`sim.fit`, `sim.tomlwrite` and the ``fit``/``replay`` commands on small hand-built traces.

Each trace is written with `keysched.trace` records, so what the fit must find is known line
by line; the check against a real client's recording is ``tests/test_replay.py``.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keysched.trace import (
    AttemptLine,
    KeyInfo,
    LimitInfo,
    PoolInfo,
    RequestLine,
    Trace,
    TraceHeader,
    ViolationInfo,
)
from sim.cli import main
from sim.fit import FitOptions, fit, fit_scenario, revealed_limits
from sim.replay import RECORDED, add_keys, load_trace, recorded_run, replay
from sim.scenario import FaultKind, QuotaSpec, Scenario, load_scenario, parse_scenario
from sim.tomlwrite import dumps

PRO = "gemini-2.5-pro"
FLASH = "gemini-2.5-flash"
START = 1_778_605_200.0  # 2026-05-12T17:00:00Z, a whole minute
RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
RPD_ID = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"


class Builder:
    """Writes a trace one request at a time: each attempt is sent when the previous ends."""

    def __init__(self, *, limits: tuple[LimitInfo, ...] = ()) -> None:
        self.lines: list[AttemptLine | RequestLine] = []
        self.next_id = 0
        self.pool = PoolInfo(keys=(KeyInfo(label="a-1", project="alpha"),
                                   KeyInfo(label="a-2", project="alpha"),
                                   KeyInfo(label="b-1", project="beta")),
                             models=(PRO, FLASH), limits=limits)

    def request(self, at: float, *attempts: tuple[str, str, str], tokens: int = 500,
                stream: bool = False, latency: float = 1.0,
                violations: tuple[ViolationInfo, ...] = (), reason: str | None = None,
                own: dict[int, tuple[ViolationInfo, ...]] | None = None) -> None:
        """A request submitted `at`, with attempts ``(key, model, outcome)`` in order; a 429
        names `violations`, or ``own[i]`` for the i-th attempt (from 0)."""
        rid = self.next_id
        self.next_id += 1
        t = at
        ok = False
        for number, (key, model, outcome) in enumerate(attempts, start=1):
            named = (own or {}).get(number - 1, violations)
            ok = outcome == "success"
            took = latency if ok else 0.1
            t += took
            self.lines.append(AttemptLine(
                t=t, request=rid, attempt=number, key=key,
                project="beta" if key.startswith("b") else "alpha", model=model,
                outcome=outcome, status=200 if ok else 429, retry_delay=None,
                violations=named if outcome.startswith("rate_limited") else (),
                tokens_in=tokens if ok else None, tokens_out=300 if ok else None,
                latency=took, stream=stream))
        self.lines.append(RequestLine(t=t, request=rid, submitted=at, ok=ok,
                                      reason=None if ok else (reason or "attempts_exhausted"),
                                      attempts=len(attempts)))

    def trace(self) -> Trace:
        """The trace, its lines in order of time as a writer emits them."""
        lines = sorted(self.lines, key=lambda line: line.t)
        return Trace(header=TraceHeader(source="client", start=START, pool=self.pool),
                     lines=tuple(lines))


def busy_trace() -> Trace:
    """Alpha hits pro's 4 RPM every minute; beta hits pro's per-day quota of 6; a-2 is refused
    from t = 114.5 on; pro is overloaded over [120, 150) (every attempt); flash serves the rest."""
    b = Builder()
    rpm = (ViolationInfo(quota_id=RPM_ID, dimension="rpm", value=4),)
    rpd = (ViolationInfo(quota_id=RPD_ID, dimension="rpd", value=6),)
    for i in range(60):
        at = i * 3.0 + 0.5
        if 120 <= at < 150:
            b.request(at, ("a-1", PRO, "overloaded"), ("b-1", FLASH, "success"))
        elif i % 6 == 5:
            b.request(at, ("a-1", PRO, "rate_limited_minute"), ("a-1", FLASH, "success"),
                      violations=rpm)
        elif i % 6 == 4 and at > 60:
            b.request(at, ("b-1", PRO, "rate_limited_day"), ("a-1", FLASH, "success"),
                      violations=rpd)
        elif i % 7 == 3 and at > 100:
            b.request(at, ("a-2", PRO, "key_invalid"), ("a-1", PRO, "success"))
        else:
            key = "a-1" if i % 2 or at > 100 else "a-2"
            b.request(at, (key, PRO, "success"), tokens=200 + 10 * i,
                      stream=i % 4 == 0)
    return b.trace()


def quota(scenario: Scenario, project: str, model: str) -> QuotaSpec:
    """The quota of (`project`, `model`) in `scenario`; it must have one."""
    spec = next(p for p in scenario.projects if p.name == project).quota(model)
    assert spec is not None
    return spec


def test_fit_finds_the_limits_the_429s_named() -> None:
    """Alpha's RPM and beta's RPD come out as the quotas the violations named, per project."""
    scenario = fit_scenario(busy_trace())
    assert quota(scenario, "alpha", PRO).rpm == 4
    assert quota(scenario, "beta", PRO).rpd == 6
    # Alpha sent more than 6 pro requests that day: beta's per-day quota is not alpha's.
    assert quota(scenario, "alpha", PRO).rpd is None
    assert [k.label for k in scenario.keys] == ["a-1", "a-2", "b-1"]
    assert scenario.models_best_first == (PRO, FLASH)


def test_a_limit_reaches_a_quiet_project_that_never_went_past_it() -> None:
    """Beta never hit pro's RPM and sent fewer than 4 a minute: it gets alpha's 4, as a default."""
    data = fit(busy_trace())
    assert data["quotas"][PRO] == {"rpm": 4}


def test_fit_finds_the_revoked_key_and_the_overload_window() -> None:
    """a-2 is revoked from its first key_invalid; pro's 503s make one window at their rate."""
    scenario = fit_scenario(busy_trace())
    revoked = [f for f in scenario.faults if f.kind is FaultKind.KEY_REVOKED]
    assert [(f.key, f.start) for f in revoked] == [("a-2", 114.5)]
    overloads = [f for f in scenario.faults if f.kind is FaultKind.OVERLOADED]
    assert len(overloads) == 1
    assert (overloads[0].model, overloads[0].start, overloads[0].end) == (PRO, 120.0, 150.0)
    assert overloads[0].probability == 1.0


def test_fit_finds_the_arrivals_latency_and_sizes() -> None:
    """One phase of 60 requests; pro's answers take 1 s; the streamed share is the trace's."""
    data = fit(busy_trace())
    (phase,) = data["workload"]
    assert phase["rate"] == pytest.approx(60 / phase["end"], rel=1e-5)
    assert phase["stream"] == pytest.approx(0.15, abs=0.02)
    pro = next(m for m in data["models"] if m["name"] == PRO)
    assert pro["latency_median"] == pytest.approx(1.0)
    assert pro["latency_sigma"] == pytest.approx(0.0)


def test_exact_arrivals_replay_every_request_at_its_time() -> None:
    """With exact arrivals the scenario's workload yields the trace's submissions, in order."""
    import random

    from sim.workload import generate_arrivals

    trace = busy_trace()
    scenario = fit_scenario(trace, FitOptions(exact_arrivals=True))
    arrivals = generate_arrivals(scenario, random.Random(5))
    submitted = sorted(line.submitted for line in trace.requests)
    assert [round(a.time, 6) for a in arrivals] == [round(t, 6) for t in submitted]


def test_a_later_value_is_a_quota_change() -> None:
    """A quota reported at 4 then at 8 is 4 at first, then a [[quota_changes]] entry."""
    b = Builder()
    for i, value in enumerate((4, 4, 8)):
        b.request(10.0 + 20 * i, ("a-1", PRO, "rate_limited_minute"), ("a-1", FLASH, "success"),
                  violations=(ViolationInfo(quota_id=RPM_ID, dimension="rpm", value=value),))
    data = fit(b.trace())
    assert data["quotas"][PRO]["rpm"] == 4
    assert data["quota_changes"] == [{"at": pytest.approx(50.0), "project": "alpha",
                                      "model": PRO, "rpm": 8}]


def test_configured_limits_fill_what_no_429_revealed() -> None:
    """The header's configured limits become quotas, and the replay is told them."""
    b = Builder(limits=(LimitInfo(model=FLASH, rpm=30),))
    b.request(1.0, ("a-1", FLASH, "success"))
    data = fit(b.trace())
    assert data["quotas"][FLASH] == {"rpm": 30}
    assert data["limits_known"] is True


def test_the_written_toml_loads_as_the_same_scenario(tmp_path: Path) -> None:
    """`dumps` then `load_scenario` gives the scenario `parse_scenario` builds from the data."""
    for options in (FitOptions(), FitOptions(exact_arrivals=True)):
        data = fit(busy_trace(), options)
        path = tmp_path / "fitted.toml"
        path.write_text(dumps(data, comment="a comment\nover two lines"), encoding="utf-8")
        assert tomllib.loads(path.read_text(encoding="utf-8"))["quotas"] == data["quotas"]
        loaded = load_scenario(path)
        built = parse_scenario(data, source=str(path), name=data["name"])
        assert loaded == built


def test_the_recorded_run_counts_what_the_trace_holds() -> None:
    """The recorded row: every request and attempt of the trace, answers and 429s as written."""
    trace = busy_trace()
    result = replay(trace, policies=["least-loaded"], seed=1)
    recorded = result.metrics[0]
    assert recorded.policy == RECORDED
    assert recorded.requests == len(trace.requests)
    assert recorded.attempts == len(trace.attempts)
    assert recorded.successes == sum(line.ok for line in trace.requests)
    assert recorded.rate_limited == sum(a.outcome.startswith("rate_limited")
                                        for a in trace.attempts)
    run = recorded_run(trace, result.scenario)
    assert all(math.isclose(a.end - a.time, line.latency, abs_tol=1e-9)
               for a, line in zip(run.attempts, sorted(trace.attempts, key=lambda x: x.t - x.latency),
                                  strict=True))


def test_add_keys_adds_to_a_project_or_makes_one() -> None:
    """More keys in alpha; a new project inherits the default quotas the trace revealed."""
    data = fit(busy_trace())
    more = parse_scenario(add_keys(data, "alpha", 2))
    assert [k.label for k in more.keys if k.project == "alpha"] == [
        "a-1", "a-2", "alpha-extra-1", "alpha-extra-2"]
    new = parse_scenario(add_keys(data, "gamma", 1))
    assert quota(new, "gamma", PRO).rpm == 4
    with pytest.raises(ValueError, match="at least 1"):
        add_keys(data, "alpha", 0)


def test_fit_command_writes_an_editable_scenario(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m sim fit TRACE -o FILE`` writes TOML that ``python -m sim run`` accepts."""
    trace_file = tmp_path / "outcomes.jsonl"
    trace_file.write_text(busy_trace().dumps(), encoding="utf-8")
    out = tmp_path / "my.toml"
    assert main(["fit", str(trace_file), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert load_scenario(out).name == "outcomes"
    assert main(["run", str(out), "--policy", "told-limits"]) == 0
    assert "told-limits" in capsys.readouterr().out


def test_replay_command_prints_the_comparison_and_the_what_if(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m sim replay`` prints the limits, the recorded row, each policy and the what-if."""
    trace_file = tmp_path / "outcomes.jsonl"
    trace_file.write_text(busy_trace().dumps(), encoding="utf-8")
    assert main(["replay", str(trace_file), "--policies", "least-loaded", "round-robin",
                 "--add-keys", "beta=2"]) == 0
    out = capsys.readouterr().out
    assert "alpha / gemini-2.5-pro: rpm 4" in out
    assert "beta / gemini-2.5-pro: rpd 6" in out
    assert "== outcomes +2 keys in beta" in out
    assert "round-robin, outcomes +2 keys in beta: answers" in out  # the what-if lines
    rows = [line.split()[0] for line in out.splitlines() if line[:1].isalpha()]
    assert rows.count(RECORDED) == 1
    assert rows.count("round-robin") == 2


def test_bad_traces_and_arguments_fail_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file, a bad line and a bad what-if name the problem; exit code 2."""
    assert main(["fit", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "keysched-trace", "version": 1, "source": "client", '
                   '"start": 0}\n{"kind": "attempt"}\n', encoding="utf-8")
    assert main(["replay", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(Trace(header=TraceHeader(source="client", start=START), lines=()).dumps(),
                     encoding="utf-8")
    assert main(["fit", str(empty)]) == 2
    assert "no request" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", str(bad), "--add-keys", "alpha"])
    assert "PROJECT=N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", str(bad), "--bin", "0"])
    assert "seconds > 0, got '0'" in capsys.readouterr().err


def test_the_builtin_demo_trace_reveals_the_demo_scenarios_limits() -> None:
    """The committed recording of the real client on ``demo``: every limit its 429s revealed is
    the scenario's quota, and the least-loaded replay answers what the recording answered."""
    trace = load_trace("demo")
    assert trace.header.source == "client"
    demo = load_scenario("demo")
    revealed = revealed_limits(trace)
    assert len(revealed) >= 5
    for (project, model), dims in revealed.items():
        spec = quota(demo, project, model)
        for dim, values in dims.items():
            assert [value for _, value in values] == [getattr(spec, dim)]
    result = replay(trace, policies=["least-loaded"], seed=0)
    recorded, replayed = result.metrics
    assert replayed.successes == recorded.successes == recorded.requests
    assert abs(replayed.rate_limited - recorded.rate_limited) <= 3


def test_replay_json_lists_the_recorded_run_first(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``replay --json`` prints the `compare --json` layout, the recorded run first."""
    import json

    trace_file = tmp_path / "outcomes.jsonl"
    trace_file.write_text(busy_trace().dumps(), encoding="utf-8")
    assert main(["replay", str(trace_file), "--policies", "told-limits", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == 1
    assert [run["policy"] for run in data["runs"]] == [RECORDED, "told-limits"]
    assert data["runs"][1]["rate_limited"] == 0  # told the limits, it meets none of them


def test_a_new_project_is_like_the_most_common_kind() -> None:
    """``--add-keys`` with a new name copies the quotas of the projects most alike."""
    data = fit(busy_trace())
    data["projects"].append({"name": "gamma", "tier": "paid", "keys": [{"label": "c-1"}],
                             "quotas": {PRO: {"rpd": 6}}})
    more = add_keys(data, "delta", 1)
    assert more["name"].endswith("+1 keys in delta (a project like beta)")
    new = parse_scenario(more)
    assert quota(new, "delta", PRO).rpd == 6  # beta and gamma share rpd 6; alpha is alone
    assert next(p for p in new.projects if p.name == "delta").tier == "free"  # beta's


def test_a_late_first_request_moves_time_zero_by_whole_minutes() -> None:
    """Time 0 moves to the first request's minute, so the wall-clock minutes stay aligned, and
    the recorded run and the fitted arrivals share that clock."""
    b = Builder()
    b.request(500.0, ("a-1", PRO, "success"))
    b.request(530.0, ("a-1", PRO, "rate_limited_minute"), ("a-1", FLASH, "success"),
              violations=(ViolationInfo(quota_id=RPM_ID, dimension="rpm", value=1),))
    trace = b.trace()
    scenario = fit_scenario(trace, FitOptions(exact_arrivals=True))
    assert scenario.start_epoch == START + 480.0
    assert scenario.start_epoch % 60 == 0
    run = recorded_run(trace, scenario)
    assert [r.arrival for r in run.requests] == [pytest.approx(20.0), pytest.approx(50.0)]
    assert sorted(burst.at for phase in scenario.workload for burst in phase.bursts) == [
        pytest.approx(20.0), pytest.approx(50.0)]


OUTCOMES = ("success", "rate_limited_minute", "rate_limited_day", "overloaded", "server_error",
            "shared_capacity", "key_invalid", "timeout", "connection_error", "quota_zero")
attempt_specs = st.tuples(st.sampled_from(["a-1", "a-2", "b-1"]), st.sampled_from([PRO, FLASH]),
                          st.sampled_from(OUTCOMES), st.integers(1, 50))
request_specs = st.tuples(st.floats(0.0, 900.0), st.lists(attempt_specs, max_size=4),
                          st.booleans())


# Each example fits, writes and parses a scenario (about 60 ms): 150 of them, not the ci
# profile's 600, keep this test under ten seconds.
@settings(max_examples=150)
@given(requests=st.lists(request_specs, min_size=1, max_size=25), exact=st.booleans())
def test_any_trace_fits_a_valid_scenario_holding_the_revealed_limits(
        requests: list[tuple[float, list[tuple[str, str, str, int]], bool]],
        exact: bool) -> None:
    """Whatever a trace holds, the fit is a scenario that loads, its TOML loads the same, and
    each limit a 429 revealed first is the quota of its project and model (unless the project
    lacks the model)."""
    b = Builder()
    for at, attempts, stream in requests:
        own: dict[int, tuple[ViolationInfo, ...]] = {}
        for index, (_, _, outcome, value) in enumerate(attempts):
            dimension = {"rate_limited_minute": "rpm", "rate_limited_day": "rpd"}.get(outcome)
            if dimension is not None:
                quota_id = RPD_ID if dimension == "rpd" else RPM_ID
                own[index] = (ViolationInfo(quota_id=quota_id, dimension=dimension, value=value),)
        b.request(at, *[(key, model, outcome) for key, model, outcome, _ in attempts],
                  stream=stream, own=own)
    trace = b.trace()
    data = fit(trace, FitOptions(exact_arrivals=exact))
    scenario = parse_scenario(data)
    assert tomllib.loads(dumps(data)) == tomllib.loads(dumps(tomllib.loads(dumps(data))))
    for (project, model), dims in revealed_limits(trace).items():
        spec = next(p for p in scenario.projects if p.name == project).quota(model)
        assert spec is not None
        if spec.lacks_model:
            continue
        for dim, values in dims.items():
            assert getattr(spec, dim) == values[0][1]
