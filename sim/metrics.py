"""Metrics of one run, computed as it goes: one small observer per metric.

Theory of operation
-------------------
`MetricsRecorder` is an observer of a run (`sim.records.Observer`): the driver tells it about
every attempt and every request end, and it hands each to one small object per metric
(`_Outcomes`, `_Delays`, `_Fairness`, `_Utilisation`, `_Recovery`, `_Revocation`), each
keeping only what its numbers need: counters, a count per key or per fault, and for the
percentiles every sample as a float in an `array` (exact, at 8 bytes a sample; a sketch would
save little at a million requests and change the printed figures).  At the end each metric
gives its fields of `Metrics`.  `compute(result)` feeds a recorded `RunResult` through the same
objects, so a run measured as it goes and one recorded in full give the same `Metrics`.

Definitions (decisions where the issue was silent are marked *):

- ``successes``: requests that got an answer; ``failures``: the others, by `FailReason` value.
- ``best_model_share``: successes answered by the request's own first model, over successes.
- ``attempts_per_success``: attempts over successes (``None`` with no success).
- ``wasted``: attempts that did not return an answer, by `OutcomeKind` value; ``wasted_total``
  their sum and ``waste_ratio`` that sum over successes.
- ``rate_limited``: 429s received (per-minute, per-day, ``limit: 0``, too large, bare).
- ``latency`` / ``queueing``: percentiles (nearest rank) of end-to-end time of *successful*
  requests*, and of the time from arrival to the first attempt of requests that made one.
- ``fairness``: Jain's index of attempts across keys of equal capacity*: keys are grouped by
  their project's per-key quota share (the quotas over the project's key count); keys that a
  fault revokes, leaks or disables are left out; each class's index is weighted by its size.
  1.0 means perfectly even; 1/n means one key took everything.
- ``utilisation``: successful attempts *started* within the scenario's duration, over the most
  its quotas allow in that duration*: for each (project, model) group of a model the workload
  uses and each Pacific day the run touches, the least of RPM x that day's minute windows, RPD,
  and (TPM // the smallest input size) x that day's minute windows, counting the wall-clock
  minute windows the world counts; summed over days and groups.  ``[[quota_changes]]`` are
  followed: each minute window counts under the quota in force in it, the larger of the two
  where a change falls inside it (see `capacity`).  ``None`` when some group is unlimited.
- ``recovery_time``: for each fault window that ends inside the run, the time from its end to
  the first successful attempt started after it on the fault's model (any model when the fault
  names none); the worst of them.  ``None`` with no such window; ``math.inf`` if it never
  recovered (written as ``null`` with ``recovered: false`` in JSON).
- ``after_revocation``: attempts sent to a key while a fault had it revoked (key revoked,
  leaked, or its project disabled, with probability 1; until the fault's ``end``, if it has
  one), total and the most on one key;
  ``after_revocation_known``: those sent after the key's first refusal (invalid, leaked,
  forbidden, project disabled; not a reset or timeout that hit it first) had come back (the
  attempts before it are the ones any client sends before it can know; with several requests
  in flight at once they can be more than one).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from keysched.driver import OutcomeKind, next_pacific_midnight
from sim.records import AttemptRecord, RequestRecord, RunResult, RunSummary
from sim.scenario import FaultKind, QuotaSpec, Scenario
from sim.world import Reply

__all__ = ["Metrics", "MetricsRecorder", "capacity", "compute", "jain", "percentile",
           "revocation_times", "revocation_windows"]

_429 = frozenset(k.value for k in (
    OutcomeKind.RATE_LIMITED_MINUTE, OutcomeKind.RATE_LIMITED_DAY, OutcomeKind.QUOTA_ZERO,
    OutcomeKind.TOO_LARGE_FOR_QUOTA, OutcomeKind.SHARED_CAPACITY))
_REFUSALS = frozenset(k.value for k in (
    OutcomeKind.KEY_INVALID, OutcomeKind.KEY_LEAKED, OutcomeKind.KEY_FORBIDDEN,
    OutcomeKind.PROJECT_DISABLED))
_ANSWERS = frozenset((OutcomeKind.SUCCESS.value, OutcomeKind.BLOCKED.value))
_REVOKING = (FaultKind.KEY_REVOKED, FaultKind.KEY_LEAKED, FaultKind.PROJECT_DISABLED)
_WINDOWED = frozenset({FaultKind.OVERLOADED, FaultKind.SERVER_ERROR, FaultKind.SHARED_429,
                       FaultKind.SLOW, FaultKind.TIMEOUT, FaultKind.DEADLINE_EXCEEDED,
                       FaultKind.RESET, FaultKind.STREAM_CUT, FaultKind.STREAM_ERROR,
                       FaultKind.TRUNCATED_BODY, FaultKind.GARBAGE_BODY})


@attrs.frozen(kw_only=True)
class Percentiles:
    """p50, p95 and p99 in seconds (``None`` with no samples)."""

    p50: float | None
    p95: float | None
    p99: float | None


@attrs.frozen(kw_only=True)
class Metrics:
    """The numbers of one (scenario, policy, seed) run; see the module docstring."""

    scenario: str
    policy: str
    seed: int
    requests: int
    successes: int
    failures: dict[str, int]
    best_model_share: float | None
    attempts: int
    attempts_per_success: float | None
    wasted: dict[str, int]
    wasted_total: int
    waste_ratio: float | None
    rate_limited: int
    latency: Percentiles
    queueing: Percentiles
    fairness: float | None
    utilisation: float | None
    capacity: float | None
    recovery_time: float | None
    after_revocation: int
    after_revocation_max_per_key: int
    after_revocation_known: int
    lost: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with a stable layout (documented in the README)."""
        recovered = self.recovery_time is None or math.isfinite(self.recovery_time)
        return {
            "scenario": self.scenario,
            "policy": self.policy,
            "seed": self.seed,
            "requests": self.requests,
            "successes": self.successes,
            "failures": dict(sorted(self.failures.items())),
            "lost": self.lost,
            "best_model_share": self.best_model_share,
            "attempts": self.attempts,
            "attempts_per_success": self.attempts_per_success,
            "wasted": dict(sorted(self.wasted.items())),
            "wasted_total": self.wasted_total,
            "waste_ratio": self.waste_ratio,
            "rate_limited": self.rate_limited,
            "latency": attrs.asdict(self.latency),
            "queueing": attrs.asdict(self.queueing),
            "fairness": self.fairness,
            "utilisation": self.utilisation,
            "capacity": self.capacity,
            "recovery_time": self.recovery_time if recovered else None,
            "recovered": recovered,
            "after_revocation": self.after_revocation,
            "after_revocation_max_per_key": self.after_revocation_max_per_key,
            "after_revocation_known": self.after_revocation_known,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`, ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _percentiles(values: Sequence[float]) -> Percentiles:
    ordered = sorted(values)
    return Percentiles(p50=percentile(ordered, 50), p95=percentile(ordered, 95),
                       p99=percentile(ordered, 99))


def jain(loads: Iterable[float]) -> float | None:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)``; 1.0 for all zeros, ``None`` if empty."""
    values = list(loads)
    if not values:
        return None
    squares = sum(x * x for x in values)
    if squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)


def revocation_windows(scenario: Scenario) -> dict[str, list[tuple[float, float]]]:
    """The [start, end) spans in which each key is revoked, leaked or its project disabled."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for fault in scenario.faults:
        if fault.kind not in _REVOKING or fault.probability < 1.0 or fault.model is not None:
            continue
        for project in scenario.projects:
            if fault.project is not None and fault.project != project.name:
                continue
            for key in project.keys:
                if fault.key is None or fault.key == key.label:
                    spans.setdefault(key.label, []).append((fault.start, fault.end))
    return spans


def revocation_times(scenario: Scenario) -> dict[str, float]:
    """When each key is first revoked, leaked or has its project disabled, by key label."""
    return {label: min(start for start, _ in spans)
            for label, spans in revocation_windows(scenario).items()}


def _days(scenario: Scenario) -> list[tuple[float, float]]:
    """The run's [start, end) pieces, one per Pacific day it touches, in Unix seconds."""
    epoch = scenario.start_epoch
    end = epoch + scenario.duration
    days = []
    t = epoch
    while t < end:
        day_end = min(next_pacific_midnight(t), end)
        days.append((t, day_end))
        t = day_end
    return days


def _quota_spans(scenario: Scenario, project: str, base: QuotaSpec,
                 ) -> list[tuple[float, QuotaSpec]]:
    """(from when, in Unix seconds; the quota in force) for one group, `[[quota_changes]]` applied.

    A change's fields that are ``None`` keep their value, as the world applies them.
    """
    spans = [(scenario.start_epoch, base)]
    for change in sorted(scenario.quota_changes, key=lambda c: c.at):
        if change.model != base.model or change.project not in (None, project):
            continue
        current = spans[-1][1]
        spans.append((scenario.start_epoch + change.at, attrs.evolve(
            current, **{dim: getattr(change, dim) for dim in ("rpm", "tpm", "rpd")
                        if getattr(change, dim) is not None})))
    return spans


def _day_bound(spans: list[tuple[float, QuotaSpec]], day: tuple[float, float],
               smallest: int) -> float:
    """The most one group admits in one day (``math.inf``: nothing bounds it).

    Span by span: its minute windows under its RPM and TPM, with the day's running total held
    to the span's RPD.  Admitting as much as possible early never lowers what the day ends
    with, so this greedy count is the most.  Pacific midnight falls on a minute boundary, so
    every window belongs to exactly one day.  A window a change falls inside admits the larger
    of the two per-minute limits: the world keeps the minute's count and checks it against the
    new limit from the change on.
    """
    day_start, day_end = day
    admitted = 0.0
    previous = 0.0  # the per-minute limit of the span before (0: none, or the model lacked)
    ends = [at for at, _ in spans[1:]] + [math.inf]
    for (at, quota), until in zip(spans, ends, strict=True):
        start, end = max(at, day_start), min(until, day_end)
        if start >= end:
            continue
        if quota.lacks_model:
            previous = 0.0
            continue
        first = math.floor(start / 60.0) if start == day_start else math.ceil(start / 60.0)
        minutes = max(0, math.ceil(end / 60.0) - first)
        per_minute = min(math.inf if quota.rpm is None else quota.rpm,
                         math.inf if quota.tpm is None else quota.tpm // max(1, smallest))
        in_windows = per_minute * minutes if minutes else 0.0
        if start != day_start and start % 60.0:  # the window counted with the span before
            in_windows += max(0.0, per_minute - previous)
        previous = per_minute
        if quota.rpd is None:
            admitted += in_windows
        else:
            admitted = max(admitted, min(admitted + in_windows, quota.rpd))
    return admitted


def capacity(scenario: Scenario) -> float | None:
    """The most requests the scenario's quotas admit in its duration (``None``: unlimited).

    Per (project, model) group and per Pacific day, the least of the day's RPM and TPM windows
    and its RPD, summed over the days (a day's cap cannot lend to the next one).  Quotas follow
    the scenario's `[[quota_changes]]` (a tier upgrade raises the capacity from its time on).
    """
    used = {m for phase in scenario.workload for m in phase.models}
    smallest = min((phase.input_tokens[0] for phase in scenario.workload), default=1)
    days = _days(scenario)
    total = 0.0
    for project in scenario.projects:
        for model in used:
            quota = project.quota(model)
            if quota is None:
                return None
            spans = _quota_spans(scenario, project.name, quota)
            for day in days:
                bound = _day_bound(spans, day, smallest)
                if math.isinf(bound):
                    return None
                total += bound
    return total


class _Metric:
    """One metric's share of the recorder: told every attempt and request end, gives fields.

    A metric that does not override `attempt` (or `request_ended`), or whose `watches` says
    it has nothing to watch, is not called for them.
    """

    def watches(self) -> bool:
        """Whether this run can change the metric (a scenario without faults has no recovery)."""
        return True

    def attempt(self, a: AttemptRecord) -> None:
        """An attempt was sent (its answer and end are in `a`)."""

    def request_ended(self, r: RequestRecord) -> None:
        """A request ended."""

    def fields(self, run: RunSummary) -> dict[str, Any]:
        """This metric's fields of `Metrics`, at the end of `run`."""
        raise NotImplementedError


class _Outcomes(_Metric):
    """Requests, answers, failures, attempts, waste and 429s: counters."""

    def __init__(self) -> None:
        self.requests = self.successes = self.best = 0
        self.failures: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()

    def attempt(self, a: AttemptRecord) -> None:
        self.outcomes[a.outcome] += 1

    def request_ended(self, r: RequestRecord) -> None:
        self.requests += 1
        if r.ok:
            self.successes += 1
            self.best += r.model == r.models[0]
        elif r.reason is not None:
            self.failures[r.reason] += 1

    def fields(self, run: RunSummary) -> dict[str, Any]:
        n_ok = self.successes
        attempts = sum(self.outcomes.values())
        wasted = {kind: n for kind, n in self.outcomes.items() if kind not in _ANSWERS}
        wasted_total = sum(wasted.values())
        return {
            "requests": self.requests, "successes": n_ok, "failures": dict(self.failures),
            "best_model_share": self.best / n_ok if n_ok else None,
            "attempts": attempts, "attempts_per_success": attempts / n_ok if n_ok else None,
            "wasted": wasted, "wasted_total": wasted_total,
            "waste_ratio": wasted_total / n_ok if n_ok else None,
            "rate_limited": sum(n for kind, n in self.outcomes.items() if kind in _429)}


class _Delays(_Metric):
    """Latency of answered requests and queueing of sent ones: exact percentiles."""

    def __init__(self) -> None:
        self.latency = array("d")
        self.queueing = array("d")

    def request_ended(self, r: RequestRecord) -> None:
        if r.ok:
            self.latency.append(r.end - r.arrival)
        if r.first_dispatch is not None:
            self.queueing.append(r.first_dispatch - r.arrival)

    def fields(self, run: RunSummary) -> dict[str, Any]:
        return {"latency": _percentiles(self.latency), "queueing": _percentiles(self.queueing)}


class _Fairness(_Metric):
    """Jain's index of attempts over keys of equal capacity: a count per key."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.load: Counter[str] = Counter()

    def attempt(self, a: AttemptRecord) -> None:
        self.load[a.key] += 1

    def fields(self, run: RunSummary) -> dict[str, Any]:
        revoked = revocation_times(self.scenario)
        classes: dict[tuple[object, ...], list[int]] = {}
        for project in self.scenario.projects:
            n = len(project.keys)
            share = tuple((q.model, q.rpm and q.rpm / n, q.tpm and q.tpm / n, q.rpd and q.rpd / n)
                          for q in project.quotas)
            for key in project.keys:
                if key.label not in revoked:
                    classes.setdefault(share, []).append(self.load[key.label])
        weighted = 0.0
        count = 0
        for loads in classes.values():
            if len(loads) < 2:
                continue
            index = jain(loads)
            assert index is not None
            weighted += index * len(loads)
            count += len(loads)
        return {"fairness": weighted / count if count else None}


class _Utilisation(_Metric):
    """Answers started within the duration, over the quotas' capacity: one counter."""

    def __init__(self, scenario: Scenario) -> None:
        self.duration = scenario.duration
        self.capacity = capacity(scenario)
        self.served = 0

    def attempt(self, a: AttemptRecord) -> None:
        if a.outcome in _ANSWERS and a.time < self.duration:
            self.served += 1

    def fields(self, run: RunSummary) -> dict[str, Any]:
        cap = self.capacity
        return {"utilisation": self.served / cap if cap else None, "capacity": cap}


class _Recovery(_Metric):
    """From each fault window's end to the next answer on its model: the first such answer."""

    def __init__(self, scenario: Scenario) -> None:
        self.faults = [f for f in scenario.faults if f.kind in _WINDOWED]
        self.first = [math.inf] * len(self.faults)

    def watches(self) -> bool:
        return bool(self.faults)

    def attempt(self, a: AttemptRecord) -> None:
        if a.outcome not in _ANSWERS:
            return
        for i, fault in enumerate(self.faults):
            if (a.time >= fault.end and a.time < self.first[i]
                    and (fault.model is None or a.model == fault.model)):
                self.first[i] = a.time

    def fields(self, run: RunSummary) -> dict[str, Any]:
        worst: float | None = None
        for fault, first in zip(self.faults, self.first, strict=True):
            if fault.end < run.end_time:
                delay = first - fault.end
                worst = delay if worst is None else max(worst, delay)
        return {"recovery_time": worst}


class _Revocation(_Metric):
    """Attempts sent to revoked keys: their times, per revoked key (the few keys a fault names),
    and when each key's first refusal came back."""

    def __init__(self, scenario: Scenario) -> None:
        self.windows = revocation_windows(scenario)
        self.times: dict[str, list[float]] = {}
        self.learned: dict[str, float] = {}

    def watches(self) -> bool:
        return bool(self.windows)

    def attempt(self, a: AttemptRecord) -> None:
        spans = self.windows.get(a.key)
        # A fault with an `end` restores the key: only attempts inside a window count.
        if spans is None or not any(start <= a.time < end for start, end in spans):
            return
        self.times.setdefault(a.key, []).append(a.time)
        # The client learns of a revocation from the refusal itself, not from a reset or a
        # timeout that happened to hit the revoked key first.
        if a.outcome in _REFUSALS:
            self.learned[a.key] = min(self.learned.get(a.key, a.end), a.end)

    def fields(self, run: RunSummary) -> dict[str, Any]:
        known = 0
        for key, times in self.times.items():
            learned = self.learned.get(key, math.inf)
            ordered = sorted(times)
            known += len(ordered) - bisect.bisect_left(ordered, learned)
        return {"after_revocation": sum(len(t) for t in self.times.values()),
                "after_revocation_max_per_key": max(map(len, self.times.values()), default=0),
                "after_revocation_known": known}


class MetricsRecorder:
    """An observer computing every metric of one run as it goes (see the module docstring).

    Args:
        scenario: the scenario the run plays.
    """

    def __init__(self, scenario: Scenario) -> None:
        self._metrics: tuple[_Metric, ...] = (
            _Outcomes(), _Delays(), _Fairness(scenario), _Utilisation(scenario),
            _Recovery(scenario), _Revocation(scenario))
        # Only the metrics that listen: a run calls these once per attempt or request.
        watching = [m for m in self._metrics if m.watches()]
        self._on_attempt = [m for m in watching if type(m).attempt is not _Metric.attempt]
        self._on_request = [m for m in watching
                            if type(m).request_ended is not _Metric.request_ended]

    def attempt(self, record: AttemptRecord, reply: Reply | None = None) -> None:
        """An attempt was sent (`reply` is not needed)."""
        for metric in self._on_attempt:
            metric.attempt(record)

    def request_ended(self, record: RequestRecord) -> None:
        """A request ended."""
        for metric in self._on_request:
            metric.request_ended(record)

    def metrics(self, run: RunSummary | RunResult) -> Metrics:
        """The `Metrics` of `run`, whose attempts and request ends this recorder was told."""
        fields: dict[str, Any] = {}
        summary = run if isinstance(run, RunSummary) else _summary(run)
        for metric in self._metrics:
            fields.update(metric.fields(summary))
        return Metrics(scenario=run.scenario.name, policy=run.policy, seed=run.seed,
                       lost=run.lost, **fields)


def _summary(result: RunResult) -> RunSummary:
    return RunSummary(scenario=result.scenario, policy=result.policy, seed=result.seed,
                      end_time=result.end_time, events=result.events, counters=result.counters,
                      lost=result.lost, submitted=len(result.requests) + result.lost)


def compute(result: RunResult) -> Metrics:
    """Every metric of one recorded run (see the module docstring for the definitions)."""
    recorder = MetricsRecorder(result.scenario)
    for attempt in result.attempts:
        recorder.attempt(attempt)
    for request in result.requests:
        recorder.request_ended(request)
    return recorder.metrics(result)
