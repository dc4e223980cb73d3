"""Hash every simulator run event for event, to prove a refactoring changed no decision.

Each built-in scenario is run with every policy of ``python -m sim`` and three seeds (the
scenario's own, +1, +2), plus the speed benchmark's run (thousand-keys stretched 4x, the default
policy).  A run's hash covers, in order: every attempt (time, end, request, number, key label,
project, model, outcome), every request's end record, every pool event the core emitted, and the
world's counters.  Floats are hashed by ``repr``, which is exact.

    python scripts/sim_hashes.py            # compare against scripts/sim_hashes.txt
    python scripts/sim_hashes.py --write    # rewrite the list (only when a change is meant)
    python scripts/sim_hashes.py --jobs 2   # in parallel processes

The list was written before the renovation (issue 15) and must not change with it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import attrs

HASHES = Path(__file__).with_name("sim_hashes.txt")
SEED_OFFSETS = (0, 1, 2)
BENCH_COPIES = 4


def _runs() -> list[tuple[str, str, int]]:
    from sim.policies import POLICY_NAMES
    from sim.scenario import builtin_scenarios, load_scenario

    runs = []
    for name in builtin_scenarios():
        seed = load_scenario(name).seed
        for policy in POLICY_NAMES:
            runs.extend((name, policy, seed + offset) for offset in SEED_OFFSETS)
    runs.append((f"thousand-keys*{BENCH_COPIES}", "least-loaded", -1))
    return runs


def run_hash(run: tuple[str, str, int]) -> str:
    """The hash of one run's full trace."""
    from sim.engine import simulate
    from sim.scenario import load_scenario

    name, policy, seed = run
    if "*" in name:
        base, copies = name.split("*")
        scenario = load_scenario(base)
        scenario = attrs.evolve(
            scenario, duration=scenario.duration * int(copies),
            workload=tuple(attrs.evolve(p, end=p.end * int(copies)) for p in scenario.workload))
        seed = scenario.seed
    else:
        scenario = load_scenario(name)
    result = simulate(scenario, policy, seed)
    digest = hashlib.sha256()
    for row in result.trace():
        digest.update(repr(tuple(row)).encode())
        digest.update(b"\n")
    digest.update(repr(sorted(result.counters.items())).encode())
    digest.update(repr((result.end_time, result.lost)).encode())
    return digest.hexdigest()[:20]


def _label(run: tuple[str, str, int]) -> str:
    return f"{run[0]} {run[1]} {run[2]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the hash list")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--only", help="only runs whose label contains this")
    args = parser.parse_args()
    runs = [r for r in _runs() if args.only is None or args.only in _label(r)]
    with ProcessPoolExecutor(args.jobs) as pool:
        hashes = dict(zip(map(_label, runs), pool.map(run_hash, runs), strict=True))
    if args.write:
        HASHES.write_text("".join(f"{label} {h}\n" for label, h in hashes.items()))
        print(f"wrote {len(hashes)} hashes to {HASHES}")
        return 0
    expected = dict(line.rsplit(" ", 1) for line in HASHES.read_text().splitlines())
    differ = [label for label, h in hashes.items() if expected.get(label) != h]
    for label in differ:
        print(f"DIFFERS: {label} (expected {expected.get(label)}, got {hashes[label]})")
    print(f"{len(hashes) - len(differ)} of {len(hashes)} runs identical event for event")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
