"""The simulator's commands: ``list``, ``run``, ``compare`` and the default comparison.

``add_commands(subparsers)`` registers the subcommands on an `argparse` subparsers object (each
sets ``handler`` to a function of the parsed arguments returning an exit code);
``main_default()`` is what ``python -m sim`` without arguments runs; ``main(argv)`` runs the
command line of `sim.cli`.

JSON output (``run --json``, ``compare --json``) is one object, stable across versions with
the same ``"format"``::

    {"format": 1,
     "runs": [{"scenario": str, "policy": str, "seed": int,
               "requests": int, "successes": int, "failures": {reason: int}, "lost": int,
               "best_model_share": float|null, "attempts": int,
               "attempts_per_success": float|null, "wasted": {outcome kind: int},
               "wasted_total": int, "waste_ratio": float|null, "rate_limited": int,
               "latency": {"p50": s|null, "p95": s|null, "p99": s|null},
               "queueing": {"p50": ..., "p95": ..., "p99": ...},
               "fairness": float|null, "utilisation": float|null, "capacity": float|null,
               "recovery_time": s|null, "recovered": bool,
               "after_revocation": int, "after_revocation_max_per_key": int,
               "after_revocation_known": int}, ...]}

The definitions are in `sim.metrics`.  Times are virtual seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from sim.cli import DEFAULT_PLOT_DIR
from sim.engine import RunResult, pool_config, run
from sim.metrics import Metrics, MetricsRecorder
from sim.policies import POLICY_NAMES, get_policy
from sim.records import FullRecorder, Observer
from sim.report import LEGEND, format_table
from sim.scenario import Scenario, builtin_scenarios, load_scenario
from sim.tracefile import TraceWriter

__all__ = ["DEFAULT_PLOT_DIR", "DEFAULT_SCENARIOS", "Progress", "add_commands", "main",
           "main_default"]

DEFAULT_SCENARIOS = ("steady", "saturation", "daily-exhaustion", "overload-storm",
                     "revoked-keys", "shared-project", "thousand-keys", "bare-429-burst",
                     "free-tier-unknown", "paid-tier-unknown", "tier-change", "flaky",
                     "sticky-bare-429")
"""The scenarios of the default comparison, in the order the table shows them."""

JSON_FORMAT = 1

TRACE_HELP = ("write the run's trace to FILE: JSON lines, one per attempt and per request, in "
              "keysched.trace's format (with several runs, one file per run: FILE's name with "
              "-SCENARIO-POLICY added)")


class Progress:
    """A long stage's progress on stderr: what it does, a count every few seconds, the total.

    The comparison and the figures take seconds; a user who sees nothing for that long thinks
    the command hangs.  Short stages print two lines and no count.
    """

    def __init__(self, what: str, total: int, *, every: float = 2.0) -> None:
        self.total = total
        self.every = every
        self.done = 0
        self.started = self.shown = time.perf_counter()
        print(f"{what} ...", file=sys.stderr, flush=True)

    def step(self, label: str) -> None:
        """One more of `total` is done (`label` names it)."""
        self.done += 1
        now = time.perf_counter()
        if now - self.shown >= self.every and self.done < self.total:
            self.shown = now
            print(f"  {self.done}/{self.total} done (last: {label})", file=sys.stderr, flush=True)

    def finish(self, summary: str) -> None:
        print(f"  {summary} in {time.perf_counter() - self.started:.1f} s", file=sys.stderr,
              flush=True)


Keep = Callable[[str, str], bool]
"""Which runs, by (scenario name, policy), keep every record for figures."""


def _runs(scenarios: Sequence[str], policies: Sequence[str], seed: int | None,
          quiet: bool = False, progress: Progress | None = None, keep: Keep = lambda s, p: False,
          trace: str | None = None, jobs: int = 1) -> tuple[list[RunResult], list[Metrics]]:
    """Every policy through every scenario: the metrics of each run, computed as it goes, and
    the full records of the runs `keep` names (the ones drawn).  Each run is announced on
    stderr as it starts and ends, unless `quiet`; with `progress`, only counted there.  With
    `trace`, each run goes to that file as a `keysched.trace` (see `sim.tracefile`).  With
    `jobs` above 1, the runs share that many worker processes (`_in_parallel`)."""
    many = len(scenarios) * len(policies) > 1
    loaded = [load_scenario(name) for name in scenarios]
    tasks = [_Task(scenario, policy, seed, keep(scenario.name, policy),
                   None if trace is None else str(
                       _trace_path(trace, scenario.name, policy) if many else Path(trace)))
             for scenario in loaded for policy in policies]
    if jobs > 1 and many:
        done = _in_parallel(tasks, jobs, progress)
    else:
        done = []
        for task in tasks:
            loud = not quiet and progress is None
            if loud:
                print(f"running {task.label} ...", end="", file=sys.stderr, flush=True)
            done.append(task.run())
            if loud:
                print(f" {done[-1].metrics.requests} requests in {done[-1].seconds:.2f} s",
                      file=sys.stderr)
            if progress is not None:
                progress.step(task.label)
    results = [run.result for run in done if run.result is not None]
    return results, [run.metrics for run in done]


@attrs.frozen
class _Done:
    """What one run gives back: its metrics, its records if kept, its wall seconds."""

    metrics: Metrics
    result: RunResult | None
    seconds: float


@attrs.frozen
class _Task:
    """One run of the comparison, as a worker process is handed it (picklable)."""

    scenario: Scenario
    policy: str
    seed: int | None
    keep: bool
    trace: str | None

    @property
    def label(self) -> str:
        return f"{self.scenario.name} / {self.policy}"

    def run(self) -> _Done:
        started = time.perf_counter()
        scenario = self.scenario
        recorder = MetricsRecorder(scenario)
        full = FullRecorder() if self.keep else None
        with contextlib.ExitStack() as stack:
            observers: list[Observer] = [recorder] if full is None else [recorder, full]
            if self.trace is not None:
                writer = TraceWriter(stack.enter_context(open(self.trace, "w", encoding="utf-8")),
                                     scenario, pool_config(scenario, get_policy(self.policy)))
                stack.callback(writer.close)  # runs before the file closes
                observers.append(writer)
            summary = run(scenario, self.policy, self.seed, observers=observers,
                          record_events=full is not None)
        return _Done(recorder.metrics(summary), None if full is None else full.result(summary),
                     time.perf_counter() - started)


def _in_parallel(tasks: list[_Task], jobs: int, progress: Progress | None) -> list[_Done]:
    """Run `tasks` in `jobs` worker processes; their results in the tasks' order.

    Each run is seeded on its own, so a run gives the same result in any process and order
    (`tests/test_cli.py` holds the parallel comparison equal to the serial one).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    done: list[_Done | None] = [None] * len(tasks)
    # Spawned, not forked: a caller's threads (a test run's, an application's) hold locks a
    # forked child would inherit held.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(tasks[index].run): index for index in range(len(tasks))}
        for future in as_completed(futures):
            index = futures[future]
            done[index] = future.result()
            if progress is not None:
                progress.step(tasks[index].label)
    return [run for run in done if run is not None]


