"""Embeddings on the Rank path: the user text and its embedding (cached), and the candidate
matrix (catalog rows, plus texts encoded through the batcher and cached).

A mixin of :class:`explorank.engine.pipeline.Engine`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from explorank.engine.requests import RankInput
from explorank.engine.text import user_context_text
from explorank.errors import InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from explorank.engine.bundle import Bundle
    from explorank.engine.cache import LRUCache
    from explorank.engine.metrics import EngineMetrics


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass
class _Candidates:
    ids: list[str]
    embeddings: np.ndarray  # (n, d) float32


class EmbeddingMixin:
    """User and candidate embeddings for one Rank request."""

    bundle: Bundle
    metrics: EngineMetrics
    tokenizer: Any
    batcher: Any
    user_cache: LRUCache
    item_cache: LRUCache
    _centroid: np.ndarray
    _catalog_ids: list[str]

    def _context_text(self, req: RankInput) -> str:
        """The user text, built exactly as fine-tuning built it (engine/text.py)."""
        texts: list[str] = []
        for i, hid in enumerate(req.history_item_ids):
            row = self.bundle.index.get(hid)
            if row is None:
                raise NotFoundError(f"history_item_ids[{i}]: item {hid!r} is not in the catalog")
            texts.append(self.bundle.items[row].text)
        return user_context_text(texts, req.context_text)

    async def encode_texts(self, texts: Sequence[str], deadline: float | None) -> np.ndarray:
        """Encode texts through the dynamic batcher (no caching)."""
        t0 = time.perf_counter()
        ids = self.tokenizer.encode_batch(list(texts))
        self.metrics.stage.labels("tokenize").observe(time.perf_counter() - t0)
        return await self.batcher.submit_many(ids, deadline=deadline)

    async def _user_embedding(self, text: str, deadline: float | None) -> np.ndarray:
        if not text.strip():
            # A user with no context and no history: the catalog centroid, so that the
            # ranking starts from what is typical of the catalog (and exploration does the rest).
            return self._centroid
        key = _text_key(text)
        hit = self.user_cache.get(key)
        if hit is not None:
            self.metrics.cache.labels("user", "hit").inc()
            return hit
        self.metrics.cache.labels("user", "miss").inc()
        t0 = time.perf_counter()
        ids = self.tokenizer.encode_batch([text])[0]
        self.metrics.stage.labels("tokenize").observe(time.perf_counter() - t0)
        emb = await self.batcher.submit(ids, deadline=deadline)
        self.user_cache.put(key, emb)
        return emb

    async def _candidates(self, req: RankInput, deadline: float | None) -> _Candidates:
        b = self.bundle
        if not req.candidates:
            return _Candidates(self._catalog_ids, b.item_embeddings)  # built once at load
        ids: list[str] = []
        rows = np.empty(len(req.candidates), dtype=np.int64)
        new_pos: list[int] = []
        new_texts: list[str] = []
        index = b.index
        for i, cand in enumerate(req.candidates):
            ids.append(cand.item_id)
            row = index.get(cand.item_id)
            if row is not None:
                rows[i] = row
                continue
            if not cand.text:
                raise InvalidArgumentError(
                    f"candidates[{i}].text",
                    f"required: item {cand.item_id!r} is not in the catalog, so its text must be given",
                )
            rows[i] = -1
            new_pos.append(i)
            new_texts.append(cand.text)
        emb = np.empty((len(ids), b.embedding_dim), dtype=np.float32)
        known = rows >= 0
        emb[known] = b.item_embeddings[rows[known]]
        if new_pos:
            missing_pos: list[int] = []
            missing_texts: list[str] = []
            for pos, text in zip(new_pos, new_texts, strict=True):
                hit = self.item_cache.get(_text_key(text))
                if hit is not None:
                    emb[pos] = hit
                else:
                    missing_pos.append(pos)
                    missing_texts.append(text)
            self.metrics.cache.labels("item", "hit").inc(len(new_pos) - len(missing_pos))
            if missing_pos:
                self.metrics.cache.labels("item", "miss").inc(len(missing_pos))
                vecs = await self.encode_texts(missing_texts, deadline)
                for pos, text, vec in zip(missing_pos, missing_texts, vecs, strict=True):
                    emb[pos] = vec
                    self.item_cache.put(_text_key(text), vec)
        return _Candidates(ids, emb)
