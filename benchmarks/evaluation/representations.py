"""The two item/user representations the evaluation compares, behind one small interface.

- ``bert``: item vectors are the bundle encoder's text embeddings (precomputed once: read
  from the bundle's ``item_embeddings.npy`` for catalog items whose id *and* text match,
  encoded in batches through the bundle's ONNX encoder otherwise). They never change; a
  cold-start item is as well described as any other.
- ``id``: item vectors are id embeddings with no text, learned online: each item starts
  as a small random vector and is moved by logistic SGD on the rewards the simulation
  observes. A cold-start item knows nothing until it has been shown.

In both, the user vector is built by the same rule, the engine's ``history`` user
representation (:mod:`explorank.engine.user_vectors`): the recency-weighted mean of the
vectors of the user's most recent positive items (training history first, then the clicks
of the simulation). So a policy sees the same kind of inputs in both worlds, and the
difference between the two runs of one policy isolates what the text encoder contributes.
``--user-representation text | both`` builds BERT users with the encoder instead
(:class:`TextUsers`); ``id`` users are always ``history`` (an id has no text).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorank.engine.text import user_context_text
from explorank.engine.user_vectors import combine, history_vector

log = logging.getLogger("explorank.benchmarks")

HISTORY = 50  # most recent positive items a user vector is built from
HALF_LIFE = 10.0  # recency half-life (items) of the history user vector
TEXT_HISTORY = 5  # items whose texts make a user's text (text / both user representations)


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms == 0.0, 1.0, norms)).astype(np.float32)


def encode_texts(
    bundle: Any, texts: Sequence[str], batch_size: int = 64, *, backend: Any = None
) -> np.ndarray:
    """Encode texts with the bundle's fp32 ONNX encoder, in length-sorted batches.

    Sorting by token count keeps padding small; the result is returned in input order,
    L2-normalised, float32 ``(len(texts), d)``. ``backend``: an open fp32 backend of the
    bundle to reuse (else one is opened and closed here)."""
    from explorank.engine.backends import create_backend
    from explorank.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_bundle(bundle)
    ids = tok.encode_batch(list(texts), field="texts")
    order = np.argsort([len(s) for s in ids], kind="stable")
    out = np.zeros((len(ids), bundle.embedding_dim), dtype=np.float32)
    own = backend is None
    if own:
        backend = create_backend(bundle, backend="onnxruntime", precision="fp32")
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, mask = tok.pad([ids[i] for i in rows])
            out[rows] = np.asarray(backend.encode(input_ids, mask), dtype=np.float32)
    finally:
        if own:
            backend.close()
    return _normalize(out)


def bert_item_embeddings(bundle: Any, item_ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """Embeddings of the given items: from the bundle's precomputed catalog matrix where the
    item id is in the catalog with the same text, from the encoder (batched) for the rest."""
    out = np.zeros((len(item_ids), bundle.embedding_dim), dtype=np.float32)
    missing: list[int] = []
    for i, (item_id, text) in enumerate(zip(item_ids, texts, strict=True)):
        row = bundle.index.get(item_id)
        if row is not None and bundle.items[row].text == text:
            out[i] = bundle.item_embeddings[row]
        else:
            missing.append(i)
    if missing:
        log.info(
            "encoding %d item texts with the bundle encoder (not in its catalog)", len(missing)
        )
        out[missing] = encode_texts(bundle, [texts[i] for i in missing])
    return _normalize(out)


class Representation:
    """Item and user vectors for the simulator; ``observe`` learns from one shown slate.

    The user vector is built by the engine's own rule for ``ranking.user_representation =
    "history"`` (:func:`explorank.engine.user_vectors.history_vector`: the recency-weighted
    mean of the user's most recent positive items, ``half_life`` items), or by ``users``
    when given (a :class:`TextUsers` for the ``text`` and ``both`` representations)."""

    name = "base"

    def __init__(
        self,
        item_vectors: np.ndarray,
        history: Sequence[Sequence[int]],
        *,
        half_life: float = HALF_LIFE,
        users: TextUsers | None = None,
    ) -> None:
        self.items = _normalize(np.asarray(item_vectors, dtype=np.float32))
        self.dim = int(self.items.shape[1])
        self.recent: list[list[int]] = [list(h)[-HISTORY:] for h in history]
        self.half_life = half_life
        self.users = users

    def item_vectors(self, idx: np.ndarray) -> np.ndarray:
        """(k, d) L2-normalised vectors of the given item indices."""
        return self.items[idx]

    def user_vector(self, user: int, history: np.ndarray | None = None) -> np.ndarray:
        """(d,) user vector from ``history`` (item indices, most recent first) or, when
        None, from the user's recent positive items (zeros when there are none)."""
        if history is None:
            rec = self.recent[user]
            recent = np.asarray(rec[::-1], dtype=np.int64)
        else:
            recent = np.asarray(history[:HISTORY], dtype=np.int64)
        if self.users is not None:
            return self.users.vector(recent, self.items)
        return history_vector(self.items[recent], self.half_life)

    def observe(
        self, user: int, shown: np.ndarray, rewards: np.ndarray, user_vec: np.ndarray
    ) -> None:
        """Record the user's clicks in their history (subclasses also learn vectors)."""
        if rewards.any():
            rec = self.recent[user]
            rec.extend(int(i) for i in shown[rewards > 0])
            if len(rec) > HISTORY:
                del rec[: len(rec) - HISTORY]


class TextUsers:
    """User vectors for ``--user-representation text | both``: the encoder on the user text
    built from the history items' texts (most recent first, as the engine builds it;
    the study's users have no free context, so ``both`` combines this with the history
    vector). Encodings are cached per history (most recent ``TEXT_HISTORY`` items)."""

    def __init__(
        self, encode: Any, texts: Sequence[str], mode: str, half_life: float = HALF_LIFE
    ) -> None:
        self.encode = encode  # list[str] -> (n, d) L2-normalised
        self.texts = list(texts)
        self.mode = mode
        self.half_life = half_life
        self.cache: dict[tuple[int, ...], np.ndarray] = {}
        self.encoded = 0

    def vector(self, recent: np.ndarray, items: np.ndarray) -> np.ndarray:
        key = tuple(recent[:TEXT_HISTORY].tolist())
        text_vec = self.cache.get(key)
        if text_vec is None:
            if key:
                text = user_context_text([self.texts[i] for i in key])
                text_vec = np.asarray(self.encode([text])[0], dtype=np.float32)
                self.encoded += 1
            else:
                text_vec = np.zeros(items.shape[1], dtype=np.float32)
            self.cache[key] = text_vec
        if self.mode == "text":
            return text_vec
        return combine(history_vector(items[recent], self.half_life), text_vec)


class BertRepresentation(Representation):
    """Fixed text embeddings from the bundle's encoder."""

    name = "bert"


class IdRepresentation(Representation):
    """Id-only item vectors learned online by logistic SGD; no text is ever read.

    For a shown item ``i`` with reward ``r`` (1 click, 0 none) and user vector ``u``:
    ``q_i += lr * ((r - sigmoid(c * u·q_i)) * u - l2 * q_i)``; the policy and the scorer
    see the L2-normalised ``q``.
    """

    name = "id"

    def __init__(
        self,
        n_items: int,
        history: Sequence[Sequence[int]],
        *,
        dim: int = 32,
        lr: float = 0.1,
        l2: float = 0.001,
        temperature: float = 5.0,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.raw = rng.normal(0.0, 1.0 / np.sqrt(dim), size=(n_items, dim)).astype(np.float32)
        super().__init__(self.raw, history)
        self.lr = lr
        self.l2 = l2
        self.temperature = temperature

    def observe(
        self, user: int, shown: np.ndarray, rewards: np.ndarray, user_vec: np.ndarray
    ) -> None:
        if np.any(user_vec):
            q = self.raw[shown]
            pred = 1.0 / (1.0 + np.exp(-self.temperature * (q @ user_vec)))
            err = (rewards - pred).astype(np.float32)
            q += self.lr * (err[:, None] * user_vec[None, :] - self.l2 * q)
            self.raw[shown] = q
            self.items[shown] = _normalize(q)
        super().observe(user, shown, rewards, user_vec)


def load_bundle_for_eval(path: str | Path | None) -> Any:
    """The bundle to read BERT embeddings from: ``path``, or the default bundle (built on
    first use by ``explorank.engine.default_bundle``)."""
    from explorank.engine.bundle import load_bundle

    if path is None:
        from explorank.engine.default_bundle import ensure_default_bundle

        path = ensure_default_bundle()
    return load_bundle(path)
