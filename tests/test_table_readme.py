"""The outcome table: both halves cover every outcome, and README.md shows the table as it is."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from keysched._outcomes import OutcomeKind
from keysched._table import DEFAULT_ACTIONS, OUTCOMES, Action, Delay, Effect, Next, RetryBudget

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_table", ROOT / "scripts" /
                                                  "render_table.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_shows_the_current_table() -> None:
    """README.md's section between the markers is what the script renders from the table now."""
    script = _script()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert script.updated(text) == text, "run: python scripts/render_table.py"
    for kind in OutcomeKind:
        assert f"| `{kind.value}` |" in text


def test_the_check_fails_on_a_stale_readme(tmp_path: Path) -> None:
    """A README whose table differs from the table is caught, and rewriting it fixes it."""
    script = _script()
    stale = f"intro\n{script.BEGIN}\n| old |\n{script.END}\noutro\n"
    fresh = script.updated(stale)
    assert fresh != stale
    assert fresh.startswith("intro\n")
    assert fresh.endswith("\noutro\n")
    assert script.updated(fresh) == fresh


def test_the_script_runs_as_written() -> None:
    """`python scripts/render_table.py --check` exits 0 on this checkout."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_table.py"), "--check"],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_halves_have_a_row_for_every_outcome() -> None:
    """No outcome is left to a rule outside the table."""
    assert set(DEFAULT_ACTIONS) == set(OutcomeKind)
    assert set(OUTCOMES) == set(OutcomeKind)


def test_answers_and_429s_exclude_each_other() -> None:
    """An outcome is an answer, a 429, or neither; only 429s are quota waits or probe."""
    for meaning in OUTCOMES.values():
        assert not (meaning.answers and meaning.is_429)
        assert meaning.counts_attempt or meaning.is_429
        assert not meaning.probes or meaning.is_429


@pytest.mark.parametrize("effect", list(Effect))
@pytest.mark.parametrize("step", list(Next))
def test_retry_delay_follows_from_effect_and_next(effect: Effect, step: Next) -> None:
    """A group bench takes the delay; an effect that blames no group, with a retry to follow,
    idles the lane for it; anything else ignores it."""
    delay = Action(effect=effect, next=step).retry_delay
    if effect in (Effect.COOL_GROUP, Effect.COOL_BILLING_ACCOUNT):
        assert delay is Delay.BENCHES_GROUP
    elif effect in (Effect.NONE, Effect.COOL_MODEL) and step in (Next.RETRY_NOW,
                                                                 Next.RETRY_LATER):
        assert delay is Delay.IDLES_LANE
    else:
        assert delay is Delay.IGNORED


def test_only_server_failures_spend_the_per_model_budget() -> None:
    """500s and 503s move a request down its models; empties have their own budget."""
    per_model = {kind for kind, m in OUTCOMES.items() if m.budget is RetryBudget.PER_MODEL}
    assert per_model == {OutcomeKind.SERVER_ERROR, OutcomeKind.OVERLOADED}
    assert OUTCOMES[OutcomeKind.EMPTY].budget is RetryBudget.EMPTY
