"""The overload cooldown escalates per failed probe, not per 503 that was already in flight."""

from __future__ import annotations

import random

from keysched import Dispatch, Outcome, OutcomeKind, PoolConfig, RetryPolicy, Scheduler

T0 = 2_000_000.0
RETRY = RetryPolicy(overload_cooldown=2.0, overload_cooldown_cap=20.0, jitter=0.0)


def _dispatches(core: Scheduler, now: float) -> list[Dispatch]:
    return [d for d in core.poll(now) if isinstance(d, Dispatch)]


def _model_cooldown(core: Scheduler, now: float, model: str = "m1") -> float | None:
    return core.snapshot(now).lane("key#1", model).cooldown_until


def test_concurrent_503s_cool_the_model_once_then_probes_escalate() -> None:
    """Three 503s in flight together give one base cooldown; each failed probe then doubles it."""
    core = Scheduler(PoolConfig(keys=["a", "b", "c"], models=["m1", "m2"], retry=RETRY),
                     rng=random.Random(1))
    for _ in range(3):
        core.submit(T0)
    sent = _dispatches(core, T0)
    assert {d.model for d in sent} == {"m1"}
    for i, dispatch in enumerate(sent):
        core.complete(dispatch.attempt, Outcome(kind=OutcomeKind.OVERLOADED), T0 + 1 + i * 0.1)
    # The last 503 came back at T0 + 1.2: one base cooldown from there, not 2 * 2 * 2.
    assert _model_cooldown(core, T0 + 1.2) == T0 + 1.2 + 2.0
    retries = _dispatches(core, T0 + 1.2)
    assert {d.model for d in retries} == {"m2"}  # fell back a tier at once
    for dispatch in retries:
        core.complete(dispatch.attempt, Outcome(kind=OutcomeKind.SUCCESS), T0 + 1.5)
    core.poll(T0 + 1.5)

    probe_at = T0 + 3.2  # the cooldown is over: the next request probes m1
    core.submit(probe_at)
    [probe] = _dispatches(core, probe_at)
    assert probe.model == "m1"
    core.complete(probe.attempt, Outcome(kind=OutcomeKind.OVERLOADED), probe_at + 1)
    assert _model_cooldown(core, probe_at + 1) == probe_at + 1 + 4.0  # the probe failed: doubled
