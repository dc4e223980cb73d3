"""The pool's keys, by project and billing account.

Theory of operation
-------------------
A key belongs to one project (the quota it spends) and a project to one billing account (a
spend cap benches the whole account).  `Keys` holds one `KeyState` per key, in configuration
order (the index the core and the selector use), and counts per project the keys still enabled:
a project whose last key was disabled takes its quota groups out of what its models can use.
A key is disabled for good; nothing re-enables it.

Decision where the issue was silent: a project no key names a billing account for is billed
alone (its own account, ``project:<name>``).
"""

from __future__ import annotations

from keysched._config import Key, PoolConfig

__all__ = ["KeyState", "Keys"]


class KeyState:
    """One key of the pool.

    Attributes:
        index: its position in the pool.
        key: the configured key (its `repr` is its label, never the secret).
        project: its project's index.
        disabled: why it is disabled for good (None: it is not).
        in_flight: attempts in flight on it.
        seq: the id of its last dispatch (orders keys of equal load by last use).
        strikes: strikes counted against it (baseline policies).
    """

    __slots__ = ("disabled", "in_flight", "index", "key", "project", "seq", "strikes")

    def __init__(self, index: int, key: Key, project: int) -> None:
        self.index = index
        self.key = key
        self.project = project
        self.disabled: str | None = None
        self.in_flight = 0
        self.seq = index - 1_000_000_000  # before any dispatch; keeps the positional tie-break
        self.strikes = 0


class Keys:
    """Every key of the pool, and the projects and billing accounts they belong to.

    Attributes:
        states: one `KeyState` per key, by index.
        projects: the projects' names, by index.
        of_project: per project, the indices of its keys.
    """

    __slots__ = ("_accounts", "_active", "_by_label", "_project_index", "of_project", "projects",
                 "states")

    def __init__(self, config: PoolConfig) -> None:
        self.projects = list(config.projects)
        index_of = {name: index for index, name in enumerate(self.projects)}
        self.states = [KeyState(index, key, index_of[key.project or ""])
                       for index, key in enumerate(config.keys)]
        # Indexes by name, for facts from other processes: built on first use (two dicts of
        # 10,000 names cost over a MB of the core's memory target, and most pools never need
        # them; see benchmarks/bench_core.py).
        self._by_label: dict[str, KeyState] | None = None
        self._project_index: dict[str, int] | None = None
        self.of_project: list[list[int]] = [[] for _ in self.projects]
        for state in self.states:
            self.of_project[state.project].append(state.index)
        self._active = [len(keys) for keys in self.of_project]
        account_of = {key.project: key.billing_account for key in config.keys
                      if key.billing_account is not None}
        self._accounts = [account_of.get(project, f"project:{project}")
                          for project in self.projects]

    def __getitem__(self, index: int) -> KeyState:
        return self.states[index]

    def __len__(self) -> int:
        return len(self.states)

    def has_label(self, label: str) -> bool:
        """Whether a key has this label."""
        return label in self._labels()

    def labelled(self, label: str) -> KeyState:
        """The key with this label (`KeyError` if none)."""
        return self._labels()[label]

    def _labels(self) -> dict[str, KeyState]:
        if self._by_label is None:
            self._by_label = {state.key.label or "": state for state in self.states}
        return self._by_label

    def has_project(self, name: str) -> bool:
        """Whether the pool has the project `name`."""
        return name in self._projects()

    def project_index(self, name: str) -> int:
        """The index of the project `name` (`KeyError` if none)."""
        return self._projects()[name]

    def _projects(self) -> dict[str, int]:
        if self._project_index is None:
            self._project_index = {name: index for index, name in enumerate(self.projects)}
        return self._project_index

    def project_active(self, project: int) -> bool:
        """Whether the project has a key that is not disabled."""
        return self._active[project] > 0

    def same_account(self, project: int) -> list[int]:
        """The projects billed to the same account as `project` (itself included)."""
        account = self._accounts[project]
        return [p for p, a in enumerate(self._accounts) if a == account]

    def disable(self, state: KeyState, reason: str) -> bool:
        """Disable the key for good.  Returns whether its project has no enabled key left
        (False too if it was disabled already)."""
        if state.disabled is not None:
            return False
        state.disabled = reason
        self._active[state.project] -= 1
        return self._active[state.project] == 0
