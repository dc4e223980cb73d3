"""Exact, faster stand-ins for the two `random.Random` draws the simulator makes per request.

`Random.randint` runs three Python-level calls (``randint``, ``randrange``, ``_randbelow``) and
`Random.lognormvariate` two (``lognormvariate``, ``normalvariate``); per simulated request that
call overhead costs more than the arithmetic.  The draw functions built here make the very same
calls on the generator, in the same order, with the same float arithmetic, so a seed yields the
same values and leaves the generator in the same state: a run does not change.
`tests/test_draws.py` checks that against the standard library.

They copy CPython's algorithms for a plain `random.Random`; for anything else (a subclass may
override ``random()``) they fall back to the generator's own method.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import partial

__all__ = ["lognormal", "uniform_int"]

_NV_MAGICCONST = 4 * math.exp(-0.5) / math.sqrt(2.0)  # random.NV_MAGICCONST, computed alike


def uniform_int(rng: random.Random, low: int, high: int) -> Callable[[], int]:
    """A function returning what ``rng.randint(low, high)`` would, drawing the same bits.

    Raises:
        ValueError: the range is empty (``high < low``), as `randint` would.
    """
    if high < low:
        raise ValueError(f"empty range for randint({low}, {high})")
    if type(rng) is not random.Random:
        return partial(rng.randint, low, high)
    n = high - low + 1
    bits = n.bit_length()  # as Random._randbelow_with_getrandbits: not (n - 1), n can be 1
    getrandbits = rng.getrandbits

    def draw() -> int:
        r = getrandbits(bits)
        while r >= n:  # rejection sampling keeps the draw uniform
            r = getrandbits(bits)
        return low + r

    return draw


def lognormal(rng: random.Random, mu: float, sigma: float) -> Callable[[], float]:
    """A function returning what ``rng.lognormvariate(mu, sigma)`` would, drawing the same
    numbers."""
    if type(rng) is not random.Random:
        return partial(rng.lognormvariate, mu, sigma)
    uniform = rng.random
    log, exp = math.log, math.exp

    def draw() -> float:
        # Random.normalvariate (Kinderman and Monahan's ratio of uniforms), then its exp.
        while True:
            u1 = uniform()
            u2 = 1.0 - uniform()
            z = _NV_MAGICCONST * (u1 - 0.5) / u2
            zz = z * z / 4.0
            if zz <= -log(u2):
                break
        return exp(mu + z * sigma)

    return draw
