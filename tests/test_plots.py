"""The simulator's figures (`sim.plots`): every figure has a title, labelled axes with units
and a legend where it draws more than one series; snapshots of a real client plot too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from keysched import LaneSnapshot, LaneState, PoolSnapshot
from sim import plots
from sim.engine import RunResult, simulate
from sim.metrics import compute
from sim.scenario import load_scenario


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def demo() -> list[RunResult]:
    scenario = load_scenario("demo")
    return [simulate(scenario, policy) for policy in ("least-loaded", "router-like")]


@pytest.fixture(scope="module")
def queued() -> list[RunResult]:
    """A run where requests wait: every daily quota is spent until midnight Pacific."""
    scenario = load_scenario("daily-exhaustion")
    return [simulate(scenario, policy) for policy in ("least-loaded", "round-robin")]


def _axes(fig: Any) -> Any:
    """The main axes (a colorbar, if any, comes after it)."""
    return fig.axes[0]


def check_labelled(fig: Any, *, x_unit: str, y_unit: str | None, legend: bool) -> Any:
    """Title, axis labels (with the unit in parentheses where the axis has one), legend."""
    ax = _axes(fig)
    assert ax.get_title().strip()
    assert f"({x_unit})" in ax.get_xlabel()
    assert ax.get_ylabel().strip()
    if y_unit is not None:
        assert f"({y_unit})" in ax.get_ylabel()
    if legend:
        assert ax.get_legend() is not None
        assert len(ax.get_legend().get_texts()) >= 2
    return ax


def snapshot() -> PoolSnapshot:
    """A client's snapshot: its clock is monotonic seconds since boot, far from zero."""
    now = 50_000.0

    def lane(key: str, model: str, state: LaneState, reason: str | None = None,
             until: float | None = None, counts: tuple[int, int, int] = (0, 0, 0)) -> LaneSnapshot:
        return LaneSnapshot(key=key, project=key.split("-")[0], model=model, state=state,
                            reason=reason, cooldown_until=until, in_flight=0,
                            dispatched=counts[0], succeeded=counts[1], failed=counts[2])

    lanes = (
        lane("a-1", "pro", LaneState.COOLING, "rate_limited_minute", now + 30.0, (5, 4, 1)),
        lane("a-1", "flash", LaneState.AVAILABLE, counts=(3, 3, 0)),
        lane("a-2", "pro", LaneState.COOLING, "overloaded", now + 8.0, (4, 2, 2)),
        lane("b-1", "pro", LaneState.DISABLED, "key_invalid", counts=(2, 1, 1)),
        lane("b-1", "flash", LaneState.DISABLED, "key_invalid", counts=(1, 0, 0)),
    )
    return PoolSnapshot(now=now, lanes=lanes, groups=(), waiting=0, in_flight=1,
                        requests_submitted=9, requests_finished=8, requests_failed=0,
                        requests_cancelled=0)


def test_queueing_over_time_is_labelled_and_marks_requests_never_sent(
        queued: list[RunResult]) -> None:
    """Dots per request, median and p95 lines, crosses for requests that were never sent."""
    fig = plots.plot_queueing_over_time(queued[0], bin_seconds=60)
    ax = check_labelled(fig, x_unit="virtual s", y_unit="s", legend=True)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("median" in t for t in texts)
    assert any("p95" in t for t in texts)
    never_sent = sum(1 for r in queued[0].requests if r.first_dispatch is None)
    assert never_sent > 0
    assert any("never sent" in t for t in texts)
    assert ax.get_ylim()[1] > 10  # requests did wait


def test_queueing_over_time_says_so_when_nobody_waited() -> None:
    """A pool with spare capacity: the figure says no request had to wait."""
    fig = plots.plot_queueing_over_time(simulate(load_scenario("steady"), "least-loaded"))
    ax = check_labelled(fig, x_unit="virtual s", y_unit="s", legend=True)
    assert any("no request had to wait" in t.get_text() for t in ax.texts)


def test_queueing_distribution_has_one_line_per_run(queued: list[RunResult]) -> None:
    """One ECDF per policy, in percent, each named with its p95 in the legend."""
    fig = plots.plot_queueing_distribution(queued)
    ax = check_labelled(fig, x_unit="s", y_unit="%", legend=True)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.split(" ")[0] for t in texts] == ["least-loaded", "round-robin"]
    assert all("p95" in t for t in texts)
    assert len(ax.get_lines()) == 2
    assert ax.get_ylim()[1] >= 100


def test_key_attempts_from_a_run_counts_every_attempt(demo: list[RunResult]) -> None:
    """Answered plus failed bars add up to the run's attempts, one row per key."""
    result = demo[0]
    fig = plots.plot_key_attempts(result)
    ax = check_labelled(fig, x_unit="count", y_unit=None, legend=True)
    assert [t.get_text() for t in ax.get_yticklabels()] == [k.label for k in result.scenario.keys]
    total = sum(patch.get_width() for patch in ax.patches)
    assert total == len(result.attempts)


