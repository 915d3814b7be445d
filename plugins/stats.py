"""Additive sufficient statistics: what policies and scorers learn, and how it merges.

A plugin never mutates statistics: ``update`` returns a :class:`StatsDelta`, the state store
makes it durable, then the engine adds it. Deltas from several replicas merge by addition.
Import these from :mod:`explorank.plugins.api`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PolicyStats", "StatsDelta"]

#: How many recent :meth:`PolicyStats.apply` calls with item changes are remembered for
#: :meth:`PolicyStats.items_changed_since` (older ones are forgotten in halves).
JOURNAL_SIZE = 4096


@dataclass
class StatsDelta:
    """An additive change to a policy's sufficient statistics.

    ``items`` maps an item id to a vector added to that item's statistics (e.g.
    ``[count, reward_sum]``); ``arrays`` maps a name to an array added element-wise
    (e.g. ``A`` += x xᵀ, ``b`` += r x). Deltas from several replicas merge by addition.
    """

    items: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.items and not self.arrays

    def merge(self, other: StatsDelta) -> None:
        for key, vec in other.items.items():
            if key in self.items:
                self.items[key] = self.items[key] + vec
            else:
                self.items[key] = np.array(vec, dtype=np.float64, copy=True)
        for key, arr in other.arrays.items():
            if key in self.arrays:
                self.arrays[key] = self.arrays[key] + arr
            else:
                self.arrays[key] = np.array(arr, dtype=np.float64, copy=True)


@dataclass
class PolicyStats:
    """A snapshot of one learner's (policy's or scorer's) additive sufficient statistics.

    ``version`` increases whenever a delta is applied or fresher statistics are loaded,
    so a policy can cache derived quantities (e.g. a Cholesky factor) per version; a
    policy that derives something from *every* item's statistics can update it with only
    the items changed since its version (:meth:`items_changed_since`). :meth:`apply`
    replaces the arrays it changes (never modifies them in place).
    """

    items: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    version: int = 0
    #: (version after an apply, the item ids it changed), oldest first
    _journal: list[tuple[int, tuple[str, ...]]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    #: the journal holds every item change made after this version
    _journal_from: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._journal_from = self.version

    def item(self, item_id: str, size: int) -> np.ndarray:
        """The statistics vector of one item, zeros when it has none."""
        vec = self.items.get(item_id)
        if vec is None:
            return np.zeros(size, dtype=np.float64)
        return vec

    def item_matrix(self, item_ids: Sequence[str], size: int) -> np.ndarray:
        """(n, size) statistics of several items, zeros for unseen ones."""
        out = np.zeros((len(item_ids), size), dtype=np.float64)
        if self.items:
            get = self.items.get
            for i, item_id in enumerate(item_ids):
                vec = get(item_id)
                if vec is not None:
                    out[i, : vec.shape[0]] = vec[:size]
        return out

    def apply(self, delta: StatsDelta) -> None:
        for key, vec in delta.items.items():
            cur = self.items.get(key)
            self.items[key] = np.asarray(vec, dtype=np.float64).copy() if cur is None else cur + vec
        for key, arr in delta.arrays.items():
            cur = self.arrays.get(key)
            self.arrays[key] = (
                np.asarray(arr, dtype=np.float64).copy() if cur is None else cur + arr
            )
        self.version += 1
        if delta.items:
            journal = self._journal
            journal.append((self.version, tuple(delta.items)))
            if len(journal) > JOURNAL_SIZE:
                drop = len(journal) // 2
                self._journal_from = journal[drop - 1][0]
                del journal[:drop]

    def items_changed_since(self, version: int) -> set[str] | None:
        """Ids of the items whose statistics :meth:`apply` changed after ``version``; None
        when that is not known (``version`` is older than what this object remembers, or
        newer than its own: statistics were replaced)."""
        if version < self._journal_from or version > self.version:
            return None
        out: set[str] = set()
        for v, keys in reversed(self._journal):
            if v <= version:
                break
            out.update(keys)
        return out

    def copy(self) -> PolicyStats:
        return PolicyStats(
            items={k: v.copy() for k, v in self.items.items()},
            arrays={k: v.copy() for k, v in self.arrays.items()},
            version=self.version,
        )
