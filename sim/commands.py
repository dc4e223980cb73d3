"""The simulator's commands: ``list``, ``run``, ``compare`` and the default comparison.

``add_commands(subparsers)`` registers the subcommands on an `argparse` subparsers object (each
sets ``handler`` to a function of the parsed arguments returning an exit code);
``main_default()`` is what ``python -m sim`` without arguments runs; ``main(argv)`` is a complete
entry point built from the two.

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
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from sim.engine import RunResult, simulate
from sim.metrics import Metrics, compute
from sim.policies import POLICY_NAMES
from sim.report import format_table
from sim.scenario import ScenarioError, builtin_scenarios, load_scenario

__all__ = ["DEFAULT_PLOT_DIR", "DEFAULT_SCENARIOS", "add_commands", "main", "main_default"]

DEFAULT_SCENARIOS = ("steady", "saturation", "daily-exhaustion", "overload-storm",
                     "revoked-keys", "shared-project", "thousand-keys", "bare-429-burst",
                     "free-tier-unknown", "paid-tier-unknown", "tier-change", "flaky",
                     "sticky-bare-429")
"""The scenarios of the default comparison, in the order the table shows them."""

DEFAULT_PLOT_DIR = "sim-plots"
JSON_FORMAT = 1


def _runs(scenarios: Sequence[str], policies: Sequence[str], seed: int | None,
          quiet: bool = False) -> tuple[list[RunResult], list[Metrics]]:
    results, metrics = [], []
    for name in scenarios:
        scenario = load_scenario(name)
        for policy in policies:
            started = time.perf_counter()
            if not quiet:
                print(f"running {scenario.name} / {policy} ...", end="", file=sys.stderr,
                      flush=True)
            result = simulate(scenario, policy, seed)
            results.append(result)
            metrics.append(compute(result))
            if not quiet:
                print(f" {len(result.requests)} requests in "
                      f"{time.perf_counter() - started:.2f} s", file=sys.stderr)
    return results, metrics


def _emit(results: list[RunResult], metrics: list[Metrics], args: argparse.Namespace) -> int:
    if args.json:
        data: dict[str, Any] = {"format": JSON_FORMAT, "runs": [m.to_json() for m in metrics]}
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print(format_table(metrics))
    if args.plot:
        from sim.plots import save_all

        written = save_all(results, metrics, args.plot)
        print(f"wrote {len(written)} figures to {args.plot}", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for name in builtin_scenarios():
        print(f"{name:18} {load_scenario(name).description}")
    print()
    print("policies:", ", ".join(POLICY_NAMES))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    results, metrics = _runs([args.scenario], [args.policy], args.seed, quiet=args.json)
    return _emit(results, metrics, args)


def _cmd_compare(args: argparse.Namespace) -> int:
    results, metrics = _runs([args.scenario], args.policies, args.seed, quiet=args.json)
    return _emit(results, metrics, args)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="a built-in scenario name or a scenario TOML file")
    parser.add_argument("--seed", type=int, default=None,
                        help="the run's seed (default: the scenario's)")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    parser.add_argument("--plot", metavar="DIR", default=None, help="write figures to DIR")


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


def main_default(plot_dir: str | None = DEFAULT_PLOT_DIR) -> int:
    """Every policy on the default scenarios: print the table, write the plots to `plot_dir`.

    Per-run figures are drawn for the default policy and ``router-like`` (the rest would be
    dozens of near-identical images); one comparison figure per scenario covers every policy.
    """
    results, metrics = _runs(DEFAULT_SCENARIOS, POLICY_NAMES, None)
    print(format_table(metrics))
    if plot_dir:
        from sim.plots import save_all

        shown = [r for r in results if r.policy in ("least-loaded", "router-like")]
        written = save_all(shown, metrics, plot_dir)
        print(f"wrote {len(written)} figures to {plot_dir}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim [list | run ... | compare ...]``; no command runs `main_default`."""
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__.splitlines()[0])
    parser.add_argument("--plot", metavar="DIR", default=DEFAULT_PLOT_DIR,
                        help="where the default comparison writes its figures")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if args.command is None:
        return main_default(args.plot)
    try:
        return int(args.handler(args))
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
