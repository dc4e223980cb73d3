"""Figures of runs: per-key utilization, cooldown and disabled spans, model tiers, queueing
delay, comparisons.

Every function takes a run result (or, for `plot_cooldowns` and `plot_key_attempts`, also a real
client's `keysched.PoolSnapshot`; `plot_cooldowns` also a list of `keysched.PoolEvent`) and
returns a matplotlib ``Figure`` with a title, axis labels with units and a legend wherever more
than one series is drawn; `save_all` writes the standard set to a folder.  matplotlib is
imported only when a function is called (with the Agg backend unless one is already chosen), so
``import sim`` does not need it, and no function calls ``plt.show()``.

Decisions where the issue was silent:

- Queueing delay is `sim.metrics`' definition: from a request's arrival to its first attempt,
  for the requests that made one.  Requests that never made one are drawn apart (their wait
  until they failed), never mixed into the percentiles.
- A snapshot has no history: `plot_cooldowns` draws its spans from the snapshot's moment
  (x = 0) to each cooldown's end, so a client's monotonic clock never shows up on the axis;
  `plot_key_attempts` draws its per-lane counters.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from keysched import LaneState, PoolEvent, PoolSnapshot

if TYPE_CHECKING:
    from sim.engine import RunResult
    from sim.metrics import Metrics

__all__ = ["SUMMARY", "plot_comparison", "plot_cooldowns", "plot_key_attempts",
           "plot_key_utilization", "plot_model_share", "plot_overview",
           "plot_queueing_distribution", "plot_queueing_over_time", "save_all", "save_summary"]


def _pyplot() -> Any:
    # Optional dependency, loaded on first use.  If pyplot is already loaded (a notebook), its
    # backend stays; otherwise Agg, which needs no display.
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bin(result: RunResult, bin_seconds: float | None) -> tuple[float, int]:
    """(width, count) of the time bins: by default about 60 bins of a round width (1, 2 or 5
    times a power of ten seconds), so that a label reads "per 5 s", never "per 3.33895 s"."""
    end = max(result.end_time, result.scenario.duration, 1e-9)
    size = bin_seconds or _round_up(max(1.0, end / 60))
    return size, max(1, math.ceil(end / size))


def _round_up(value: float) -> float:
    """The smallest of 1, 2 and 5 times a power of ten that is at least `value` (> 0)."""
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value * (1 - 1e-9))


def plot_key_utilization(result: RunResult, *, bin_seconds: float | None = None,
                         max_keys: int | None = None) -> Any:
    """Heatmap of attempts per key over time (keys by row, in file order; time bins by column).

    Args:
        result: a run.
        bin_seconds: the width of a time bin (default: about 1/60 of the run, rounded).
        max_keys: show only this many keys, the busiest (the axis label says so); by default
            every key, a pixel row each in a pool of a thousand.
    """
    plt = _pyplot()
    size, bins = _bin(result, bin_seconds)
    labels = [k.label for k in result.scenario.keys]
    counts = {label: [0] * bins for label in labels}
    for a in result.attempts:
        counts[a.key][min(bins - 1, int(a.time / size))] += 1
    ylabel = "key"
    if max_keys is not None and len(labels) > max_keys:
        ylabel = f"key: the {max_keys:,} busiest of {len(labels):,}"
        labels = sorted(labels, key=lambda k: -sum(counts[k]))[:max_keys]
    grid = [counts[k] for k in labels]
    fig, ax = plt.subplots(figsize=(10, max(3.0, min(12.0, 0.2 * len(labels) + 1.5))))
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                      extent=(0, bins * size, len(labels) - 0.5, -0.5))
    fig.colorbar(image, ax=ax, label=f"attempts per {size:g} s")
    if len(labels) <= 40:
        ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Per-key utilization: {result.scenario.name}, {result.policy}")
    fig.tight_layout()
    return fig


_SPAN_KINDS = {"lane_cooled": "lane cooling", "group_cooled": "quota group cooling",
               "model_cooled": "model cooling", "key_disabled": "key disabled",
               "group_unavailable": "group unavailable", "model_unavailable": "model unavailable"}
_COLOURS = {"lane cooling": "tab:orange", "quota group cooling": "tab:blue",
            "model cooling": "tab:purple", "key disabled": "tab:red",
            "group unavailable": "tab:gray", "model unavailable": "black"}


_HATCHES = ("", "////", "xxxx", "....", "\\\\\\\\", "++++", "oooo", "----")

_Span = tuple[str, float, float, str, str]
"""(row, start, end, kind, reason) of one cooling or disabled span."""


def _spans(source: RunResult | PoolSnapshot | Sequence[PoolEvent],
           ) -> tuple[list[_Span], str, str, float, float]:
    """Spans from a run, a snapshot or events; a title; the x label; the time axis bounds."""
    spans: list[_Span] = []
    if isinstance(source, PoolSnapshot):
        # Relative to the snapshot: a client's clock is monotonic seconds since some boot.
        now, end = source.now, 1.0
        for lane in source.lanes:
            row = f"{lane.key} / {lane.model}"
            reason = lane.reason or "unknown"
            if lane.state is LaneState.COOLING and lane.cooldown_until is not None:
                spans.append((row, 0.0, lane.cooldown_until - now, "lane cooling", reason))
                end = max(end, lane.cooldown_until - now)
            elif lane.state is LaneState.DISABLED:
                spans.append((row, 0.0, math.inf, "key disabled", reason))
            elif lane.state is LaneState.UNAVAILABLE:
                spans.append((row, 0.0, math.inf, "group unavailable", reason))
        return (spans, "Lanes not serving at the snapshot (cooling: until its end)",
                "seconds after the snapshot (s)", 0.0, end * 1.05)
    offset = 0.0
    if isinstance(source, Sequence):
        # A client's events are on its monotonic clock: count from the first event instead.
        # (The cast: a PoolSnapshot is a tuple too, so mypy widens the items to `object`.)
        events, title = list(cast("Sequence[PoolEvent]", source)), "Cooldown and disabled spans"
        xlabel = "seconds since the first event (s)"
        finite = [e.until for e in events if e.until is not None and math.isfinite(e.until)]
        offset = min((e.time for e in events), default=0.0)
        first = 0.0
        end = max([*finite, *(e.time for e in events), offset + 1.0]) - offset
    else:
        events = list(source.events)
        title = f"Cooldown and disabled spans: {source.scenario.name}, {source.policy}"
        xlabel, first = "virtual time (s)", 0.0
        end = max(source.end_time, source.scenario.duration)
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
        until = e.until - offset if e.until is not None else math.inf
        spans.append((row, e.time - offset, until, kind, e.reason))
    return spans, title, xlabel, first, end


def plot_cooldowns(source: RunResult | PoolSnapshot | Sequence[PoolEvent], *,
                   max_rows: int = 60, reasons: bool = False) -> Any:
    """Horizontal bars: when each key, lane, quota group or model was cooling or disabled.

    Colour says what was benched (a lane, a quota group, a model, a key); with `reasons`, the
    hatching and the legend also say why (the outcome that caused it, e.g.
    ``rate_limited_minute``, ``overloaded``, ``key_invalid``).

    Args:
        source: a run result, a real client's `PoolSnapshot` (spans from the snapshot, at x = 0,
            to each cooldown's end), or a list of `PoolEvent`.
        max_rows: show at most this many rows (the first to be affected).
        reasons: also tell the reasons apart (legend entries ``kind: reason``).
    """
    plt = _pyplot()
    spans, title, xlabel, first, end = _spans(source)
    rows: list[str] = []
    for row, *_ in spans:
        if row not in rows:
            rows.append(row)
    rows = rows[:max_rows]
    index = {row: i for i, row in enumerate(rows)}
    hatch_of: dict[tuple[str, str], str] = {}
    per_kind: dict[str, int] = {}
    fig, ax = plt.subplots(figsize=(10, max(3.0, min(14.0, 0.25 * len(rows) + 1.5))))
    seen: set[str] = set()
    for row, start, stop, kind, reason in spans:
        if row not in index:
            continue
        stop = min(stop, end)
        hatch = ""
        label = kind
        if reasons:
            if (kind, reason) not in hatch_of:
                hatch_of[kind, reason] = _HATCHES[per_kind.get(kind, 0) % len(_HATCHES)]
                per_kind[kind] = per_kind.get(kind, 0) + 1
            hatch = hatch_of[kind, reason]
            label = f"{kind}: {reason}"
        ax.barh(index[row], max(stop - start, (end - first) / 500), left=start, height=0.7,
                color=_COLOURS[kind], hatch=hatch, edgecolor="white" if hatch else None,
                linewidth=0, label=None if label in seen else label)
        seen.add(label)
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlim(first, end)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("key / lane / quota group")
    ax.set_title(title if rows else title + " (none)")
    if seen:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  title="what: why" if reasons else None)
    fig.tight_layout()
    return fig


def plot_model_share(result: RunResult, *, bin_seconds: float | None = None) -> Any:
    """Stacked share of successful answers by model tier over time."""
    plt = _pyplot()
    size, bins = _bin(result, bin_seconds)
    models = _best_first(result.scenario)
    counts = {m: [0] * bins for m in models}
    for a in result.attempts:
        if a.outcome == "success":
            counts[a.model][min(bins - 1, int(a.time / size))] += 1
    totals = [sum(counts[m][i] for m in models) or 1 for i in range(bins)]
    # Stacked bars, one per time bin: a bin with no success stays empty instead of being
    # interpolated across.
    xs = [i * size for i in range(bins)]
    fig, ax = plt.subplots(figsize=(10, 4))
    bottom = [0.0] * bins
    # The best model on top of each stack, as it is on top of the legend; colours follow the
    # preference, so the best model has the same colour in every figure.
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    for m in reversed(models):
        share = [counts[m][i] / totals[i] for i in range(bins)]
        ax.bar(xs, share, width=size, bottom=bottom, align="edge", label=m, linewidth=0,
               color=colours[m])
        bottom = [b + v for b, v in zip(bottom, share, strict=True)]
    ax.set_xlim(0, bins * size)
    ax.set_ylim(0, 1)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel(f"share of successes per {size:g} s")
    ax.set_title(f"Model tier serving over time: {result.scenario.name}, {result.policy}")
    if len(models) > 1:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize="small", title="model, best first")
    fig.tight_layout()
    return fig


def _best_first(scenario: Any) -> list[str]:
    """The models in the order the workload prefers them (a request's first model is its best),
    then any model the workload never asks for, in file order."""
    order: list[str] = []
    for phase in scenario.workload:
        order += [m for m in phase.models if m not in order]
    return order + [m for m in scenario.models_best_first if m not in order]


def _queueing(result: RunResult) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(arrival, delay to the first attempt) of requests sent; (arrival, wait) of the others."""
    sent = [(r.arrival, r.first_dispatch - r.arrival) for r in result.requests
            if r.first_dispatch is not None]
    unsent = [(r.arrival, r.end - r.arrival) for r in result.requests if r.first_dispatch is None]
    return sent, unsent


def _nearest_rank(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def plot_queueing_over_time(result: RunResult, *, bin_seconds: float | None = None) -> Any:
    """Queueing delay (arrival to first attempt) of each request against its arrival time, with
    the median and p95 per time bin; requests never sent are marked with their wait until they
    failed.

    Args:
        result: a run.
        bin_seconds: the width of a time bin for the percentile lines (default: 1/60 of the run).
    """
    plt = _pyplot()
    size, bins = _bin(result, bin_seconds)
    sent, unsent = _queueing(result)
    fig, ax = plt.subplots(figsize=(10, 4))
    if sent:
        ax.scatter([a for a, _ in sent], [d for _, d in sent], s=8, alpha=0.35,
                   color="tab:blue", label="a request that was sent")
    by_bin: dict[int, list[float]] = {}
    for arrival, delay in sent:
        by_bin.setdefault(min(bins - 1, int(arrival / size)), []).append(delay)
    # One step per bin; a bin without a request sent is a gap, not a line across it.
    xs = [i * size for i in range(bins + 1)]
    for q, style in ((50, "-"), (95, "--")):
        ys = [_nearest_rank(by_bin[i], q) if i in by_bin else math.nan for i in range(bins)]
        ax.step(xs, [*ys, ys[-1]], style, where="post", color="black", linewidth=1.2,
                label=f"{'median' if q == 50 else 'p95'} per {size:g} s bin")
    if unsent:
        ax.scatter([a for a, _ in unsent], [w for _, w in unsent], s=18, marker="x",
                   color="tab:red", label="never sent (waited, then failed)")
    if not any(d > 0 for _, d in sent) and not unsent:
        ax.text(0.5, 0.5, "no request had to wait", transform=ax.transAxes, ha="center",
                va="center", color="gray")
    ax.set_xlim(0, bins * size)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("arrival time (virtual s)")
    ax.set_ylabel("queueing delay (s)")
    ax.set_title(f"Queueing delay over time: {result.scenario.name}, {result.policy}")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def plot_queueing_distribution(results: Sequence[RunResult]) -> Any:
    """The distribution (ECDF) of queueing delay, one line per run (policy), in percent of the
    requests that were sent; the legend gives each run's p95 and how many were never sent."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    longest = max((d for r in results for _, d in _queueing(r)[0]), default=0.0) or 1.0
    for result in results:
        sent, unsent = _queueing(result)
        delays = sorted(d for _, d in sent)
        if not delays:
            ax.plot([], [], label=f"{result.policy} (no request sent)")
            continue
        n = len(delays)
        xs = [0.0, *delays, longest * 1.02]
        ys = [0.0, *(100 * (i + 1) / n for i in range(n)), 100.0]
        label = f"{result.policy} (p95 {_nearest_rank(delays, 95):.1f} s"
        label += f", {len(unsent)} never sent)" if unsent else ")"
        ax.step(xs, ys, where="post", label=label)
    ax.set_xlim(0, longest * 1.02)
    ax.set_ylim(0, 101)
    ax.set_xlabel("queueing delay, arrival to first attempt (s)")
    ax.set_ylabel("requests sent within it (%)")
    scenario = results[0].scenario.name if results else ""
    ax.set_title(f"Queueing delay distribution: {scenario}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


_ANSWERED = frozenset({"success", "blocked"})


def plot_key_attempts(source: RunResult | PoolSnapshot, *, max_keys: int = 60) -> Any:
    """Horizontal stacked bars: attempts per key, answered, failed (and, for a snapshot, still
    in flight), so one glance shows whether equal keys did equal work.

    Args:
        source: a run result, or a real client's `PoolSnapshot` (its per-lane counters).
        max_keys: show at most this many keys (the busiest).
    """
    plt = _pyplot()
    counts: dict[str, list[int]] = {}  # key -> [answered, failed, in flight]
    if isinstance(source, PoolSnapshot):
        for lane in source.lanes:
            row = counts.setdefault(lane.key, [0, 0, 0])
            row[0] += lane.succeeded
            row[1] += lane.failed
            row[2] += max(0, lane.dispatched - lane.succeeded - lane.failed)
        title = (f"Attempts per key: client snapshot ({source.requests_submitted} requests "
                 f"submitted)")
    else:
        for key in source.scenario.keys:
            counts[key.label] = [0, 0, 0]
        for a in source.attempts:
            counts[a.key][0 if a.outcome in _ANSWERED else 1] += 1
        title = f"Attempts per key: {source.scenario.name}, {source.policy}"
    labels = list(counts)
    if max_keys is not None and len(labels) > max_keys:
        labels = sorted(labels, key=lambda k: -sum(counts[k]))[:max_keys]
    fig, ax = plt.subplots(figsize=(10, max(3.0, min(12.0, 0.3 * len(labels) + 1.5))))
    left = [0] * len(labels)
    names = ("answered", "failed", "in flight")
    colours = ("tab:green", "tab:red", "tab:gray")
    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        values = [counts[k][i] for k in labels]
        if i == 2 and not any(values):
            continue
        ax.barh(range(len(labels)), values, left=left, color=colour, label=name)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("attempts (count)")
    ax.set_ylabel("key")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # off the bars
    fig.tight_layout()
    return fig


_SERIES: tuple[tuple[str, Callable[[Metrics], float | None]], ...] = (
    ("utilisation", lambda m: m.utilisation),
    ("wasted per success", lambda m: m.waste_ratio),
    ("best-model share", lambda m: m.best_model_share),
    ("success rate", lambda m: m.successes / m.requests if m.requests else None))
"""The bars of a comparison, each a fraction shown in percent."""


def _draw_comparison(ax: Any, metrics: Sequence[Metrics]) -> None:
    """Grouped bars (one group per policy, one bar per series) into `ax`."""
    width = 0.8 / len(_SERIES)
    for i, (name, get) in enumerate(_SERIES):
        values = [100 * min(get(m) or 0.0, 2.0) for m in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], values, width, label=name,
               color=f"C{i}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], [m.policy for m in metrics])


def _legend_beside(ax: Any) -> None:
    # Beside the axes, never over a bar (a legend inside covered the tallest ones).
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


def plot_comparison(metrics: Sequence[Metrics]) -> Any:
    """Grouped bars per policy: capacity utilisation, wasted attempts per success, best-model
    share, and success rate (all in percent), for one scenario's runs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    _draw_comparison(ax, metrics)
    ax.set_xlabel("policy")
    ax.set_ylabel("percent (wasted capped at 200%)")
    scenario = metrics[0].scenario if metrics else ""
    ax.set_title(f"Policy comparison: {scenario}")
    _legend_beside(ax)
    fig.tight_layout()
    return fig


def plot_overview(metrics: Sequence[Metrics]) -> Any:
    """`plot_comparison` for every scenario of `metrics` at once: one panel per scenario."""
    plt = _pyplot()
    by_scenario: dict[str, list[Metrics]] = {}
    for m in metrics:
        by_scenario.setdefault(m.scenario, []).append(m)
    columns = 2
    rows = max(1, math.ceil(len(by_scenario) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(13, 2.6 * rows + 0.8), sharey=True,
                             squeeze=False)
    panels = [ax for row in axes for ax in row]
    for ax, (scenario, rows_of) in zip(panels, by_scenario.items(), strict=False):
        _draw_comparison(ax, rows_of)
        ax.set_title(scenario, fontsize="medium")
        ax.tick_params(axis="x", labelsize="x-small", labelrotation=15)
    for ax in panels[len(by_scenario):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("percent")
    fig.suptitle("Policy comparison on every scenario (wasted per success capped at 200%)")
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small")
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))  # room for the shared legend and the title
    return fig


Progress = Callable[[str], None]
"""Told the name of each figure as it is written (to show progress)."""


class _Folder:
    """Where figures go: writes each as a PNG and keeps the paths written."""

    def __init__(self, folder: str | Path, progress: Progress | None) -> None:
        self.plt = _pyplot()
        self.path = Path(folder)
        self.path.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.written: list[Path] = []

    def save(self, fig: Any, name: str) -> None:
        path = self.path / name
        fig.savefig(path, dpi=90)
        self.plt.close(fig)
        self.written.append(path)
        if self.progress is not None:
            self.progress(name)


def save_all(results: Sequence[RunResult], metrics: Sequence[Metrics], folder: str | Path,
             *, progress: Progress | None = None) -> list[Path]:
    """Write every figure for `results` (and one comparison per scenario) as PNGs to `folder`.

    Per run: key utilization, cooldown and disabled spans with their reasons, model tiers.
    """
    out = _Folder(folder, progress)
    for result in results:
        stem = f"{result.scenario.name}-{result.policy}"
        out.save(plot_key_utilization(result), f"{stem}-utilization.png")
        out.save(plot_cooldowns(result, reasons=True), f"{stem}-cooldowns.png")
        out.save(plot_model_share(result), f"{stem}-models.png")
    by_scenario: dict[str, list[Metrics]] = {}
    for m in metrics:
        by_scenario.setdefault(m.scenario, []).append(m)
    for scenario, rows in by_scenario.items():
        out.save(plot_comparison(rows), f"{scenario}-comparison.png")
    return out.written


SUMMARY = (("revoked-keys", "cooldowns"), ("overload-storm", "models"),
           ("saturation", "utilization"))
"""The default comparison's few figures besides the overview: (scenario, figure) of the default
policy, each the figure that tells its scenario's story."""


def save_summary(results: Sequence[RunResult], metrics: Sequence[Metrics], folder: str | Path,
                 *, policy: str = "least-loaded", progress: Progress | None = None) -> list[Path]:
    """Write the overview of every run and the `SUMMARY` figures of `policy` to `folder`."""
    out = _Folder(folder, progress)
    out.save(plot_overview(metrics), "comparison.png")
    runs = {(r.scenario.name, r.policy): r for r in results}
    draw: dict[str, Callable[[RunResult], Any]] = {
        "cooldowns": lambda r: plot_cooldowns(r, reasons=True),
        "models": plot_model_share, "utilization": plot_key_utilization}
    for scenario, figure in SUMMARY:
        result = runs.get((scenario, policy))
        if result is not None:
            out.save(draw[figure](result), f"{scenario}-{policy}-{figure}.png")
    return out.written