def test_key_attempts_from_a_client_snapshot() -> None:
    """A snapshot's lane counters per key; attempts still in flight get their own series."""
    fig = plots.plot_key_attempts(snapshot())
    ax = check_labelled(fig, x_unit="count", y_unit=None, legend=True)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["answered", "failed", "in flight"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a-1", "a-2", "b-1"]
    assert "snapshot" in ax.get_title()


def test_cooldowns_with_reasons_name_the_cause(demo: list[RunResult]) -> None:
    """`reasons=True`: legend entries are ``what: why``, e.g. the revoked key's key_invalid."""
    fig = plots.plot_cooldowns(demo[0], reasons=True)
    ax = check_labelled(fig, x_unit="s", y_unit=None, legend=True)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "key disabled: key_invalid" in texts
    assert all(": " in t for t in texts)


def test_cooldowns_of_a_snapshot_start_at_the_snapshot() -> None:
    """A client's clock is far from zero: the spans are drawn from the snapshot (x = 0)."""
    fig = plots.plot_cooldowns(snapshot(), reasons=True)
    ax = check_labelled(fig, x_unit="s", y_unit=None, legend=True)
    left, right = ax.get_xlim()
    assert left == 0.0
    assert 30.0 <= right < 40.0
    assert {p.get_x() for p in ax.patches} == {0.0}
    texts = {t.get_text() for t in ax.get_legend().get_texts()}
    assert texts == {"lane cooling: rate_limited_minute", "lane cooling: overloaded",
                     "key disabled: key_invalid"}


def test_existing_figures_keep_their_labels(demo: list[RunResult]) -> None:
    """The older figures: utilization, model share and comparison stay labelled."""
    check_labelled(plots.plot_key_utilization(demo[0]), x_unit="s", y_unit=None, legend=False)
    check_labelled(plots.plot_model_share(demo[0], bin_seconds=15), x_unit="s", y_unit=None,
                   legend=True)
    fig = plots.plot_comparison([compute(r) for r in demo])
    ax = _axes(fig)
    assert ax.get_title() == "Policy comparison: demo"
    assert ax.get_xlabel() == "policy"
    assert "percent" in ax.get_ylabel()
    assert len(ax.get_legend().get_texts()) == 4


def test_bins_have_round_widths() -> None:
    """Default bin widths are 1, 2 or 5 times a power of ten: labels read "per 5 s"."""
    assert [plots._round_up(v) for v in (1.0, 3.33895, 10.1, 30.0, 0.7, 251.0)] == [
        1.0, 5.0, 20.0, 50.0, 1.0, 500.0]


def test_model_share_lists_and_stacks_the_workloads_best_model_first(
        queued: list[RunResult]) -> None:
    """The file lists pro last but requests ask for it first: the legend starts with pro, the
    stack has it on top, and the bin width is round."""
    scenario = queued[0].scenario
    assert scenario.models_best_first[-1] == "gemini-2.5-pro"
    ax = check_labelled(plots.plot_model_share(queued[0]), x_unit="s", y_unit=None, legend=True)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"]
    assert ax.get_ylabel() == "share of successes per 50 s"
    # Containers in drawing order: bottom of the stack first, the best model drawn last.
    assert [c.get_label() for c in ax.containers] == texts[::-1]


def test_a_heat_map_of_fewer_keys_says_so(demo: list[RunResult]) -> None:
    """Every key by default; with `max_keys`, the axis label says which keys are shown."""
    keys = len(demo[0].scenario.keys)
    ax = _axes(plots.plot_key_utilization(demo[0]))
    assert ax.get_ylabel() == "key"
    assert len(ax.get_yticklabels()) == keys
    ax = _axes(plots.plot_key_utilization(demo[0], max_keys=2))
    assert ax.get_ylabel() == f"key: the 2 busiest of {keys}"
    assert len(ax.get_yticklabels()) == 2


def test_comparison_legends_stand_beside_the_bars(demo: list[RunResult]) -> None:
    """No legend inside the axes, where it covered the tallest bars."""
    metrics = [compute(r) for r in demo]
    for fig in (plots.plot_comparison(metrics), plots.plot_key_attempts(demo[0])):
        fig.canvas.draw()
        legend = _axes(fig).get_legend().get_window_extent()
        assert legend.x0 >= _axes(fig).get_window_extent().x1


def test_overview_has_a_panel_per_scenario(demo: list[RunResult],
                                           queued: list[RunResult]) -> None:
    """One panel per scenario, bars per policy, one shared legend of the four series."""
    fig = plots.plot_overview([compute(r) for r in [*demo, *queued]])
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["demo", "daily-exhaustion"]
    assert [t.get_text() for t in shown[0].get_xticklabels()] == ["least-loaded", "router-like"]
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 4


def test_save_all_draws_cooldowns_with_their_reasons(demo: list[RunResult], tmp_path: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard set's cooldown charts tell the reasons apart, as the notebook's do."""
    calls: list[bool] = []
    original = plots.plot_cooldowns

    def spy(source: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("reasons", False))
        return original(source, **kwargs)

    monkeypatch.setattr(plots, "plot_cooldowns", spy)
    written = plots.save_all(demo[:1], [compute(demo[0])], tmp_path)
    assert calls == [True]
    assert sorted(p.name for p in written) == [
        "demo-comparison.png", "demo-least-loaded-cooldowns.png",
        "demo-least-loaded-models.png", "demo-least-loaded-utilization.png"]
