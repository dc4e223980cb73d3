"""Record the real client's outcome trace of a scenario, as ``KeyedClient(record=...)`` writes it.

The client runs against the fake Gemini server on 127.0.0.1 in the scenario's virtual time
(``tests/recording.py``: the simulator's arrivals, submitted at their times), so the trace is
what a real pool with that traffic would have recorded, and the same on every machine.

    python scripts/record_trace.py demo sim/traces/demo.jsonl   # the built-in demo trace
    python scripts/record_trace.py my-pool.toml outcomes.jsonl

``python -m sim replay demo`` replays the built-in one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main() -> int:
    """Record the trace named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", help="a built-in scenario name or a scenario TOML file")
    parser.add_argument("output", help="the trace file to write (JSON lines)")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))  # the loopback driver and the virtual-time loop live there
    import virtual_loop
    from recording import record

    from keysched.trace import load
    from sim.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    output = Path(args.output)
    virtual_loop.run(lambda: record(scenario, output))
    trace = load(output)
    print(f"wrote {output}: {len(trace.requests)} requests, {len(trace.attempts)} attempts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
