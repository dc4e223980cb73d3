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

from keysched import Outcome, OutcomeKind, PoolConfig, Scheduler
from keysched._decisions import Dispatch

MODELS = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"]
SIZES = [10, 1_000, 10_000]
SUCCESS = Outcome(kind=OutcomeKind.SUCCESS, input_tokens=100, output_tokens=50)


def build(n_keys: int) -> Scheduler:
    """A pool of `n_keys` keys, each its own project, over three models."""
    config = PoolConfig(keys=[f"AIza-bench-{i:06d}" for i in range(n_keys)], models=MODELS)
    return Scheduler(config, rng=random.Random(0), wall_epoch=1_700_000_000.0,
                     record_events=False)


def measure(n_keys: int, cycles: int, repeats: int) -> float:
    """Median µs per cycle over `repeats` batches of `cycles` cycles, 10% of keys kept busy."""
    core = build(n_keys)
    now = 1_000_000.0
    # Keep 10% of the keys busy for the whole run (at least one).
    for _ in range(max(1, n_keys // 10)):
        core.submit(now)
    busy = [d for d in core.poll(now) if isinstance(d, Dispatch)]
    assert len(busy) == max(1, n_keys // 10)
    submit, poll, complete = core.submit, core.poll, core.complete
    samples = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(cycles):
                now += 0.001
                submit(now)
                decision = poll(now)[0]
                complete(decision.attempt, SUCCESS, now)  # type: ignore[union-attr]
                poll(now)
            samples.append((time.perf_counter() - start) / cycles * 1e6)
    finally:
        gc.enable()
    assert core.in_flight == len(busy)
    return statistics.median(samples)


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
    print(f"{'keys':>8} {'median µs/cycle':>16} {'ratio to 10 keys':>17}")
    baseline = None
    for n_keys in SIZES:
        median = measure(n_keys, cycles=2_000, repeats=15)
        baseline = baseline or median
        print(f"{n_keys:>8,} {median:>16.2f} {median / baseline:>16.2f}x")
    print(f"memory to build 10,000 keys x {len(MODELS)} models: {memory_mb(10_000):.1f} MB "
          "(tracemalloc peak, config included)")


if __name__ == "__main__":
    main()