def _trace_path(trace: str, scenario: str, policy: str) -> Path:
    """Where one of several runs writes its trace: `trace` with ``-scenario-policy`` added."""
    path = Path(trace)
    return path.with_name(f"{path.stem}-{scenario}-{policy}{path.suffix}")


def _emit(results: list[RunResult], metrics: list[Metrics], args: argparse.Namespace) -> int:
    if args.json:
        data: dict[str, Any] = {"format": JSON_FORMAT, "runs": [m.to_json() for m in metrics]}
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print(format_table(metrics))
    if args.plot:
        _draw("all", results, metrics, args.plot)
    return 0


def _draw(which: str, results: Sequence[RunResult], metrics: Sequence[Metrics],
          folder: str) -> None:
    """Write the `which` figures ("summary" or "all") to `folder`, with progress on stderr."""
    # Imported here: matplotlib loads only when something is drawn.
    from sim import plots

    if which == "summary":
        count = 1 + len(plots.SUMMARY)
        progress = Progress(f"drawing {count} figures", count)
        written = plots.save_summary(results, metrics, folder, progress=progress.step)
    else:
        count = 3 * len(results) + len({m.scenario for m in metrics})
        progress = Progress(f"drawing {count} figures", count)
        written = plots.save_all(results, metrics, folder, progress=progress.step)
    progress.finish(f"wrote {len(written)} figures")
    print(f"figures in {Path(folder).resolve()}/" + (":" if len(written) <= 10 else ""),
          file=sys.stderr)
    for path in written if len(written) <= 10 else ():  # a few are named, a folder-full not
        print(f"  {path.name}", file=sys.stderr)


