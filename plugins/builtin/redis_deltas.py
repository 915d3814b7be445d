"""The array-delta buffer of the ``redis`` store, and the float64 blob format it flushes.

Array statistics (LinUCB's ``A = Σxxᵀ``, ``b = Σrx``: up to d² floats per reward) are not sent
to Redis per reward. Each replica sums them here, per ``(learner, array)``, together with the
*refs* (``event_id <SEP> item_id``) of the rewards they cover; a flush takes everything out at
once (:meth:`ArrayDeltaBuffer.drain`) and puts it back if Redis could not take it
(:meth:`ArrayDeltaBuffer.restore`). Readers add what is still buffered to what Redis holds
(:meth:`ArrayDeltaBuffer.pending_for`), so a replica always sees its own rewards.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping

import numpy as np

from explorank.plugins.api import StatsDelta

__all__ = ["SEP", "ArrayDeltaBuffer", "dump_array", "load_array"]

#: Separates event id and item id in a pending ref.
SEP = "\x1f"

#: (learner, array name) -> summed float64 delta
Sums = dict[tuple[str, str], np.ndarray]


def dump_array(arr: np.ndarray) -> bytes:
    """A float64 ``.npy`` blob (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype="<f8"), allow_pickle=False)
    return buf.getvalue()


def load_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False).astype(np.float64)


def add_into(sums: Sums, key: tuple[str, str], arr: np.ndarray) -> None:
    add = np.asarray(arr, dtype=np.float64)
    cur = sums.get(key)
    sums[key] = add.copy() if cur is None else cur + add


class ArrayDeltaBuffer:
    """Unflushed array deltas of one replica and the rewards they cover."""

    def __init__(self) -> None:
        self.sums: Sums = {}
        self.refs: dict[str, list[str]] = {}  # pending ref -> learners with arrays

    def __len__(self) -> int:
        """Rewards covered (what ``array_flush_every`` counts)."""
        return len(self.refs)

    def __contains__(self, ref: object) -> bool:
        return ref in self.refs

    def add(self, ref: str, learners: Iterable[str], deltas: Mapping[str, StatsDelta]) -> None:
        names = list(learners)
        for learner in names:
            for name, arr in deltas[learner].arrays.items():
                add_into(self.sums, (learner, name), arr)
        self.refs[ref] = names

    def drain(self) -> tuple[Sums, dict[str, list[str]]]:
        """Everything buffered, leaving the buffer empty."""
        sums, refs = self.sums, self.refs
        self.sums, self.refs = {}, {}
        return sums, refs

    def restore(self, sums: Sums, refs: Mapping[str, list[str]]) -> None:
        """Put back what a failed flush took out (added to anything buffered since)."""
        for key, arr in sums.items():
            add_into(self.sums, key, arr)
        self.refs.update(refs)

    def pending_for(self, learner: str) -> dict[str, np.ndarray]:
        """The learner's buffered array sums, by array name."""
        return {name: arr for (owner, name), arr in self.sums.items() if owner == learner}
