"""Write the two figures of ``notebooks/key_utilization.ipynb`` that the README shows, as PNG.

    python notebooks/export_figures.py [OUT_DIR]      # default: docs/

It runs the notebook's scenario (built-in ``demo``) and policies through the simulator with the
same public functions and writes:

- ``OUT_DIR/demo-cooldowns.png``: when each key, lane, quota group or model of the pool was
  cooling down or disabled, and why, under keysched's default ``least-loaded`` policy;
- ``OUT_DIR/demo-comparison.png``: the headline metrics of the three policies side by side.

The runs are deterministic (the scenario's seed), so the files change only when the simulator,
the core or the plots do.  Needs matplotlib (``pip install -e ".[sim]"``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sim.engine import simulate
from sim.metrics import compute
from sim.plots import plot_comparison, plot_cooldowns
from sim.scenario import load_scenario

SCENARIO = "demo"
POLICIES = ("least-loaded", "round-robin", "router-like")
DPI = 100


def export(folder: Path) -> list[Path]:
    """Write the README figures to `folder` (created if missing); return their paths."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    scenario = load_scenario(SCENARIO)
    results = {policy: simulate(scenario, policy) for policy in POLICIES}
    figures = {
        f"{SCENARIO}-cooldowns.png": plot_cooldowns(results["least-loaded"], reasons=True),
        f"{SCENARIO}-comparison.png": plot_comparison([compute(r) for r in results.values()]),
    }
    written = []
    for name, fig in figures.items():
        path = folder / name
        # No embedded timestamp, so re-running without changes leaves the files identical.
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """``export_figures.py [OUT_DIR]``."""
    if len(argv) > 1 or (argv and argv[0] in ("-h", "--help")):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    for path in export(Path(argv[0] if argv else "docs")):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
