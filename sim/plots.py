"""Figures of runs: per-key utilization, cooldown and disabled spans, model tiers, comparisons.

Every function takes a run result (or, for `plot_cooldowns`, also a real client's
`keysched.PoolSnapshot` or list of `keysched.PoolEvent`) and returns a matplotlib ``Figure``;
`save_all` writes the standard set to a folder.  matplotlib is imported only when a function is
called (with the Agg backend unless one is already chosen), so ``import sim`` does not need it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keysched import LaneState, PoolEvent, PoolSnapshot

if TYPE_CHECKING:
    from sim.engine import RunResult
    from sim.metrics import Metrics

__all__ = ["plot_comparison", "plot_cooldowns", "plot_key_utilization", "plot_model_share",
           "save_all"]


def _pyplot() -> Any:
    # Optional dependency, loaded on first use.  If pyplot is already loaded (a notebook), its
    # backend stays; otherwise Agg, which needs no display.
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bin(result: RunResult, bin_seconds: float | None) -> tuple[float, int]:
    end = max(result.end_time, result.scenario.duration, 1e-9)
    size = bin_seconds or max(1.0, end / 60)
    return size, max(1, math.ceil(end / size))


def plot_key_utilization(result: RunResult, *, bin_seconds: float | None = None,
                         max_keys: int = 200) -> Any:
    """Heatmap of attempts per key over time (keys by row, time bins by column).

    Args:
        result: a run.
        bin_seconds: the width of a time bin (default: 1/60 of the run).
        max_keys: show at most this many keys (the busiest), so big pools stay readable.
    """
    plt = _pyplot()
    size, bins = _bin(result, bin_seconds)
    labels = [k.label for k in result.scenario.keys]
    counts = {label: [0] * bins for label in labels}
    for a in result.attempts:
        counts[a.key][min(bins - 1, int(a.time / size))] += 1
    if len(labels) > max_keys:
        labels = sorted(labels, key=lambda k: -sum(counts[k]))[:max_keys]
    grid = [counts[k] for k in labels]
    fig, ax = plt.subplots(figsize=(10, max(3.0, min(12.0, 0.2 * len(labels) + 1.5))))
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                      extent=(0, bins * size, len(labels) - 0.5, -0.5))
    fig.colorbar(image, ax=ax, label=f"attempts per {size:g} s")
    if len(labels) <= 40:
        ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("key")
    ax.set_title(f"Per-key utilization: {result.scenario.name}, {result.policy}")
    fig.tight_layout()
    return fig


_SPAN_KINDS = {"lane_cooled": "lane cooling", "group_cooled": "quota group cooling",
               "model_cooled": "model cooling", "key_disabled": "key disabled",
               "group_unavailable": "group unavailable", "model_unavailable": "model unavailable"}
_COLOURS = {"lane cooling": "tab:orange", "quota group cooling": "tab:blue",
            "model cooling": "tab:purple", "key disabled": "tab:red",
            "group unavailable": "tab:gray", "model unavailable": "black"}


def _spans(source: RunResult | PoolSnapshot | Sequence[PoolEvent],
           ) -> tuple[list[tuple[str, float, float, str]], str, float]:
    """(row, start, end, kind) spans from events or a snapshot; a title; the time axis end."""
    if isinstance(source, PoolSnapshot):
        spans = []
        end = source.now
        for lane in source.lanes:
            row = f"{lane.key} / {lane.model}"
            if lane.state is LaneState.COOLING and lane.cooldown_until is not None:
                spans.append((row, source.now, lane.cooldown_until, "lane cooling"))
                end = max(end, lane.cooldown_until)
            elif lane.state is LaneState.DISABLED:
                spans.append((row, source.now, math.inf, "key disabled"))
            elif lane.state is LaneState.UNAVAILABLE:
                spans.append((row, source.now, math.inf, "group unavailable"))
        return spans, f"Lanes not serving at t={source.now:g} s", max(end, source.now + 1)
    if isinstance(source, Sequence):
        events, title = list(source), "Cooldown and disabled spans"
        end = max((e.until or e.time for e in events), default=1.0)
    else:
        events = list(source.events)
        title = f"Cooldown and disabled spans: {source.scenario.name}, {source.policy}"
        end = max(source.end_time, source.scenario.duration)
    spans = []
    for e in events:
        kind = _SPAN_KINDS.get(e.kind)
        if kind is None:
            continue
        if e.key is not None:
            row = e.key if e.kind == "key_disabled" else f"{e.key} / {e.model}"
        elif e.project is not None:
            row = f"{e.project} / {e.model}"
        else:
            row = f"model {e.model}"
        spans.append((row, e.time, e.until if e.until is not None else math.inf, kind))
    return spans, title, end


def plot_cooldowns(source: RunResult | PoolSnapshot | Sequence[PoolEvent], *,
                   max_rows: int = 60) -> Any:
    """Horizontal bars: when each key, lane, quota group or model was cooling or disabled.

    Args:
        source: a run result, a real client's `PoolSnapshot` (spans from its time to each
            cooldown's end), or a list of `PoolEvent` (``client.take_events()``).
        max_rows: show at most this many rows (the first to be affected).
    """
    plt = _pyplot()
    spans, title, end = _spans(source)
    rows: list[str] = []
    for row, *_ in spans:
        if row not in rows:
            rows.append(row)
    rows = rows[:max_rows]
    index = {row: i for i, row in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(10, max(3.0, min(14.0, 0.25 * len(rows) + 1.5))))
    seen: set[str] = set()
    for row, start, stop, kind in spans:
        if row not in index:
            continue
        stop = min(stop, end)
        ax.barh(index[row], max(stop - start, end / 500), left=start, height=0.7,
                color=_COLOURS[kind], label=None if kind in seen else kind)
        seen.add(kind)
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlim(0, end)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("key / lane / quota group")
    ax.set_title(title if rows else title + " (none)")
    if len(seen) > 1:
        ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def plot_model_share(result: RunResult, *, bin_seconds: float | None = None) -> Any:
    """Stacked share of successful answers by model tier over time."""
    plt = _pyplot()
    size, bins = _bin(result, bin_seconds)
    models = list(result.scenario.models_best_first)
    counts = {m: [0] * bins for m in models}
    for a in result.attempts:
        if a.outcome == "success":
            counts[a.model][min(bins - 1, int(a.time / size))] += 1
    totals = [sum(counts[m][i] for m in models) or 1 for i in range(bins)]
    xs = [(i + 0.5) * size for i in range(bins)]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.stackplot(xs, [[counts[m][i] / totals[i] for i in range(bins)] for m in models],
                 labels=models)
    ax.set_ylim(0, 1)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel(f"share of successes per {size:g} s")
    ax.set_title(f"Model tier serving over time: {result.scenario.name}, {result.policy}")
    if len(models) > 1:
        ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_comparison(metrics: Sequence[Metrics]) -> Any:
    """Grouped bars per policy: capacity utilisation, wasted attempts per success, best-model
    share, and success rate (all in percent), for one scenario's runs."""
    plt = _pyplot()
    series: tuple[tuple[str, Callable[[Metrics], float | None]], ...] = (
        ("utilisation", lambda m: m.utilisation),
              ("wasted per success", lambda m: m.waste_ratio),
              ("best-model share", lambda m: m.best_model_share),
              ("success rate", lambda m: m.successes / m.requests if m.requests else None))
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(series)
    for i, (name, get) in enumerate(series):
        values = [100 * min(get(m) or 0.0, 2.0) for m in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], values, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], [m.policy for m in metrics])
    ax.set_xlabel("policy")
    ax.set_ylabel("percent (wasted capped at 200%)")
    scenario = metrics[0].scenario if metrics else ""
    ax.set_title(f"Policy comparison: {scenario}")
    ax.legend()
    fig.tight_layout()
    return fig


def save_all(results: Sequence[RunResult], metrics: Sequence[Metrics], folder: str | Path) -> \
        list[Path]:
    """Write every figure for `results` (and one comparison per scenario) as PNGs to `folder`."""
    plt = _pyplot()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    for result in results:
        stem = f"{result.scenario.name}-{result.policy}"
        save(plot_key_utilization(result), f"{stem}-utilization.png")
        save(plot_cooldowns(result), f"{stem}-cooldowns.png")
        save(plot_model_share(result), f"{stem}-models.png")
    by_scenario: dict[str, list[Metrics]] = {}
    for m in metrics:
        by_scenario.setdefault(m.scenario, []).append(m)
    for scenario, rows in by_scenario.items():
        save(plot_comparison(rows), f"{scenario}-comparison.png")
    return written
