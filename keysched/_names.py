"""Names the core's callers use, checked and turned into the indices the core works with.

Theory of operation
-------------------
Callers name models (``"gemini-2.5-flash"``, or ``"models/gemini-2.5-flash"`` as the API
writes them), projects and keys (by label, never by secret); the core works with indices.
`Names` checks a name once at the edge and raises `UsageError` naming the bad value, so that
nothing inside the core sees a name it does not know.

Decisions where the issue was silent: a model named twice in one list counts once (at its
first place); the resolved lists of the last `CACHED` distinct tuples are kept, because callers
pass the same few lists again and again.
"""

from __future__ import annotations

from collections.abc import Sequence

from keysched._config import PoolConfig
from keysched._errors import UsageError
from keysched._keys import Keys

__all__ = ["CACHED", "Names"]

CACHED = 256
"""Resolved model lists kept (tuples only: a list may change after it was resolved)."""


class Names:
    """The pool's model, project and key names (see the module docstring).

    Args:
        config: the pool.
        keys: the pool's keys, for their projects and labels.
    """

    __slots__ = ("_all", "_cache", "_keys", "_model_index", "_models")

    def __init__(self, config: PoolConfig, keys: Keys) -> None:
        self._models = list(config.models)
        self._model_index = {name: index for index, name in enumerate(config.models)}
        self._all = tuple(range(len(self._models)))
        self._keys = keys  # its projects and labels (the pool's own index: no second copy)
        self._cache: dict[tuple[str, ...], tuple[int, ...]] = {}

    def model_list(self, models: Sequence[str] | None) -> tuple[int, ...]:
        """The indices of `models`, best first, without repeats (None: every model).

        Raises:
            UsageError: not a list of names, an unknown model, or no model at all.
        """
        if models is None:
            return self._all
        if not isinstance(models, tuple):
            return self._resolve(models)
        try:
            cached = self._cache.get(models)
        except TypeError:  # unhashable: not a tuple of names; `_resolve` says what is wrong
            return self._resolve(models)
        if cached is None:
            cached = self._resolve(models)
            if len(self._cache) < CACHED:
                self._cache[models] = cached
        return cached

    def _resolve(self, models: Sequence[str]) -> tuple[int, ...]:
        if isinstance(models, str):
            models = [models]
        try:
            names = list(models)
        except TypeError:  # not a list of names at all (a number, say)
            raise UsageError(f"models must be a best-first list of model names, got "
                             f"{type(models).__name__}") from None
        indices: list[int] = []
        for name in names:
            index = self._model_index.get(name.removeprefix("models/")) if isinstance(
                name, str) else None
            if index is None:
                raise UsageError(f"unknown model {name!r}; the pool's models are {self._models}")
            if index not in indices:
                indices.append(index)
        if not indices:
            raise UsageError("models must name at least one model")
        return tuple(indices)

    def model(self, name: str) -> str:
        """`name`, checked to be one of the pool's models."""
        if name not in self._model_index:
            raise UsageError(f"unknown model {name!r}; the pool's models are {self._models}")
        return name

    def project(self, name: str) -> str:
        """`name`, checked to be one of the pool's projects."""
        if not self._keys.has_project(name):
            raise UsageError(f"unknown project {name!r}")
        return name

    def key(self, label: str) -> str:
        """`label`, checked to be the label of one of the pool's keys."""
        if not self._keys.has_label(label):
            raise UsageError(f"unknown key label {label!r}")
        return label
