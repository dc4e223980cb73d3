"""Plain-text tables of metrics, for the terminal."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from sim.metrics import Metrics

__all__ = ["COLUMNS", "LEGEND", "format_table"]


def _num(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "never"
    return format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


COLUMNS: tuple[tuple[str, Callable[[Metrics], str]], ...] = (
    ("policy", lambda m: m.policy),
    ("reqs", lambda m: str(m.requests)),
    ("ok", lambda m: str(m.successes)),
    ("failed", lambda m: str(m.requests - m.successes)),
    ("best", lambda m: _pct(m.best_model_share)),
    ("att/ok", lambda m: _num(m.attempts_per_success, ".2f")),
    ("wasted", lambda m: str(m.wasted_total)),
    ("waste/ok", lambda m: _pct(m.waste_ratio)),
    ("429s", lambda m: str(m.rate_limited)),
    ("p50 s", lambda m: _num(m.latency.p50, ".2f")),
    ("p95 s", lambda m: _num(m.latency.p95, ".2f")),
    ("p99 s", lambda m: _num(m.latency.p99, ".2f")),
    ("queue p95 s", lambda m: _num(m.queueing.p95, ".2f")),
    ("fairness", lambda m: _num(m.fairness, ".3f")),
    ("util", lambda m: _pct(m.utilisation)),
    ("recovery s", lambda m: _num(m.recovery_time, ".1f")),
    ("to revoked", lambda m: str(m.after_revocation)),
)
"""The table's columns: header and how to render a cell."""

LEGEND = """\
columns: reqs requests; ok answered; failed not answered; best share of answers from the
request's first model; att/ok attempts per answer; wasted attempts with no answer (waste/ok:
per answer); 429s rate-limit answers; p50/p95/p99 s end-to-end latency of answered requests;
queue p95 s arrival to first attempt; fairness Jain's index of attempts over equal keys (1 =
even); util share of the quota capacity used; recovery s from a fault's end to the next answer
from its model (the worst); to revoked attempts sent to a key while it was revoked.  Times are
virtual seconds; definitions in sim/metrics.py."""
"""What each column of `format_table` means, printed under the default comparison."""


def format_table(rows: Sequence[Metrics]) -> str:
    """A table of `rows`, grouped under one heading per scenario, columns aligned."""
    headers = [name for name, _ in COLUMNS]
    cells = [[render(m) for _, render in COLUMNS] for m in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True)))

    out: list[str] = []
    current = None
    for metrics, row in zip(rows, cells, strict=True):
        if metrics.scenario != current:
            current = metrics.scenario
            if out:
                out.append("")
            out.append(f"== {current}")
            out.append(line(headers))
        out.append(line(row))
    return "\n".join(out)
