"""The embedder: from a Rank request to the user vector and the candidate matrix.

It owns the tokenizer, the dynamic batcher in front of the encoder backend, and the two
embedding caches (user contexts with a TTL; candidate texts that are not in the catalog).
Catalog candidates come from the bundle's precomputed matrix and cost no encoder call.
The user vector follows ``ranking.user_representation`` (:mod:`explorank.engine.user_vectors`):
with ``history``, a user described by catalog history alone costs no encoder call either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from explorank.engine.cache import LRUCache, content_key
from explorank.engine.requests import RankInput
from explorank.engine.text import user_context_text
from explorank.engine.user_vectors import combine, history_vector
from explorank.errors import InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from explorank.engine.backends import Backend
    from explorank.engine.bundle import Bundle
    from explorank.engine.config import BatchingConfig, CacheConfig, RankingConfig
    from explorank.engine.metrics import EngineMetrics
    from explorank.engine.tokenizer import Tokenizer

__all__ = ["Candidates", "Embedder"]


@dataclass
class Candidates:
    ids: list[str]
    embeddings: np.ndarray  # (n, d) float32


class Embedder:
    """User and candidate embeddings for Rank requests (see the module docstring)."""

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        tokenizer: Tokenizer,
        *,
        batching: BatchingConfig,
        cache: CacheConfig,
        metrics: EngineMetrics,
        ranking: RankingConfig | None = None,
    ) -> None:
        self.bundle = bundle
        self.user_representation = ranking.user_representation if ranking else "text"
        self.history_half_life = ranking.history_half_life if ranking else 10.0
        self.backend = backend
        self.tokenizer = tokenizer
        self.batching = batching
        self.metrics = metrics
        self.user_cache: LRUCache[np.ndarray] = LRUCache(
            cache.user_max_entries, ttl_s=cache.user_ttl_s
        )
        self.item_cache: LRUCache[np.ndarray] = LRUCache(cache.item_max_entries)
        self.batcher: Any = None
        items = bundle.item_embeddings
        centroid = items.mean(axis=0) if len(bundle.items) else np.zeros(bundle.embedding_dim)
        norm = float(np.linalg.norm(centroid))
        self.centroid = (centroid / norm if norm > 0 else centroid).astype(np.float32)
        self.catalog_ids = [it.id for it in bundle.items]  # built once, for whole-catalog Ranks

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, warmup: bool = True) -> float:
        """Start the batcher (and warm every bucket x batch shape); returns warm-up seconds."""
        from explorank.engine.batcher import DynamicBatcher

        bc = self.batching
        max_len = self.bundle.max_seq_length
        self.batcher = DynamicBatcher(
            self.backend.encode,
            max_batch_size=bc.max_batch_size,
            max_queue_delay_ms=bc.max_queue_delay_ms,
            max_queue_size=bc.max_queue_size,
            length_buckets=tuple(b for b in bc.length_buckets if b <= max_len) or (max_len,),
            metrics=self.metrics,
            pad_id=self.tokenizer.pad_id,
        )
        await self.batcher.start()
        if not warmup:
            return 0.0
        t0 = time.perf_counter()
        await self.batcher.warmup()
        return time.perf_counter() - t0

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop(drain=True)

    # ---------------------------------------------------------------------- texts
    def context_text(self, req: RankInput) -> str:
        """The user text, built exactly as fine-tuning built it (engine/text.py)."""
        texts: list[str] = []
        for i, hid in enumerate(req.history_item_ids):
            row = self.bundle.index.get(hid)
            if row is None:
                raise NotFoundError(f"history_item_ids[{i}]: item {hid!r} is not in the catalog")
            texts.append(self.bundle.items[row].text)
        return user_context_text(texts, req.context_text)

    def item_texts(self, item_ids: Sequence[str], req: RankInput) -> list[str]:
        """The text of each item: the caller's candidate text, else the catalog text."""
        given = {c.item_id: c.text for c in req.candidates if c.text}
        index, items = self.bundle.index, self.bundle.items
        out = []
        for item_id in item_ids:
            text = given.get(item_id)
            if text is None:
                row = index.get(item_id)
                text = items[row].text if row is not None else ""
            out.append(text)
        return out

    # ----------------------------------------------------------------- embeddings
    async def encode_texts(self, texts: Sequence[str], deadline: float | None) -> np.ndarray:
        """Encode texts through the dynamic batcher (no caching)."""
        t0 = time.perf_counter()
        ids = self.tokenizer.encode_batch(list(texts))
        self.metrics.stage.labels("tokenize").observe(time.perf_counter() - t0)
        return await self.batcher.submit_many(ids, deadline=deadline)  # type: ignore[no-any-return]

    async def user_embedding(self, text: str, deadline: float | None) -> np.ndarray:
        if not text.strip():
            # A user with no context and no history: the catalog centroid, so that the
            # ranking starts from what is typical of the catalog (and exploration does the rest).
            return self.centroid
        key = content_key(text)
        hit = self.user_cache.get(key)
        if hit is not None:
            self.metrics.cache.labels("user", "hit").inc()
            return hit
        self.metrics.cache.labels("user", "miss").inc()
        t0 = time.perf_counter()
        ids = self.tokenizer.encode_batch([text])[0]
        self.metrics.stage.labels("tokenize").observe(time.perf_counter() - t0)
        emb: np.ndarray = await self.batcher.submit(ids, deadline=deadline)
        self.user_cache.put(key, emb)
        return emb

    async def candidates(self, req: RankInput, deadline: float | None) -> Candidates:
        b = self.bundle
        if not req.candidates:
            return Candidates(self.catalog_ids, b.item_embeddings)
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
            keys = [content_key(text) for text in new_texts]
            missing_pos: list[int] = []
            missing_texts: list[str] = []
            missing_keys: list[str] = []
            for pos, text, key, hit in zip(
                new_pos, new_texts, keys, self.item_cache.get_many(keys), strict=True
            ):
                if hit is not None:
                    emb[pos] = hit
                else:
                    missing_pos.append(pos)
                    missing_texts.append(text)
                    missing_keys.append(key)
            self.metrics.cache.labels("item", "hit").inc(len(new_pos) - len(missing_pos))
            if missing_pos:
                self.metrics.cache.labels("item", "miss").inc(len(missing_pos))
                vecs = await self.encode_texts(missing_texts, deadline)
                emb[missing_pos] = vecs
                self.item_cache.put_many(zip(missing_keys, vecs, strict=True))
        return Candidates(ids, emb)

    def history_embedding(self, history_item_ids: Sequence[str]) -> np.ndarray:
        """The recency-weighted mean of the history items' catalog embeddings (most recent
        first; unknown ids are refused by :meth:`context_text` first), without the encoder."""
        index = self.bundle.index
        rows = [index[h] for h in history_item_ids if h in index]
        return history_vector(self.bundle.item_embeddings[rows], self.history_half_life)

    async def user_vector(self, req: RankInput, text: str, deadline: float | None) -> np.ndarray:
        """The user vector of ``req`` under ``ranking.user_representation`` (``text`` is the
        full user context text, :meth:`context_text`)."""
        mode = self.user_representation
        if mode == "text" or not req.history_item_ids:
            return await self.user_embedding(text if mode == "text" else req.context_text, deadline)
        hist = self.history_embedding(req.history_item_ids)
        if mode == "history" or not req.context_text.strip():
            return hist
        return combine(hist, await self.user_embedding(req.context_text, deadline))

    async def embed(
        self, req: RankInput, text: str, deadline: float | None
    ) -> tuple[np.ndarray, Candidates]:
        """The user vector and the candidates, encoded concurrently."""
        user_task = asyncio.ensure_future(self.user_vector(req, text, deadline))
        try:
            cands = await self.candidates(req, deadline)
        except BaseException:
            user_task.cancel()
            raise
        return await user_task, cands
