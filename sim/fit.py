"""Fit a scenario to an outcome trace: ``python -m sim fit outcomes.jsonl -o my.toml``.

Theory of operation
-------------------
A trace (`keysched.trace`, written by ``KeyedClient(record=...)`` or the simulator's
``--trace``) holds, per attempt, when it ended and how long it took, its key, project and model,
its outcome with the 429's violated quotas, and token counts; per request, when it was
submitted and how it ended.  `fit` turns that into the data of a scenario file (the dict
`sim.scenario.parse_scenario` reads and `sim.tomlwrite.dumps` writes), from which the simulator can
replay the traffic under any policy:

- **Pool**: the header's keys (label, project) and models (best first), plus any the attempt
  lines name that the header lacks.  Keys get fake secrets (``replay-<label>``).
- **Arrivals**: each request's submission time.  ``exact`` arrivals (what `sim.replay` uses)
  replay every request at its own time with its own size and stream flag; otherwise the
  requests are binned (`FitOptions.bin_width`) and adjacent bins whose rates Poisson noise
  explains are merged (`_merge`), each run of bins becoming one ``[[workload]]`` phase with
  its rate, stream share and an input-size range of the same mean and spread.
- **Limits**: each 429's violations name the quota (``rpm``/``tpm``/``rpd``) and its value,
  per (project, model).  The first value seen is the quota; a later, different value is a
  ``[[quota_changes]]`` entry at the attempt that revealed it.  A ``limit: 0`` answer makes
  the model ``0`` for the project.  A value every revealing project agrees on is given to the
  projects whose traffic never hit that limit, unless their traffic went past it (a project
  that never reached its quota cannot reveal it; the others' value is the best guess that
  the trace does not contradict).
  Configured limits in the header fill what no 429 revealed.
- **Latency** per model: a log-normal fitted to the answered attempts (median = geometric
  mean, sigma = standard deviation of the logs); output sizes as a range of the same mean and
  spread; ``error_latency`` the median latency of 429 answers.
- **Faults**: a key's first ``key_invalid`` / ``key_leaked`` / ``key_type_unsupported`` answer
  revokes it from that attempt on; a ``project_disabled`` answer disables its project.  The
  probabilistic classes (503 overloaded, 500, bare 429, timeout, connection reset, bad body)
  are binned per model (`FitOptions.fault_bin`) as faults over the attempts that could have
  met them, adjacent bins whose rates binomial noise explains are merged, and every run with
  a non-zero rate becomes a fault window with that probability.

Decisions where the issue was silent:

- The trace does not say which models a request allowed, nor its deadline: every request is
  given the pool's models, best first (an embedding model only if an attempt used it), and
  the deadline is the longest a request that failed with ``deadline`` lasted, rounded up
  (else the client's default, 120 s).
- A request the caller cancelled is replayed as an ordinary request (what it would have met
  is the question a replay answers); one that never got an attempt is replayed too.
- A request's input size is the ``tokens_in`` its answer reported, else that of any of its
  attempts, else the median of all; a request is streamed when its attempts were.
- Scenario time 0 is the trace's ``t = 0`` moved forward by whole minutes to the minute of the
  first submission, so wall-clock minute windows stay where the server had them.
- ``quota_window`` is ``"fixed"`` when most per-minute 429s ask to wait until a wall-clock
  minute ends (`_quota_window`), else ``"sliding"``.
- Limits no 429 revealed (nor the header configured) are left unlimited: the recorded traffic
  never met them, so neither does its replay; a what-if with more traffic may.
- The window edges of probabilistic faults are bin edges (a 10 s resolution by default), and a
  fault's probability is taken over the attempts of its model that reached the stage where
  Google decides it (all admitted attempts for 503/500/timeouts, all that reached the quota
  check for bare 429s, all attempts for resets).
"""

from __future__ import annotations

import datetime
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import attrs

from keysched import OutcomeKind
from keysched.driver import next_pacific_midnight
from keysched.trace import AttemptLine, Trace
from sim.scenario import FaultKind, Scenario, parse_scenario

__all__ = ["DEFAULT_DEADLINE", "FitOptions", "fit", "fit_scenario", "revealed_limits"]

DEFAULT_DEADLINE = 120.0
"""The deadline a fitted request gets when the trace shows none (the client's default)."""

