"""sim.draws gives exactly the standard library's draws and leaves the generator in its state."""

from __future__ import annotations

import random

import pytest

from sim.draws import lognormal, uniform_int


@pytest.mark.parametrize(("low", "high"), [(0, 0), (5, 5), (1, 2), (0, 7), (0, 8), (200, 2000),
                                           (100, 600), (1, 2**40)])
def test_uniform_int_is_randint(low: int, high: int) -> None:
    """The same values as `randint`, interleaved with other draws, and the same final state."""
    ours, theirs = random.Random(11), random.Random(11)
    draw = uniform_int(ours, low, high)
    for _ in range(2000):
        assert draw() == theirs.randint(low, high)
        assert ours.random() == theirs.random()
    assert ours.getstate() == theirs.getstate()


@pytest.mark.parametrize(("mu", "sigma"), [(0.0, 1.0), (0.405, 0.3), (-2.0, 0.01), (1.0, 3.0)])
def test_lognormal_is_lognormvariate(mu: float, sigma: float) -> None:
    """Bit-identical floats to `lognormvariate`, and the same final state."""
    ours, theirs = random.Random(12), random.Random(12)
    draw = lognormal(ours, mu, sigma)
    for _ in range(2000):
        assert draw() == theirs.lognormvariate(mu, sigma)
        assert ours.random() == theirs.random()
    assert ours.getstate() == theirs.getstate()


def test_other_generators_use_their_own_methods() -> None:
    """A subclass may override random(): the draws defer to it rather than copy the stdlib."""

    class Fixed(random.Random):
        def random(self) -> float:
            return 0.25

    assert lognormal(Fixed(1), 0.0, 1.0)() == Fixed(1).lognormvariate(0.0, 1.0)
    assert uniform_int(Fixed(1), 3, 9)() == Fixed(1).randint(3, 9)


def test_an_empty_range_is_refused() -> None:
    """As randint does."""
    with pytest.raises(ValueError, match="empty range"):
        uniform_int(random.Random(1), 3, 2)
