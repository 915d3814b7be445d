"""User vectors from what the user did: one rule shared by serving and the evaluation study.

``ranking.user_representation`` chooses how a Rank's user vector is built:

- ``text`` — the encoder on the user context text (``context_text`` followed by the texts
  of ``history_item_ids``, :func:`explorank.engine.text.user_context_text`): what the
  two-tower encoder was fine-tuned on; one encoder call per new text;
- ``history`` — :func:`history_vector`: the recency-weighted mean of the history items'
  catalog embeddings, L2-normalised; no encoder call at all (a Rank whose user is
  described by history alone costs no encoder time). Without history, ``context_text`` is
  encoded (the catalog centroid when it is empty too);
- ``both`` — :func:`combine`: the history vector plus the encoded ``context_text``
  (only the context, the history is already in the first term), L2-normalised.

The evaluation study (``explorank evaluate --user-representation``) calls the same
functions on its representations' item vectors.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

__all__ = ["MODES", "UserRepresentation", "combine", "history_vector", "recency_weights"]

UserRepresentation = Literal["text", "history", "both"]
MODES: tuple[str, ...] = ("text", "history", "both")


@functools.lru_cache(maxsize=256)
def _weights(n: int, half_life: float) -> np.ndarray:
    w = np.power(0.5, np.arange(n, dtype=np.float64) / half_life).astype(np.float32)
    w.setflags(write=False)
    return w


def recency_weights(n: int, half_life: float) -> np.ndarray:
    """(n,) weights of history items, most recent first: ``0.5 ** (i / half_life)``
    (float32, read-only, cached)."""
    return _weights(int(n), float(half_life))


def _normalize(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).astype(np.float32)


def history_vector(vectors: np.ndarray, half_life: float) -> np.ndarray:
    """The L2-normalised recency-weighted mean of ``vectors`` ((h, d), most recent first);
    zeros of size d when h = 0."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.shape[0] == 0:
        return np.zeros(v.shape[1], dtype=np.float32)
    return _normalize(recency_weights(v.shape[0], half_life) @ v)


def combine(history: np.ndarray | None, text: np.ndarray | None) -> np.ndarray:
    """``both``: the L2-normalised sum of the normalised history and text vectors (either
    may be missing: None or all zeros)."""
    parts = [
        _normalize(np.asarray(p, dtype=np.float32))
        for p in (history, text)
        if p is not None and np.any(p)
    ]
    if not parts:
        ref = history if history is not None else text
        assert ref is not None, "combine needs at least one vector"
        return np.zeros(np.asarray(ref).shape[-1], dtype=np.float32)
    return _normalize(np.sum(parts, axis=0))