_K = OutcomeKind
_ANSWERS = frozenset({_K.SUCCESS.value, _K.BLOCKED.value})
_ADMITTED = frozenset(k.value for k in (
    _K.SUCCESS, _K.BLOCKED, _K.EMPTY, _K.OVERLOADED, _K.SERVER_ERROR, _K.TIMEOUT,
    _K.BAD_RESPONSE))
"""Outcomes of attempts the quotas let through: the trials of the post-admission faults."""
_BEFORE_QUOTA = frozenset(k.value for k in (
    _K.KEY_INVALID, _K.KEY_LEAKED, _K.KEY_FORBIDDEN, _K.KEY_TYPE_UNSUPPORTED, _K.ACCESS_REFUSED,
    _K.PROJECT_DISABLED, _K.MODEL_NOT_FOUND, _K.REQUEST_ERROR, _K.CONNECTION_ERROR))
"""Outcomes decided before the quota check: not trials of a bare 429."""
_QUOTA_429 = frozenset(k.value for k in (
    _K.RATE_LIMITED_MINUTE, _K.RATE_LIMITED_DAY, _K.TOO_LARGE_FOR_QUOTA))

_WINDOWED: dict[str, tuple[FaultKind, str]] = {
    _K.OVERLOADED.value: (FaultKind.OVERLOADED, "admitted"),
    _K.SERVER_ERROR.value: (FaultKind.SERVER_ERROR, "admitted"),
    _K.TIMEOUT.value: (FaultKind.TIMEOUT, "admitted"),
    _K.BAD_RESPONSE.value: (FaultKind.TRUNCATED_BODY, "admitted"),
    _K.SHARED_CAPACITY.value: (FaultKind.SHARED_429, "quota"),
    _K.CONNECTION_ERROR.value: (FaultKind.RESET, "all"),
}
"""Outcome -> (the fault that produces it, which attempts could have met it)."""
_KEY_FAULTS = {_K.KEY_INVALID.value: FaultKind.KEY_REVOKED,
               _K.KEY_LEAKED.value: FaultKind.KEY_LEAKED,
               _K.KEY_TYPE_UNSUPPORTED.value: FaultKind.KEY_TYPE_UNSUPPORTED}

WINDOW_SLACK = 0.5
"""Seconds a fixed window's retry delay may miss the wall-clock minute (the client's send time
is not the server's)."""
MERGE_Z = 2.5
"""Adjacent bins merge when their rates differ by less than this many standard errors."""


@attrs.frozen(kw_only=True)
class FitOptions:
    """How `fit` reads a trace.

    Attributes:
        name: the scenario's name.
        exact_arrivals: replay each request at its own time and size (else a rate process).
        bin_width: seconds per bin of the arrival process (before merging).
        fault_bin: seconds per bin of the fault rates (before merging).
        seed: the scenario's seed.
        deadline: every request's deadline (``None``: inferred, see the module docstring).
    """

    name: str = "replay"
    exact_arrivals: bool = False
    bin_width: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    fault_bin: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    seed: int = 0
    deadline: float | None = None


@attrs.frozen(kw_only=True)
class _Request:
    """One request as the replay submits it."""

    arrival: float
    input_tokens: int
    stream: bool


def _sent(attempt: AttemptLine) -> float:
    return attempt.t - attempt.latency


def _requests(trace: Trace) -> list[_Request]:
    """Every request of the trace: submitted when its request line says (else at its first
    attempt), with its input size and stream flag."""
    attempts: dict[int, list[AttemptLine]] = defaultdict(list)
    for attempt in trace.attempts:
        attempts[attempt.request].append(attempt)
    submitted = {line.request: line.submitted for line in trace.requests}
    for rid, tried in attempts.items():
        submitted.setdefault(rid, min(_sent(a) for a in tried))
    known = [a.tokens_in for a in trace.attempts if a.tokens_in]
    fallback = int(statistics.median(known)) if known else 1000
    out = []
    for rid, arrival in sorted(submitted.items(), key=lambda item: (item[1], item[0])):
        tried = attempts.get(rid, [])
        answered = [a.tokens_in for a in tried if a.outcome in _ANSWERS and a.tokens_in]
        any_size = [a.tokens_in for a in tried if a.tokens_in]
        tokens = (answered or any_size or [fallback])[0]
        out.append(_Request(arrival=arrival, input_tokens=max(1, tokens),
                            stream=any(a.stream for a in tried)))
    return out


