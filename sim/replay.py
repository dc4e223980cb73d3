"""Replay a recorded trace in the simulator: ``python -m sim replay`` and ``python -m sim fit``.

Theory of operation
-------------------
`sim.fit` turns a trace into a scenario.  `Replay` runs that scenario under every policy (each
one sees the same arrivals and the same simulated Google) and puts the *recorded* run beside
them: `recorded_run` reads the trace itself as a `RunResult` (its attempts and requests on the
scenario's clock), so `sim.metrics.compute` measures what really happened with the very
definitions it uses for the simulated runs, and `sim.report.format_table` prints both in the
table ``python -m sim`` prints.  The row of the recorded policy should match the recorded row
(how closely is what ``tests/test_replay.py`` checks); the other rows answer "what would
another policy have done with my traffic".

What-ifs change the fitted scenario data before it is parsed: `add_keys` puts more keys in a
project (a new project name adds a project like the trace's most common kind of project);
``told-limits`` is the policy with the inferred limits configured (``limits=``), and
``--policies`` picks other policies.

Decisions where the issue was silent:

- Replays use the trace's exact arrivals (each request at its own time, size and stream flag),
  so a policy is compared on the traffic that came, not on a draw from a fitted process;
  ``fit`` writes the editable rate process unless ``--exact-arrivals``.
- The recorded policy is keysched's default, ``least-loaded`` (``--recorded-policy`` changes
  it): a trace does not name its policy.  With configured limits in the trace's header the
  fitted scenario says ``limits_known = true``, and ``least-loaded`` is then told them, as the
  recorded client was.
- A request the trace saw attempts of but no end (the recording stopped first) counts as
  failed with reason ``unfinished`` in the recorded row.
- The recorded row's times are the client's (an attempt is sent at ``t - latency``); a request
  line's models are the pool's, as in the fitted scenario.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from keysched.trace import Trace, TraceFormatError, load
from sim.engine import AttemptRecord, RequestRecord, RunResult, simulate
from sim.fit import FitOptions, fit, revealed_limits
from sim.metrics import Metrics, compute
from sim.policies import POLICY_NAMES
from sim.report import LEGEND, format_table
from sim.scenario import Scenario, parse_scenario
from sim.tomlwrite import dumps

__all__ = ["RECORDED", "Replay", "add_commands", "add_keys", "builtin_traces", "load_trace",
           "recorded_run", "replay", "summary", "what_ifs"]

RECORDED = "recorded"
"""The policy name of the row that is the trace itself."""


def recorded_run(trace: Trace, scenario: Scenario) -> RunResult:
    """The trace as a run of `scenario` (its fitted scenario), for `sim.metrics.compute`."""
    t0 = scenario.start_epoch - trace.header.start  # scenario time = trace time - t0
    models = scenario.models_best_first
    attempts = sorted(
        (AttemptRecord(time=a.t - a.latency - t0, end=a.t - t0, request=a.request,
                       number=a.attempt, key=a.key, project=a.project, model=a.model,
                       outcome=a.outcome) for a in trace.attempts),
        key=lambda a: (a.time, a.request, a.number))
    by_request: dict[int, list[AttemptRecord]] = {}
    for attempt in attempts:
        by_request.setdefault(attempt.request, []).append(attempt)
    ended = {line.request: line for line in trace.requests}
    requests = []
    for rid in sorted(set(ended) | set(by_request)):
        tried = by_request.get(rid, [])
        line = ended.get(rid)
        answered = [a for a in tried if a.outcome in ("success", "blocked")]
        if line is not None:
            arrival, end, ok, reason = line.submitted - t0, line.t - t0, line.ok, line.reason
        else:
            arrival, end = tried[0].time, tried[-1].end
            ok, reason = bool(answered), None if answered else "unfinished"
        requests.append(RequestRecord(
            id=rid, arrival=arrival, models=models, input_tokens=0,
            first_dispatch=tried[0].time if tried else None, end=end, ok=ok, reason=reason,
            model=answered[-1].model if ok and answered else None, attempts=len(tried)))
    end_time = max([r.end for r in requests] + [a.end for a in attempts], default=0.0)
    return RunResult(scenario=scenario, policy=RECORDED, seed=scenario.seed, end_time=end_time,
                     requests=tuple(requests), attempts=tuple(attempts), events=(),
                     counters={})


def add_keys(data: dict[str, Any], project: str, count: int) -> dict[str, Any]:
    """Fitted scenario `data` with `count` more keys in `project`, its name saying so.

    A project the trace does not have is added, with the quotas and tier of the trace's most
    common kind of project (the first of them on a tie).

    Raises:
        ValueError: `count` is below 1.
    """
    if count < 1:
        raise ValueError(f"--add-keys {project}={count}: the count must be at least 1")
    data = json.loads(json.dumps(data))  # a deep copy of plain data
    projects = data["projects"]
    target = next((p for p in projects if p["name"] == project), None)
    if target is None:
        # A new project is like the most common kind in the trace (the first, on a tie).
        kinds = Counter(json.dumps(p.get("quotas", {}), sort_keys=True) for p in projects)
        like = next(p for p in projects
                    if json.dumps(p.get("quotas", {}), sort_keys=True) == kinds.most_common(1)[0][0])
        target = {"name": project, "tier": like.get("tier", "free"), "keys": []}
        if "quotas" in like:
            target["quotas"] = like["quotas"]
        projects.append(target)
        data["name"] += f" +{count} keys in {project} (a project like {like['name']})"
    else:
        data["name"] += f" +{count} keys in {project}"
    labels = {key["label"] for p in projects for key in p["keys"]}
    n = 0
    while count:
        n += 1
        label = f"{project}-extra-{n}"
        if label not in labels:
            target["keys"].append({"label": label, "secret": f"replay-{label}"})
            count -= 1
    return data


@attrs.frozen(kw_only=True)
class Replay:
    """One replay: the fitted scenario, the recorded run and every simulated run, with metrics."""

    data: dict[str, Any]
    scenario: Scenario
    recorded: RunResult
    runs: tuple[RunResult, ...]
    metrics: tuple[Metrics, ...]
    """The recorded run's first, then the simulated runs', in the order of `runs`."""


def _scenario(data: dict[str, Any], name: str) -> Scenario:
    return parse_scenario({**data, "name": name}, source=f"<fitted {name}>")


def replay(trace: Trace, *, policies: Sequence[str] = POLICY_NAMES, seed: int = 0,
           name: str = "replay", what_ifs: Sequence[tuple[str, int]] = (),
           options: FitOptions | None = None) -> Replay:
    """Fit `trace` (exact arrivals) and run `policies` on it, and on each what-if.

    Args:
        trace: the trace.
        policies: policy names (`sim.policies.POLICY_NAMES`).
        seed: the seed of every simulated run.
        name: the fitted scenario's name, shown in the table's heading.
        what_ifs: ``(project, count)``: run `policies` again with `count` more keys in
            `project`.
        options: fit options (the arrivals are always exact).

    Raises:
        ValueError: the trace has no request, or a what-if is malformed.
        KeyError: an unknown policy name.
    """
    options = attrs.evolve(options or FitOptions(), name=name, exact_arrivals=True, seed=seed)
    data = fit(trace, options)
    scenario = _scenario(data, name)
    recorded = recorded_run(trace, scenario)
    runs = [simulate(scenario, policy, seed) for policy in policies]
    for project, count in what_ifs:
        more = add_keys(data, project, count)
        changed = _scenario(more, more["name"])
        runs += [simulate(changed, policy, seed) for policy in policies]
    return Replay(data=data, scenario=scenario, recorded=recorded, runs=tuple(runs),
                  metrics=(compute(recorded), *(compute(run) for run in runs)))


def _limits_text(trace: Trace) -> list[str]:
    lines = []
    for (project, model), dims in sorted(revealed_limits(trace).items()):
        shown = ", ".join(f"{dim} {' -> '.join(str(v) for _, v in values)}"
                          for dim, values in sorted(dims.items()))
        lines.append(f"  {project} / {model}: {shown}")
    return lines or ["  (none: no 429 named a quota)"]


def summary(trace: Trace, result: Replay) -> str:
    """What the fit found, in a few lines: the pool, the limits, the faults."""
    scenario = result.scenario
    faults = [f"{f.kind.value} {f.key or f.project or f.model or ''} from {f.start:g} s"
              + (f" to {f.end:g} s" if f.end != float("inf") else "")
              + (f" p={f.probability:g}" if f.probability < 1 else "")
              for f in scenario.faults]
    out = [f"fitted {len(result.recorded.requests)} requests and {len(trace.attempts)} attempts "
           f"over {scenario.duration:g} s: {len(scenario.keys)} keys in "
           f"{len(scenario.projects)} projects, models {', '.join(scenario.models_best_first)}",
           "limits the 429s revealed (project / model: quota):", *_limits_text(trace),
           "faults: " + ("; ".join(faults) if faults else "none")]
    if trace.dropped:
        out.append(f"warning: the recorder dropped {trace.dropped} lines; the trace is "
                   f"incomplete")
    return "\n".join(out)


def what_ifs(result: Replay, recorded_policy: str = "least-loaded") -> str:
    """Every other run against the replay of `recorded_policy`: answers, 429s, wasted attempts.

    Empty when `recorded_policy` was not run.
    """
    base = next((m for m in result.metrics[1:] if m.policy == recorded_policy
                 and m.scenario == result.scenario.name), None)
    if base is None:
        return ""

    def delta(now: int, then: int) -> str:
        return f"{now - then:+d}" if now != then else "same"

    out = [f"what-ifs, against the replay of {recorded_policy} ({base.successes} answers, "
           f"{base.rate_limited} 429s, {base.wasted_total} wasted attempts):"]
    for m in result.metrics[1:]:
        if m is base:
            continue
        name = m.policy if m.scenario == base.scenario else f"{m.policy}, {m.scenario}"
        if m.policy == "told-limits":
            name += " (the limits the 429s revealed, configured)"
        out.append(f"  {name}: answers {delta(m.successes, base.successes)}, 429s "
                   f"{delta(m.rate_limited, base.rate_limited)}, wasted "
                   f"{delta(m.wasted_total, base.wasted_total)}")
    return "\n".join(out)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _what_if(spec: str) -> tuple[str, int]:
    project, sep, count = spec.rpartition("=")
    if not sep or not project or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"expected PROJECT=N with N a whole number >= 1, got {spec!r}")
    return project, int(count)


_TRACE_DIR = "traces"


def builtin_traces() -> list[str]:
    """The names of the built-in traces (``sim/traces/*.jsonl``), sorted."""
    folder = importlib.resources.files("sim") / _TRACE_DIR
    return sorted(entry.name.removesuffix(".jsonl") for entry in folder.iterdir()
                  if entry.name.endswith(".jsonl"))


def load_trace(path_or_name: str) -> Trace:
    """A trace from a file, or a built-in one by name (``demo``: the real client on the built-in
    ``demo`` scenario, recorded by ``scripts/record_trace.py``).

    Raises:
        OSError: the file cannot be read.
        TraceFormatError: a line is not format version 1.
    """
    if not Path(path_or_name).exists() and path_or_name in builtin_traces():
        resource = importlib.resources.files("sim") / _TRACE_DIR / f"{path_or_name}.jsonl"
        with resource.open(encoding="utf-8") as file:
            return load(file)
    return load(path_or_name)


def _load(path: str) -> Trace | None:
    try:
        return load_trace(path)
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
    except TraceFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return None


def _options(args: argparse.Namespace) -> FitOptions:
    return FitOptions(name=args.name or Path(args.trace).stem,
                      bin_width=getattr(args, "bin", 60.0), fault_bin=args.fault_bin,
                      deadline=args.deadline)


def _cmd_fit(args: argparse.Namespace) -> int:
    trace = _load(args.trace)
    if trace is None:
        return 2
    options = attrs.evolve(_options(args), exact_arrivals=args.exact_arrivals, seed=args.seed)
    try:
        data = fit(trace, options)
    except ValueError as exc:
        print(f"error: {args.trace}: {exc}", file=sys.stderr)
        return 2
    comment = (f"Fitted by `python -m sim fit {args.trace}`: edit freely (format: sim/scenario.py)."
               f"\nLimits not listed were never revealed by a 429: unlimited here.")
    text = dumps(data, comment=comment)
    parse_scenario(data, source=args.output or "<fitted>")  # what we write must load
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: {len(data['projects'])} projects, "
              f"{len(data['workload'])} workload phases, {len(data['faults'])} faults",
              file=sys.stderr)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    trace = _load(args.trace)
    if trace is None:
        return 2
    options = _options(args)
    try:
        result = replay(trace, policies=args.policies, seed=args.seed, name=options.name,
                        what_ifs=args.add_keys, options=options)
    except ValueError as exc:
        print(f"error: {args.trace}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"format": 1, "runs": [m.to_json() for m in result.metrics]},
                         indent=2))
        return 0
    print(summary(trace, result))
    print()
    print(format_table(result.metrics))
    print(LEGEND)
    print(f"({RECORDED}: the trace itself; the rows under it replay its arrivals in the "
          f"simulator; {args.recorded_policy} is the policy that recorded it)")
    lines = what_ifs(result, args.recorded_policy)
    if lines:
        print()
        print(lines)
    return 0


def _fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="a trace file (keysched.trace JSON lines), or a built-in "
                                      "trace's name (demo)")
    parser.add_argument("--name", default=None, help="the scenario's name (default: the file's)")
    parser.add_argument("--seed", type=int, default=0, help="the seed (default 0)")
    parser.add_argument("--fault-bin", type=_positive, default=10.0, metavar="SECONDS",
                        help="bin width of the fault rates before merging (default 10)")
    parser.add_argument("--deadline", type=_positive, default=None, metavar="SECONDS",
                        help="every request's deadline (default: inferred, else 120)")


def add_commands(subparsers: Any) -> None:
    """Register ``fit`` and ``replay`` on an argparse subparsers object."""
    fitting = subparsers.add_parser(
        "fit", help="rebuild a scenario from an outcome trace and write it as TOML",
        description="Infer a scenario (pool, arrivals, revealed limits, latency, faults) from a "
                    "trace recorded by KeyedClient(record=...) or sim --trace.")
    _fit_arguments(fitting)
    fitting.add_argument("--bin", type=_positive, default=60.0, metavar="SECONDS",
                         help="bin width of the arrival rates before merging (default 60)")
    fitting.add_argument("-o", "--output", default=None, metavar="FILE",
                         help="write the TOML here (default: stdout)")
    fitting.add_argument("--exact-arrivals", action="store_true",
                         help="one burst per request at its own time and size (long, exact) "
                              "instead of rates per phase")
    fitting.set_defaults(handler=_cmd_fit)
    replaying = subparsers.add_parser(
        "replay", help="fit a trace, then compare every policy (and what-ifs) on it",
        description="Fit a trace, replay its arrivals under each policy and print the "
                    "comparison beside the recorded run.")
    _fit_arguments(replaying)
    replaying.add_argument("--policies", nargs="+", choices=POLICY_NAMES,
                           default=list(POLICY_NAMES), metavar="POLICY",
                           help=f"policies to run (default: all of {', '.join(POLICY_NAMES)})")
    replaying.add_argument("--add-keys", action="append", type=_what_if, default=[],
                           metavar="PROJECT=N",
                           help="what-if: N more keys in PROJECT (a new name adds a project "
                                "like the trace's most common one); repeatable")
    replaying.add_argument("--recorded-policy", choices=POLICY_NAMES, default="least-loaded",
                           help="the policy the trace was recorded with (default least-loaded)")
    replaying.add_argument("--json", action="store_true", help="print metrics as JSON")
    replaying.set_defaults(handler=_cmd_replay)
