"""The live catalog: the bundle's items, plus items added at run time, minus retired ones.

A bundle fixes its catalog at export time; items arrive and leave between exports. Changes
(:class:`~explorank.plugins.api.CatalogChange`: ``add`` with a text, ``remove``) are kept in
the state store, in order, so they survive a restart and reach every replica; each replica
encodes added texts with its own serving encoder and applies the changes to its catalog.

A :class:`Catalog` is immutable: a change builds a new one and the engine swaps it in, so a
Rank in progress keeps the catalog it started with. Retired items stay known (their rows
remain, so the rewards of events that showed them can still be learned) but are no longer
rankable: never in a whole-catalog Rank, and named as a candidate they count as unknown.
An item of the bundle wins over an added item of the same id (a new export that includes an
added item simply takes it over).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from explorank.engine.bundle import Bundle, CatalogItem

__all__ = ["Catalog"]


def _read_only(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class Catalog:
    """One immutable catalog state (see the module docstring)."""

    model_version: str
    #: every known item, rankable or retired; row i of ``embeddings``
    items: tuple[CatalogItem, ...]
    index: dict[str, int]
    embeddings: np.ndarray  # (n, d) float32, read-only
    #: the rankable items: whole-catalog candidates, in catalog order
    ids: list[str]
    rank_embeddings: np.ndarray  # (len(ids), d) float32, read-only
    retired: frozenset[str]
    #: ids that came from the bundle (added items never replace these)
    bundled: frozenset[str]
    #: the last applied change's sequence number in the state store
    seq: int = 0

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Catalog:
        emb = _read_only(bundle.item_embeddings)
        ids = [it.id for it in bundle.items]
        return cls(
            model_version=bundle.model_version,
            items=tuple(bundle.items),
            index=dict(bundle.index),
            embeddings=emb,
            ids=ids,
            rank_embeddings=emb,
            retired=frozenset(),
            bundled=frozenset(ids),
        )

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        """Rankable items."""
        return len(self.ids)

    def row(self, item_id: str) -> int | None:
        """The row of a rankable item (None for unknown and retired items)."""
        if item_id in self.retired:
            return None
        return self.index.get(item_id)

    def text(self, item_id: str) -> str | None:
        row = self.index.get(item_id)
        return None if row is None else self.items[row].text

    def centroid(self) -> np.ndarray:
        """The unit mean of the rankable items (the embedding of a user with no context)."""
        if not len(self.ids):
            return np.zeros(self.dim, dtype=np.float32)
        c = self.rank_embeddings.mean(axis=0)
        norm = float(np.linalg.norm(c))
        return (c / norm if norm > 0 else c).astype(np.float32)

    # ------------------------------------------------------------------- changes
    def added(self, items: Sequence[tuple[str, str]], vectors: np.ndarray, seq: int) -> Catalog:
        """The catalog with ``items`` (id, text) added (or their text and vector replaced,
        and un-retired) — except ids that come from the bundle, which stay as they are."""
        keep = [
            (i, (item_id, text))
            for i, (item_id, text) in enumerate(items)
            if item_id not in self.bundled
        ]
        if not keep:
            return self._with(seq=seq)
        items_list = list(self.items)
        index = dict(self.index)
        rows = [self.embeddings]
        new_vectors = []
        retired = set(self.retired)
        for i, (item_id, text) in keep:
            # always a new row: a replaced text leaves the old row to the events that used it
            index[item_id] = len(items_list)
            items_list.append(CatalogItem(item_id, text))
            new_vectors.append(np.asarray(vectors[i], dtype=np.float32))
            retired.discard(item_id)
        if new_vectors:
            rows.append(np.stack(new_vectors).astype(np.float32))
        embeddings = np.ascontiguousarray(np.concatenate(rows))
        return self._rebuilt(tuple(items_list), index, embeddings, frozenset(retired), seq)

    def removed(self, item_ids: Iterable[str], seq: int) -> Catalog:
        """The catalog with ``item_ids`` retired (unknown ids are ignored)."""
        retired = set(self.retired) | {i for i in item_ids if i in self.index}
        return self._rebuilt(self.items, self.index, self.embeddings, frozenset(retired), seq)

    def _with(self, *, seq: int) -> Catalog:
        return Catalog(
            self.model_version,
            self.items,
            self.index,
            self.embeddings,
            self.ids,
            self.rank_embeddings,
            self.retired,
            self.bundled,
            max(seq, self.seq),
        )

    def _rebuilt(
        self,
        items: tuple[CatalogItem, ...],
        index: dict[str, int],
        embeddings: np.ndarray,
        retired: frozenset[str],
        seq: int,
    ) -> Catalog:
        # rankable: each id's current row, in first-seen order, minus the retired
        order: dict[str, int] = {}
        for item in items:
            if item.id not in retired and item.id not in order:
                order[item.id] = index[item.id]
        ids = list(order)
        rows = np.fromiter(order.values(), dtype=np.int64, count=len(order))
        if len(rows) == embeddings.shape[0] and np.array_equal(rows, np.arange(len(rows))):
            rank = embeddings
        else:
            rank = np.ascontiguousarray(embeddings[rows])
        return Catalog(
            self.model_version,
            items,
            index,
            _read_only(embeddings),
            ids,
            _read_only(rank),
            retired,
            self.bundled,
            max(seq, self.seq),
        )