def _deadline(trace: Trace, options: FitOptions) -> float:
    if options.deadline is not None:
        return options.deadline
    lasted = [line.t - line.submitted for line in trace.requests
              if not line.ok and line.reason == "deadline"]
    return float(math.ceil(max(lasted))) if lasted else DEFAULT_DEADLINE


def _z(a: float, wa: float, b: float, wb: float, *, binomial: bool) -> float:
    """How many standard errors apart the rates a/wa and b/wb are (0 when undecidable)."""
    if wa <= 0 or wb <= 0:
        return 0.0
    pooled = (a + b) / (wa + wb)
    spread = pooled * (1 - pooled) if binomial else pooled
    variance = spread * (1 / wa + 1 / wb)
    return abs(a / wa - b / wb) / math.sqrt(variance) if variance > 0 else 0.0


class Run(NamedTuple):
    """Adjacent bins ``[first, end)`` merged into one rate: `events` over `trials` (a duration in
    seconds for arrivals, a number of attempts for faults)."""

    first: int
    end: int
    events: float
    trials: float


def _merge(counts: Sequence[float], trials: Sequence[float], *, binomial: bool) -> list[Run]:
    """Runs of adjacent bins whose rates noise explains.

    Greedy, left to right: a bin joins the current run unless its rate differs from the run's
    by `MERGE_Z` standard errors or more (Poisson counts over widths, or binomial successes
    over trials).  A bin without trials joins any run.
    """
    runs: list[Run] = []
    for index, (count, trial) in enumerate(zip(counts, trials, strict=True)):
        if runs:
            last = runs[-1]
            if _z(last.events, last.trials, count, trial, binomial=binomial) < MERGE_Z:
                runs[-1] = Run(last.first, index + 1, last.events + count, last.trials + trial)
                continue
        runs.append(Run(index, index + 1, count, trial))
    return runs


def _uniform_range(values: Sequence[int]) -> list[int] | int:
    """A uniform integer range with the mean and spread of `values` (one value: that value)."""
    if len(set(values)) <= 1:
        return values[0] if values else 1
    mean, spread = statistics.fmean(values), statistics.pstdev(values) * math.sqrt(3)
    low = max(1, round(mean - spread))
    return [low, max(low, round(mean + spread))]


def _exact_workload(requests: Sequence[_Request], models: list[str], deadline: float,
                    t0: float) -> list[dict[str, Any]]:
    """One phase per (size, stream) with a burst of one at each request's time."""
    phases: dict[tuple[int, bool], list[float]] = defaultdict(list)
    for request in requests:
        phases[(request.input_tokens, request.stream)].append(request.arrival - t0)
    return [{"rate": 0, "models": models, "input_tokens": tokens, "deadline": deadline,
             "stream": 1.0 if stream else 0.0,
             "bursts": [{"at": round(at, 6), "count": 1, "spread": 0} for at in times]}
            for (tokens, stream), times in sorted(phases.items(), key=lambda item: item[1][0])]


