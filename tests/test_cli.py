"""The simulator's commands (`sim.commands`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from keysched.trace import load
from sim.commands import DEFAULT_SCENARIOS, Progress, main
from sim.policies import POLICY_NAMES
from sim.scenario import load_scenario

SCENARIO = """
description = "tiny"
start = "2026-05-12T10:00:00-07:00"
duration = 30
seed = 5
[[models]]
name = "m"
[quotas.m]
rpm = 30
[[projects]]
name = "a"
keys = 2
[[workload]]
rate = 0.5
"""


def test_list_names_scenarios_and_policies(capsys: pytest.CaptureFixture[str]) -> None:
    """`list` prints every built-in scenario with its description, and the policies."""
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "saturation" in out
    assert "router-like" in out


def test_run_json_from_a_file_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run PATH --json` prints the stable JSON layout for one run."""
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    assert main(["run", str(path), "--seed", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == 1
    (run,) = data["runs"]
    assert (run["scenario"], run["policy"], run["seed"]) == ("tiny", "least-loaded", 3)
    assert run["successes"] == run["requests"] > 0
    assert set(run["latency"]) == {"p50", "p95", "p99"}


def test_compare_prints_a_table_and_writes_plots(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`compare --policies ... --plot DIR` prints one row per policy and writes PNG files."""
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    plots = tmp_path / "plots"
    assert main(["compare", str(path), "--policies", "least-loaded", "strike-three",
                 "--plot", str(plots)]) == 0
    captured = capsys.readouterr()
    assert "least-loaded" in captured.out
    assert "strike-three" in captured.out
    assert "running tiny / least-loaded" in captured.err
    assert len(list(plots.glob("*.png"))) == 7


def test_unknown_scenario_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A scenario that is neither a file nor a built-in name exits 2 with a message."""
    assert main(["run", "no-such-scenario"]) == 2
    assert "no-such-scenario" in capsys.readouterr().err


def test_the_first_command_without_figures_never_imports_matplotlib() -> None:
    """`python -m sim --plot none` prints the whole comparison and its legend, shows progress on
    stderr, and never loads matplotlib."""
    code = ("import sys; from sim.cli import main; code = main(['--plot', 'none']); "
            "print('matplotlib' in sys.modules); raise SystemExit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    out = done.stdout.splitlines()
    assert out[-1] == "False"
    for name in DEFAULT_SCENARIOS:
        assert f"== {name}" in out
    assert any(line.startswith("columns: reqs requests; ok answered") for line in out)
    runs = f"{len(DEFAULT_SCENARIOS) * len(POLICY_NAMES)} runs"
    assert f"simulating {runs} ({len(DEFAULT_SCENARIOS)} scenarios x {len(POLICY_NAMES)} " \
           "policies) ..." in done.stderr
    assert "simulated requests in" in done.stderr


def test_the_first_command_draws_a_few_figures_and_says_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """By default: an overview and the summary figures of the default policy, their folder and
    names on stderr, and how to get every figure."""
    pytest.importorskip("matplotlib")
    import sim.commands

    monkeypatch.setattr(sim.commands, "DEFAULT_SCENARIOS",
                        ("saturation", "overload-storm", "revoked-keys"))
    assert main(["--plot-dir", str(tmp_path / "figs")]) == 0
    names = {"comparison.png", "revoked-keys-least-loaded-cooldowns.png",
             "overload-storm-least-loaded-models.png", "saturation-least-loaded-utilization.png"}
    assert {p.name for p in (tmp_path / "figs").iterdir()} == names
    err = capsys.readouterr().err
    assert f"figures in {(tmp_path / 'figs').resolve()}/:" in err
    assert all(f"  {name}" in err for name in names)
    assert "--plot all" in err


def test_progress_counts_only_when_a_stage_is_slow(capsys: pytest.CaptureFixture[str]) -> None:
    """A stage says what it does and how long it took; counts appear once it has run a while."""
    quick = Progress("quick work", 3, every=math.inf)
    for name in "abc":
        quick.step(name)
    quick.finish("did 3")
    slow = Progress("slow work", 3, every=0.0)
    for name in "abc":
        slow.step(name)
    slow.finish("did 3")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "quick work ..."
    assert lines[1].startswith("  did 3 in ")
    assert lines[2:5] == ["slow work ...", "  1/3 done (last: a)", "  2/3 done (last: b)"]
    assert lines[5].startswith("  did 3 in ")


def test_list_into_a_closed_pipe_ends_quietly() -> None:
    """`python -m sim list | head -1`: no BrokenPipeError traceback once the reader has gone."""
    with subprocess.Popen([sys.executable, "-m", "sim", "list"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline()  # what `head -1` reads, then it goes away
        proc.stdout.close()
        errors = proc.stderr.read()
        code = proc.wait(timeout=60)
    assert errors == b""
    assert code in (0, 141)  # 141 = 128 + SIGPIPE, as `yes | head` reports it


def test_run_trace_is_a_keysched_trace_of_the_run(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`run --trace FILE` writes the run in `keysched.trace`'s format, read back by its reader:
    a header of source "sim", one attempt line per attempt and one request line per request,
    in order of ``t``; keys appear by label, never by secret."""
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO + '[[faults]]\nkind = "shared_429"\nprobability = 0.3\n')
    trace_path = tmp_path / "run.jsonl"
    assert main(["run", str(path), "--seed", "3", "--json", "--trace", str(trace_path)]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    scenario = load_scenario(str(path))
    trace = load(trace_path)
    assert (trace.header.source, trace.header.start) == ("sim", scenario.start_epoch)
    assert trace.header.pool is not None
    assert [k.label for k in trace.header.pool.keys] == [k.label for k in scenario.keys]
    assert len(trace.attempts) == run["attempts"] > run["requests"] == len(trace.requests)
    assert sum(r.ok for r in trace.requests) == run["successes"]
    times = [line.t for line in trace.lines]
    assert times == sorted(times)
    assert {a.outcome for a in trace.attempts} == {"success", "shared_capacity"}
    ok = next(a for a in trace.attempts if a.outcome == "success")
    assert (ok.status, ok.model, ok.project) == (200, "m", "a")
    assert ok.tokens_in is not None
    assert ok.latency > 0
    assert next(a.status for a in trace.attempts if a.outcome == "shared_capacity") == 429
    by_request = Counter(a.request for a in trace.attempts)
    assert all(by_request[r.request] == r.attempts for r in trace.requests)
    assert {a.key for a in trace.attempts} <= {key.label for key in scenario.keys}
    text = trace_path.read_text()
    assert not any(key.secret in text for key in scenario.keys)


def test_compare_trace_writes_one_file_per_run(tmp_path: Path) -> None:
    """With several runs, `--trace FILE` writes one file per run, named after FILE."""
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    assert main(["compare", str(path), "--policies", "least-loaded", "random", "--json",
                 "--trace", str(tmp_path / "t.jsonl")]) == 0
    written = sorted(p.name for p in tmp_path.glob("t-*.jsonl"))
    assert written == ["t-tiny-least-loaded.jsonl", "t-tiny-random.jsonl"]
    assert all(len(load(tmp_path / name).attempts) > 5 for name in written)


def test_the_comparison_in_worker_processes_equals_the_serial_one(tmp_path: Path) -> None:
    """Each run is seeded on its own: run in two worker processes, the comparison gives the
    same metrics, the same kept records and the same trace files, in the same order, as run
    in this process (a result put back at the wrong place, or a run that read shared state,
    fails it)."""
    from sim.commands import _runs

    scenarios, policies = ["steady", "revoked-keys"], ["least-loaded", "round-robin"]

    def keep(scenario: str, policy: str) -> bool:
        return policy == "least-loaded"

    (tmp_path / "serial").mkdir()
    (tmp_path / "parallel").mkdir()
    serial = _runs(scenarios, policies, None, quiet=True, keep=keep,
                   trace=str(tmp_path / "serial" / "t.jsonl"))
    parallel = _runs(scenarios, policies, None, quiet=True, keep=keep,
                     trace=str(tmp_path / "parallel" / "t.jsonl"), jobs=2)
    assert [(m.scenario, m.policy) for m in parallel[1]] == [
        (s, p) for s in scenarios for p in policies]
    assert parallel[1] == serial[1]
    assert len(parallel[0]) == 2
    assert parallel[0] == serial[0]
    names = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "parallel").iterdir())
    assert len(names) == 4
    for name in names:
        assert (tmp_path / "parallel" / name).read_bytes() == (
            tmp_path / "serial" / name).read_bytes()
