"""Metrics of one run: pure functions from a `RunResult` to numbers.

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
  minute windows the world counts; summed over days and groups.
  ``None`` when some group is unlimited.
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

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from keysched.driver import OutcomeKind, next_pacific_midnight
from sim.engine import RunResult
from sim.scenario import FaultKind, Scenario

__all__ = ["Metrics", "capacity", "compute", "jain", "percentile", "revocation_times",
           "revocation_windows"]

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


def _windows(scenario: Scenario) -> list[int]:
    """The wall-clock minute windows that [0, duration) touches, one count per Pacific day.

    Pacific midnight falls on a minute boundary, so every window belongs to exactly one day.
    """
    epoch = scenario.start_epoch
    end = epoch + scenario.duration
    per_day = []
    t = epoch
    while t < end:
        day_end = min(next_pacific_midnight(t), end)
        per_day.append(math.ceil(day_end / 60.0) - math.floor(t / 60.0))
        t = day_end
    return per_day


def capacity(scenario: Scenario) -> float | None:
    """The most requests the scenario's quotas admit in its duration (``None``: unlimited).

    Per (project, model) group and per Pacific day, the least of the day's RPM and TPM windows
    and its RPD, summed over the days (a day's cap cannot lend to the next one).
    """
    used = {m for phase in scenario.workload for m in phase.models}
    smallest = min((phase.input_tokens[0] for phase in scenario.workload), default=1)
    days = _windows(scenario)
    total = 0.0
    for project in scenario.projects:
        for model in used:
            quota = project.quota(model)
            if quota is None:
                return None
            if quota.lacks_model:
                continue
            for minutes in days:
                bounds = [math.inf]
                if quota.rpm is not None:
                    bounds.append(quota.rpm * minutes)
                if quota.rpd is not None:
                    bounds.append(quota.rpd)
                if quota.tpm is not None:
                    bounds.append(quota.tpm // max(1, smallest) * minutes)
                bound = min(bounds)
                if math.isinf(bound):
                    return None
                total += bound
    return total


def _fairness(result: RunResult) -> float | None:
    scenario = result.scenario
    revoked = revocation_times(scenario)
    load = Counter(a.key for a in result.attempts)
    classes: dict[tuple[object, ...], list[int]] = {}
    for project in scenario.projects:
        n = len(project.keys)
        share = tuple((q.model, q.rpm and q.rpm / n, q.tpm and q.tpm / n, q.rpd and q.rpd / n)
                      for q in project.quotas)
        for key in project.keys:
            if key.label not in revoked:
                classes.setdefault(share, []).append(load[key.label])
    weighted = 0.0
    count = 0
    for loads in classes.values():
        if len(loads) < 2:
            continue
        index = jain(loads)
        assert index is not None
        weighted += index * len(loads)
        count += len(loads)
    return weighted / count if count else None


def _recovery(result: RunResult) -> float | None:
    worst: float | None = None
    for fault in result.scenario.faults:
        if fault.kind not in _WINDOWED or not fault.end < result.end_time:
            continue
        first = min((a.time for a in result.attempts if a.time >= fault.end
                     and a.outcome in _ANSWERS
                     and (fault.model is None or a.model == fault.model)), default=math.inf)
        delay = first - fault.end
        worst = delay if worst is None else max(worst, delay)
    return worst


def compute(result: RunResult) -> Metrics:
    """Every metric of one run (see the module docstring for the definitions)."""
    scenario = result.scenario
    requests = result.requests
    successes = [r for r in requests if r.ok]
    failures = Counter(r.reason for r in requests if not r.ok and r.reason is not None)
    outcomes = Counter(a.outcome for a in result.attempts)
    wasted = {kind: n for kind, n in outcomes.items() if kind not in _ANSWERS}
    wasted_total = sum(wasted.values())
    n_ok = len(successes)
    best = sum(1 for r in successes if r.model == r.models[0])
    cap = capacity(scenario)
    served_in_time = sum(1 for a in result.attempts
                         if a.outcome in _ANSWERS and a.time < scenario.duration)
    windows = revocation_windows(scenario)
    # A fault with an `end` restores the key: only attempts inside a window count.
    # (Most keys are never revoked: they skip the generator.)
    late = [a for a in result.attempts if a.key in windows
            and any(start <= a.time < end for start, end in windows[a.key])]
    after = Counter(a.key for a in late)
    # The client learns of a revocation from the refusal itself, not from a reset or a timeout
    # that happened to hit the revoked key first.
    learned: dict[str, float] = {}
    for a in late:
        if a.outcome in _REFUSALS:
            learned[a.key] = min(learned.get(a.key, a.end), a.end)
    return Metrics(
        scenario=scenario.name, policy=result.policy, seed=result.seed,
        requests=len(requests), successes=n_ok, failures=dict(failures),
        best_model_share=best / n_ok if n_ok else None,
        attempts=len(result.attempts),
        attempts_per_success=len(result.attempts) / n_ok if n_ok else None,
        wasted=wasted, wasted_total=wasted_total,
        waste_ratio=wasted_total / n_ok if n_ok else None,
        rate_limited=sum(n for kind, n in outcomes.items() if kind in _429),
        latency=_percentiles([r.end - r.arrival for r in successes]),
        queueing=_percentiles([r.first_dispatch - r.arrival for r in requests
                               if r.first_dispatch is not None]),
        fairness=_fairness(result),
        utilisation=served_in_time / cap if cap else None, capacity=cap,
        recovery_time=_recovery(result),
        after_revocation=sum(after.values()),
        after_revocation_max_per_key=max(after.values(), default=0),
        after_revocation_known=sum(1 for a in late if a.time >= learned.get(a.key, math.inf)),
        lost=result.lost)