def _cmd_list(args: argparse.Namespace) -> int:
    for name in builtin_scenarios():
        print(f"{name:18} {load_scenario(name).description}")
    print()
    print("policies:", ", ".join(POLICY_NAMES))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    results, metrics = _runs([args.scenario], [args.policy], args.seed, quiet=args.json,
                             keep=lambda s, p: bool(args.plot), trace=args.trace)
    return _emit(results, metrics, args)


def _cmd_compare(args: argparse.Namespace) -> int:
    results, metrics = _runs([args.scenario], args.policies, args.seed, quiet=args.json,
                             keep=lambda s, p: bool(args.plot), trace=args.trace)
    return _emit(results, metrics, args)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="a built-in scenario name or a scenario TOML file")
    parser.add_argument("--seed", type=int, default=None,
                        help="the run's seed (default: the scenario's)")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    parser.add_argument("--plot", metavar="DIR", default=None, help="write figures to DIR")
    parser.add_argument("--trace", metavar="FILE", default=None, help=TRACE_HELP)


def add_commands(subparsers: Any) -> None:
    """Register ``list``, ``run`` and ``compare`` on an argparse subparsers object."""
    listing = subparsers.add_parser("list", help="list the built-in scenarios and policies")
    listing.set_defaults(handler=_cmd_list)
    run = subparsers.add_parser("run", help="run one policy through a scenario")
    _common(run)
    run.add_argument("--policy", choices=POLICY_NAMES, default="least-loaded")
    run.set_defaults(handler=_cmd_run)
    compare = subparsers.add_parser("compare", help="run several policies through a scenario")
    _common(compare)
    compare.add_argument("--policies", nargs="+", choices=POLICY_NAMES,
                         default=list(POLICY_NAMES), metavar="POLICY",
                         help=f"policies to compare (default: all of {', '.join(POLICY_NAMES)})")
    compare.set_defaults(handler=_cmd_compare)


def main_default(plot: str = "summary", plot_dir: str = DEFAULT_PLOT_DIR,
                 trace: str | None = None, jobs: int | None = None) -> int:
    """Every policy on the default scenarios: print the table and write figures to `plot_dir`.

    `plot` is ``"summary"`` (an overview of every run and three figures of the default policy,
    a few seconds), ``"all"`` (also three figures per run of the default policy and
    ``router-like``, and one comparison per scenario: a minute or more) or ``"none"``.  Only
    the runs drawn keep every record; with `trace`, every run writes its attempts (see
    `TRACE_HELP`).  The runs share `jobs` worker processes (default: one per CPU).
    """
    runs = len(DEFAULT_SCENARIOS) * len(POLICY_NAMES)
    jobs = min(runs, os.cpu_count() or 1) if jobs is None else jobs
    progress = Progress(f"simulating {runs} runs ({len(DEFAULT_SCENARIOS)} scenarios x "
                        f"{len(POLICY_NAMES)} policies)", runs)
    results, metrics = _runs(DEFAULT_SCENARIOS, POLICY_NAMES, None, progress=progress,
                             keep=_drawn(plot), trace=trace, jobs=jobs)
    progress.finish(f"{sum(m.requests for m in metrics):,} simulated requests")
    print(format_table(metrics))
    print(LEGEND)
    if plot == "summary":
        _draw(plot, results, metrics, plot_dir)
        print("(python -m sim --plot all draws every figure)", file=sys.stderr)
    elif plot == "all":
        # Per-run figures for the default policy and router-like: the others would be dozens
        # of near-identical images; the comparisons cover every policy.
        _draw("summary", results, metrics, plot_dir)
        _draw("all", results, metrics, plot_dir)
    return 0


def _drawn(plot: str) -> Keep:
    """The runs whose figures `main_default` draws with `plot`."""
    if plot == "all":
        return lambda scenario, policy: policy in ("least-loaded", "router-like")
    if plot == "summary":
        from sim.plots import SUMMARY  # matplotlib itself loads only when drawing

        drawn = {(name, "least-loaded") for name, _ in SUMMARY}
        return lambda scenario, policy: (scenario, policy) in drawn
    return lambda scenario, policy: False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim``'s command line (see `sim.cli`), for callers that import this module."""
    from sim.cli import main as cli_main

    return cli_main(argv)
