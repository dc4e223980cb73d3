"""What an interpreted front for a compiled `Scheduler` would cost per call (a prototype, issue 18).

Compiled with mypyc (``scripts/build_compiled_core.py``), the core refuses an ill-typed argument
(``submit(now="x")``) with a bare ``TypeError`` before its own checks run, where the pure core
raises a `UsageError` naming the value.  A front kept interpreted, delegating to the compiled
class, would give the errors back.  Two shapes of it are priced here against the bare class, on
bench_core's cycle (``submit`` + ``poll`` + ``complete`` + ``poll``), the three taking turns:

- `ForwardingFront` delegates and re-checks the arguments in Python only when the compiled code
  raised ``TypeError`` (it does so on entry, or while resolving model names, before any state
  changes); the happy path pays one more call.
- `CheckingFront` checks the argument types in Python before every call, as the pure core does.

Neither is in the package: they cover the cycle's three methods only, and their messages are
close to, not the same as, the pure core's.  The table is made with and without the compiled
core; for figures that do not depend on the load, count instructions (callgrind) of a run with
``--cycles N`` and of one with ``--cycles 0``.

    python -m benchmarks.bench_front [--keys 10] [--cycles 2000] [--repeats 31]
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.bench_core import MODELS, START, batch
from keysched import PoolConfig, UsageError
from keysched.driver import Decision, Dispatch, Outcome, Scheduler


def _check_time(now: object) -> None:
    if isinstance(now, bool) or not isinstance(now, int | float) or math.isnan(now):
        raise UsageError(f"time must be a number of seconds, got now={now!r}")


def _check_submit(now: object, models: object, input_tokens: object) -> None:
    _check_time(now)
    if isinstance(input_tokens, bool) or not isinstance(input_tokens, int):
        raise UsageError(f"input_tokens must be an integer >= 0, got {input_tokens!r}")
    if models is not None and not (isinstance(models, Sequence)
                                   and all(isinstance(m, str) for m in models)):
        raise UsageError(f"models must be model names, got {models!r}")


def _check_complete(outcome: object, now: object) -> None:
    if not isinstance(outcome, Outcome):
        raise UsageError(f"outcome must be an Outcome, got {type(outcome).__name__}")
    _check_time(now)


class ForwardingFront:
    """Delegates; explains a compiled ``TypeError`` as the `UsageError` it stands for."""

    __slots__ = ("_core",)

    def __init__(self, config: PoolConfig, **options: Any) -> None:
        self._core = Scheduler(config, **options)

    def submit(self, now: float, *, models: Sequence[str] | None = None,
               input_tokens: int = 0) -> int:
        try:
            return self._core.submit(now, models=models, input_tokens=input_tokens)
        except TypeError:
            _check_submit(now, models, input_tokens)
            raise

    def poll(self, now: float) -> list[Decision]:
        try:
            return self._core.poll(now)
        except TypeError:
            _check_time(now)
            raise

    def complete(self, attempt: int, outcome: Outcome, now: float) -> None:
        try:
            self._core.complete(attempt, outcome, now)
        except TypeError:
            _check_complete(outcome, now)
            raise


class CheckingFront(ForwardingFront):
    """Checks every argument in Python, then delegates."""

    __slots__ = ()

    def submit(self, now: float, *, models: Sequence[str] | None = None,
               input_tokens: int = 0) -> int:
        _check_submit(now, models, input_tokens)
        return self._core.submit(now, models=models, input_tokens=input_tokens)

    def poll(self, now: float) -> list[Decision]:
        _check_time(now)
        return self._core.poll(now)

    def complete(self, attempt: int, outcome: Outcome, now: float) -> None:
        _check_complete(outcome, now)
        self._core.complete(attempt, outcome, now)


FRONTS: dict[str, Any] = {"bare": Scheduler, "forwarding": ForwardingFront,
                          "checking": CheckingFront}


def busy(front: Any, n_keys: int) -> Any:
    """bench_core's busy core (10% of the keys in flight) behind `front`."""
    config = PoolConfig(keys=[f"AIza-bench-{i:06d}" for i in range(n_keys)], models=MODELS)
    core = front(config, rng=random.Random(0), wall_epoch=1_700_000_000.0, record_events=False)
    for _ in range(max(1, n_keys // 10)):
        core.submit(START)
    assert len([d for d in core.poll(START) if isinstance(d, Dispatch)]) == max(1, n_keys // 10)
    return core


def errors(front: Any) -> list[str]:
    """What each ill-typed call raises through `front`."""
    core, seen = busy(front, 10), []
    calls = [lambda: core.submit("x"), lambda: core.poll("x"),
             lambda: core.submit(START + 1, input_tokens="3"),
             lambda: core.submit(START + 1, models=(["m"],))]
    for call in calls:
        try:
            call()
            seen.append("nothing raised")
        except Exception as error:  # reported, whatever it is
            seen.append(f"{type(error).__name__}: {error}")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--only", choices=sorted(FRONTS), help="one front, one batch (callgrind)")
    args = parser.parse_args()
    if args.only:
        batch(busy(FRONTS[args.only], args.keys), args.cycles, START)
        return
    cores = {name: busy(front, args.keys) for name, front in FRONTS.items()}
    clocks = dict.fromkeys(FRONTS, START)
    samples: dict[str, list[float]] = {name: [] for name in FRONTS}
    gc.collect()
    gc.disable()
    try:
        for _ in range(args.repeats):
            for name, core in cores.items():
                micros, clocks[name] = batch(core, args.cycles, clocks[name])
                samples[name].append(micros)
    finally:
        gc.enable()
    compiled = not str(sys.modules[Scheduler.__module__].__file__).endswith(".py")
    print(f"{'compiled' if compiled else 'pure'} core, {args.keys:,} keys: µs per cycle")
    for name, values in samples.items():
        print(f"{name:>11}: median {statistics.median(values):6.2f}, fastest {min(values):6.2f}")
        for line in errors(FRONTS[name]):
            print(f"{'':>13}{line}")


if __name__ == "__main__":
    main()