def _process_workload(requests: Sequence[_Request], models: list[str], deadline: float,
                      t0: float, duration: float, width: float) -> list[dict[str, Any]]:
    """Poisson phases over merged bins of the submission times."""
    bins = max(1, math.ceil(duration / width))
    members: list[list[_Request]] = [[] for _ in range(bins)]
    for request in requests:
        members[min(bins - 1, int((request.arrival - t0) // width))].append(request)
    widths = [min(width, duration - i * width) for i in range(bins)]
    phases = []
    for run in _merge([len(m) for m in members], widths, binomial=False):
        inside = [r for m in members[run.first:run.end] for r in m]
        if not inside:
            continue
        start = run.first * width
        phases.append({
            "start": round(start, 6), "end": round(start + run.trials, 6),
            "rate": round(run.events / run.trials, 6), "models": models,
            "input_tokens": _uniform_range([r.input_tokens for r in inside]),
            "deadline": deadline,
            "stream": round(sum(r.stream for r in inside) / len(inside), 4)})
    return phases


def _pool(trace: Trace) -> tuple[list[str], list[tuple[str, str]]]:
    """Models best first and (label, project) of every key, header first then attempt lines."""
    pool = trace.header.pool
    used = {attempt.model for attempt in trace.attempts}
    # The client lists its embedding model in the pool; generate requests never fall to it.
    models = [model for model in pool.models if "embedding" not in model or model in used] \
        if pool is not None else []
    keys = [(key.label, key.project) for key in pool.keys] if pool is not None else []
    labels = {label for label, _ in keys}
    for attempt in trace.attempts:
        if attempt.model not in models:
            models.append(attempt.model)
        if attempt.key not in labels:
            keys.append((attempt.key, attempt.project))
            labels.add(attempt.key)
    return models, keys


def revealed_limits(trace: Trace) -> dict[tuple[str, str], dict[str, list[tuple[float, int]]]]:
    """What the 429s said: per (project, model), per dimension, the ``(sent time, value)`` of
    each change of value, oldest first (the first entry is the quota as first seen)."""
    seen: dict[tuple[str, str], dict[str, list[tuple[float, int]]]] = defaultdict(dict)
    for attempt in sorted(trace.attempts, key=_sent):
        if attempt.outcome not in _QUOTA_429:
            continue
        for violation in attempt.violations:
            if violation.dimension not in ("rpm", "tpm", "rpd") or not violation.value:
                continue
            values = seen[(attempt.project, attempt.model)].setdefault(violation.dimension, [])
            if not values or values[-1][1] != violation.value:
                values.append((_sent(attempt), violation.value))
    return dict(seen)


def _peaks(trace: Trace) -> dict[tuple[str, str], dict[str, int]]:
    """The most each (project, model) was admitted in one wall-clock minute (requests and input
    tokens) and in one Pacific day (requests): a quota below that cannot be its quota."""
    minutes: dict[tuple[str, str], Counter[float]] = defaultdict(Counter)
    tokens: dict[tuple[str, str], Counter[float]] = defaultdict(Counter)
    days: dict[tuple[str, str], Counter[float]] = defaultdict(Counter)
    for attempt in trace.attempts:
        if attempt.outcome not in _ADMITTED:
            continue
        wall = trace.header.start + _sent(attempt)
        group = (attempt.project, attempt.model)
        minutes[group][wall // 60] += 1
        tokens[group][wall // 60] += attempt.tokens_in or 0
        days[group][next_pacific_midnight(wall)] += 1
    return {group: {"rpm": max(minutes[group].values()), "tpm": max(tokens[group].values()),
                    "rpd": max(days[group].values())} for group in minutes}


_Limits = dict[tuple[str, str], dict[str, int]]
"""Known limits: (project, model) to {dimension: value}."""
_Revealed = dict[tuple[str, str], dict[str, list[tuple[float, int]]]]
"""What `revealed_limits` returns."""


def _quotas(trace: Trace, models: list[str], projects: list[str], t0: float,
            ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Top-level default quotas, per-project quotas, and quota changes.

    A value every project that revealed it agrees on is extended to the projects that did not
    reveal it, where their own traffic never went past it (`_peaks`); a value every project
    (but those that lack the model) ends up with is written once, as the top-level default.
    """
    revealed = revealed_limits(trace)
    quotas = _known_limits(trace, revealed, projects)
    zero = {(a.project, a.model) for a in trace.attempts if a.outcome == _K.QUOTA_ZERO.value}
    defaults = _extend_agreed(quotas, models, projects, zero, _peaks(trace))
    return defaults, _own_quotas(quotas, defaults, zero), _quota_changes(revealed, t0)


def _known_limits(trace: Trace, revealed: _Revealed, projects: list[str]) -> _Limits:
    """The first value each 429 revealed, then the limits the trace's header was told."""
    quotas: _Limits = defaultdict(dict)
    for group, dims in revealed.items():
        quotas[group].update({dim: values[0][1] for dim, values in dims.items()})
    pool = trace.header.pool
    for limit in pool.limits if pool is not None else ():
        for project in [limit.project] if limit.project is not None else projects:
            for dim in ("rpm", "tpm", "rpd"):
                if getattr(limit, dim) is not None:
                    quotas[(project, limit.model)].setdefault(dim, getattr(limit, dim))
    return quotas


def _extend_agreed(quotas: _Limits, models: list[str], projects: list[str],
                   zero: set[tuple[str, str]], peaks: _Limits,
                   ) -> dict[str, Any]:
    """Extend each agreed value to the silent projects it fits; returns the top-level defaults."""
    defaults: dict[str, Any] = {}
    for model in models:
        serving = [p for p in projects if (p, model) not in zero]
        for dim in ("rpm", "tpm", "rpd"):
            values = {quotas[(p, model)][dim] for p in serving if dim in quotas[(p, model)]}
            if len(values) != 1:
                continue
            value = values.pop()
            for project in serving:
                if peaks.get((project, model), {}).get(dim, 0) <= value:
                    quotas[(project, model)].setdefault(dim, value)
            if serving and all(quotas[(p, model)].get(dim) == value for p in serving):
                defaults.setdefault(model, {})[dim] = value
    return defaults


def _own_quotas(quotas: _Limits, defaults: dict[str, Any], zero: set[tuple[str, str]],
                ) -> dict[str, dict[str, Any]]:
    """Per project, the values that differ from the defaults (0: the model is not served)."""
    own: dict[str, dict[str, Any]] = defaultdict(dict)
    for (project, model), found in sorted(quotas.items()):
        rest = {dim: v for dim, v in sorted(found.items())
                if defaults.get(model, {}).get(dim) != v}
        if rest and (project, model) not in zero:
            own[project][model] = rest
    for project, model in sorted(zero):
        own[project][model] = 0
    return dict(own)


def _quota_changes(revealed: _Revealed, t0: float) -> list[dict[str, Any]]:
    """Every later value a 429 revealed, as a `[[quota_changes]]` entry, in time order."""
    changes = [{"at": round(max(0.0, at - t0), 6), "project": project, "model": model, dim: value}
               for (project, model), dims in sorted(revealed.items())
               for dim, values in sorted(dims.items()) for at, value in values[1:]]
    return sorted(changes, key=lambda change: change["at"])


def _quota_window(trace: Trace) -> str:
    """``"fixed"`` when the 429s' retry delays end on wall-clock minutes, else ``"sliding"``.

    A fixed window's delay is the time left in the wall-clock minute, so sending time plus
    delay lands on a whole minute (within the client's view of when it sent); a sliding
    window's lands anywhere.
    """
    ends = [(trace.header.start + _sent(a) + a.retry_delay) % 60.0 for a in trace.attempts
            if a.outcome == _K.RATE_LIMITED_MINUTE.value and a.retry_delay is not None]
    if not ends:
        return "fixed"
    on_minute = sum(1 for end in ends if min(end, 60.0 - end) < WINDOW_SLACK)
    return "fixed" if on_minute >= 0.8 * len(ends) else "sliding"


def _tiers(trace: Trace) -> dict[str, str]:
    """A project's tier as its 429s' quota ids name it (``-FreeTier`` ids: free)."""
    tiers: dict[str, str] = {}
    for attempt in trace.attempts:
        for violation in attempt.violations:
            tiers[attempt.project] = "free" if "FreeTier" in violation.quota_id else "paid"
    return tiers


def _models(trace: Trace, models: list[str]) -> list[dict[str, Any]]:
    out = []
    for model in models:
        answered = [a for a in trace.attempts if a.model == model and a.outcome in _ANSWERS]
        spec: dict[str, Any] = {"name": model}
        logs = [math.log(a.latency) for a in answered if a.latency > 0]
        if logs:
            spec["latency_median"] = round(math.exp(statistics.fmean(logs)), 6)
            spec["latency_sigma"] = round(statistics.pstdev(logs), 6) if len(logs) > 1 else 0.3
        sizes = [a.tokens_out for a in answered if a.tokens_out]
        if sizes:
            spec["output_tokens"] = _uniform_range(sizes)
        out.append(spec)
    return out


def _key_faults(trace: Trace, t0: float) -> list[dict[str, Any]]:
    """Revoked, leaked and refused keys from their first refusal; disabled projects."""
    faults: dict[tuple[str, str], float] = {}
    for attempt in trace.attempts:
        at = _sent(attempt)
        if attempt.outcome in _KEY_FAULTS:
            target = (_KEY_FAULTS[attempt.outcome].value, attempt.key)
        elif attempt.outcome == _K.PROJECT_DISABLED.value:
            target = (FaultKind.PROJECT_DISABLED.value, attempt.project)
        else:
            continue
        faults[target] = min(faults.get(target, at), at)
    out = []
    for (kind, who), at in sorted(faults.items(), key=lambda item: (item[1], item[0])):
        field = "project" if kind == FaultKind.PROJECT_DISABLED.value else "key"
        out.append({"kind": kind, field: who, "start": round(max(0.0, at - t0), 6)})
    return out


def _is_trial(outcome: str, stage: str) -> bool:
    if stage == "admitted":
        return outcome in _ADMITTED
    if stage == "quota":
        return outcome not in _BEFORE_QUOTA
    return True


def _window_faults(trace: Trace, models: list[str], t0: float, duration: float,
                   width: float) -> list[dict[str, Any]]:
    """Fault windows per (class, model) with the rate the attempts in them met."""
    bins = max(1, math.ceil(duration / width))
    out = []
    for outcome, (kind, stage) in _WINDOWED.items():
        for model in models:
            counts, trials = [0.0] * bins, [0.0] * bins
            hit = False
            for attempt in trace.attempts:
                if attempt.model != model or not _is_trial(attempt.outcome, stage):
                    continue
                index = min(bins - 1, max(0, int((_sent(attempt) - t0) // width)))
                trials[index] += 1
                if attempt.outcome == outcome:
                    counts[index] += 1
                    hit = True
            if not hit:
                continue
            for run in _merge(counts, trials, binomial=True):
                if run.events == 0:
                    continue
                # Bins without attempts join any run; the window spans those with attempts.
                tried = [i for i in range(run.first, run.end) if trials[i]]
                window_end = (tried[-1] + 1) * width
                fault: dict[str, Any] = {
                    "kind": kind.value, "model": model, "start": round(tried[0] * width, 6),
                    "probability": round(run.events / run.trials, 4)}
                if window_end < duration:
                    fault["end"] = round(window_end, 6)
                out.append(fault)
    return sorted(out, key=lambda fault: (fault["start"], fault["kind"], fault["model"]))


def _isoformat(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).isoformat()


def fit(trace: Trace, options: FitOptions | None = None) -> dict[str, Any]:
    """The data of a scenario file that replays `trace` (see the module docstring).

    Returns:
        A dict `sim.scenario.parse_scenario` reads and `sim.tomlwrite.dumps` writes.

    Raises:
        ValueError: the trace has no request at all.
    """
    options = options or FitOptions()
    requests = _requests(trace)
    if not requests:
        raise ValueError("the trace records no request: nothing to fit")
    models, keys = _pool(trace)
    projects: list[str] = list(dict.fromkeys(project for _, project in keys))
    # Whole minutes, so that the wall-clock minute windows stay where they were.
    t0 = 60.0 * math.floor(requests[0].arrival / 60.0)
    last = max(max(r.arrival for r in requests), max((_sent(a) for a in trace.attempts),
                                                      default=0.0))
    duration = max(1.0, math.ceil(last - t0 + 1e-9))
    deadline = _deadline(trace, options)
    workload = (_exact_workload(requests, models, deadline, t0) if options.exact_arrivals
                else _process_workload(requests, models, deadline, t0, duration,
                                       options.bin_width))
    defaults, overrides, changes = _quotas(trace, models, projects, t0)
    tiers = _tiers(trace)
    key_tables: dict[str, list[dict[str, str]]] = defaultdict(list)
    for label, project in keys:
        key_tables[project].append({"label": label, "secret": "replay-" + "".join(
            ch if ch.isalnum() or ch in "-_.#" else "_" for ch in label)})
    quota_errors = [a.latency for a in trace.attempts if a.outcome in _QUOTA_429]
    data: dict[str, Any] = {
        "name": options.name,
        "description": f"fitted to a trace of {len(requests)} requests and "
                       f"{len(trace.attempts)} attempts ({trace.header.source})",
        "start": _isoformat(trace.header.start + t0),
        "duration": duration,
        "seed": options.seed,
        "limits_known": bool(trace.header.pool and trace.header.pool.limits),
        "quota_window": _quota_window(trace),
        "error_latency": round(statistics.median(quota_errors), 6) if quota_errors else 0.1,
        "models": _models(trace, models),
        "quotas": defaults,
        "projects": [{"name": project, "tier": tiers.get(project, "free"),
                      "keys": key_tables[project],
                      **({"quotas": overrides[project]} if project in overrides else {})}
                     for project in projects],
        "workload": workload,
        "faults": _key_faults(trace, t0) + _window_faults(trace, models, t0, duration,
                                                          options.fault_bin),
    }
    if changes:
        data["quota_changes"] = changes
    return data


def fit_scenario(trace: Trace, options: FitOptions | None = None, *,
                 source: str = "<fitted>") -> Scenario:
    """`fit`, parsed into a `Scenario`."""
    data = fit(trace, options)
    return parse_scenario(data, source=source, name=data["name"])

