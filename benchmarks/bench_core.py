"""Cost of one scheduling cycle of the pure core as the pool grows (the selection must be O(log n)).

One cycle is what a driver does per request: ``submit`` + ``poll`` (dispatch) + ``complete``
(SUCCESS) + ``poll``.  It is measured at 10, 1,000 and 10,000 keys with 3 models while 10% of the
keys hold a request in flight, so that the heaps hold busy and idle lanes.  Also measured: the
memory (tracemalloc) of building a 10,000-key x 3-model `Scheduler`.

Run: ``python -m benchmarks.bench_core`` or ``python benchmarks/bench_core.py``.
Targets: a median under 10 µs per cycle at 10,000 keys, at most 2x the 10-key cost, < 20 MB.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `keysched` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keysched import PoolConfig
from keysched.driver import Dispatch, Outcome, OutcomeKind, Scheduler

MODELS = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"]
SIZES = [10, 1_000, 10_000]
START = 1_000_000.0
SUCCESS = Outcome(kind=OutcomeKind.SUCCESS, input_tokens=100, output_tokens=50)


def build(n_keys: int) -> Scheduler:
    """A pool of `n_keys` keys, each its own project, over three models."""
    config = PoolConfig(keys=[f"AIza-bench-{i:06d}" for i in range(n_keys)], models=MODELS)
    return Scheduler(config, rng=random.Random(0), wall_epoch=1_700_000_000.0,
                     record_events=False)


def busy_core(n_keys: int) -> Scheduler:
    """A core of `n_keys` keys with 10% of them (at least one) holding a request in flight."""
    core = build(n_keys)
    for _ in range(max(1, n_keys // 10)):
        core.submit(START)
    busy = [d for d in core.poll(START) if isinstance(d, Dispatch)]
    assert len(busy) == max(1, n_keys // 10)
    return core


def batch(core: Scheduler, cycles: int, now: float) -> tuple[float, float]:
    """Run `cycles` cycles from `now`; return (µs per cycle, the time reached)."""
    submit, poll, complete = core.submit, core.poll, core.complete
    start = time.perf_counter()
    for _ in range(cycles):
        now += 0.001
        submit(now)
        decision = poll(now)[0]
        complete(decision.attempt, SUCCESS, now)  # type: ignore[arg-type]  # a Dispatch
        poll(now)
    return (time.perf_counter() - start) / cycles * 1e6, now


def measure(sizes: list[int], cycles: int, repeats: int) -> dict[int, tuple[float, float]]:
    """(median, fastest) µs per cycle of each size over `repeats` batches of `cycles` cycles.

    The sizes take turns batch by batch, so that a burst of noise from the shared machine falls
    on all of them alike instead of on whichever size happened to run then.
    """
    cores = {n_keys: busy_core(n_keys) for n_keys in sizes}
    busy = {n_keys: core.in_flight for n_keys, core in cores.items()}
    clocks = dict.fromkeys(sizes, START)
    samples: dict[int, list[float]] = {n_keys: [] for n_keys in sizes}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for n_keys, core in cores.items():
                micros, clocks[n_keys] = batch(core, cycles, clocks[n_keys])
                samples[n_keys].append(micros)
    finally:
        gc.enable()
    assert all(core.in_flight == busy[n_keys] for n_keys, core in cores.items())
    return {n_keys: (statistics.median(values), min(values)) for n_keys, values in samples.items()}


def memory_mb(n_keys: int) -> float:
    """Peak traced memory, in MB, of building a Scheduler of `n_keys` keys x 3 models."""
    keys = [f"AIza-bench-{i:06d}" for i in range(n_keys)]
    gc.collect()
    tracemalloc.start()
    config = PoolConfig(keys=keys, models=MODELS)
    core = Scheduler(config, rng=random.Random(0), record_events=False)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del core
    return max(current, peak) / 1e6


def main() -> None:
    """Print the table: keys, median µs per cycle, ratio to the 10-key cost; then memory."""
    print(f"keysched core: submit + poll + complete(SUCCESS) + poll, {len(MODELS)} models, "
          f"10% of keys busy (Python {sys.version.split()[0]})")
    print(f"{'keys':>8} {'median µs/cycle':>16} {'ratio to 10 keys':>17} {'fastest batch':>14}")
    results = measure(SIZES, cycles=2_000, repeats=31)
    baseline = results[SIZES[0]][0]
    for n_keys, (median, fastest) in results.items():
        print(f"{n_keys:>8,} {median:>16.2f} {median / baseline:>16.2f}x {fastest:>14.2f}")
    print(f"memory to build 10,000 keys x {len(MODELS)} models: {memory_mb(10_000):.1f} MB "
          "(tracemalloc peak, config included)")


if __name__ == "__main__":
    main()
