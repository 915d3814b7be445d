"""The embedder: from a Rank request to the user vector and the candidate matrix.

It owns the tokenizer, the dynamic batcher in front of the encoder backend, and the two
embedding caches (user contexts with a TTL; candidate texts that are not in the catalog).
Catalog candidates come from the bundle's precomputed matrix and cost no encoder call.
Tokenization runs on a worker thread, never on the event loop: a request with hundreds of
new texts must not stall every other call the loop is serving.
The user vector follows ``ranking.user_representation`` (:mod:`explorank.engine.user_vectors`):
with ``history``, a user described by catalog history alone costs no encoder call either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from explorank.engine import tracing
from explorank.engine.cache import LRUCache, content_key
from explorank.engine.catalog import Catalog
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


def _nbytes(arr: np.ndarray) -> int:
    # the array object (112 B), its key (81 B) and its entries in the cache's maps (~200 B,
    # measured with tracemalloc)
    return int(arr.nbytes) + 400


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
        max_new_texts: int = 255,
        catalog: Catalog | None = None,
        ranking: RankingConfig | None = None,
    ) -> None:
        self.bundle = bundle
        self.max_new_texts = int(max_new_texts)
        # The catalog's matrices are read-only: plugins receive them on every whole-catalog
        # Rank, and must not be able to corrupt them for the requests that follow.
        self.catalog = catalog if catalog is not None else Catalog.from_bundle(bundle)
        self._centroid: tuple[Catalog, np.ndarray] | None = None
        self.user_representation = ranking.user_representation if ranking else "text"
        self.history_half_life = ranking.history_half_life if ranking else 10.0
        self.backend = backend
        self.tokenizer = tokenizer
        self.batching = batching
        self.metrics = metrics
        self.user_cache: LRUCache[np.ndarray] = LRUCache(
            cache.user_max_entries,
            ttl_s=cache.user_ttl_s,
            max_bytes=int(cache.user_max_mb * (1 << 20)),
            sizeof=_nbytes,
        )
        self.item_cache: LRUCache[np.ndarray] = LRUCache(
            cache.item_max_entries, max_bytes=int(cache.item_max_mb * (1 << 20)), sizeof=_nbytes
        )
        self.batcher: Any = None
        self._tokenize_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="explorank-tokenize"
        )

    def set_catalog(self, catalog: Catalog) -> None:
        """Swap in a changed catalog (Ranks in progress keep the one they started with)."""
        self.catalog = catalog

    @property
    def centroid(self) -> np.ndarray:
        """The unit mean of the rankable catalog (computed once per catalog)."""
        cached = self._centroid
        if cached is None or cached[0] is not self.catalog:
            cached = self._centroid = (self.catalog, self.catalog.centroid())
        return cached[1]

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, warmup: bool = True) -> float:
        """Start the batcher (and warm every bucket x batch shape); returns warm-up seconds."""
        from explorank.engine.batcher import DynamicBatcher

        bc = self.batching
        max_len = self.bundle.max_seq_length
        lanes = max(1, int(getattr(self.backend, "lanes", 1)))
        max_batch_size = bc.max_batch_size
        if lanes > 1:  # batching.lane_batch_size per lane thread
            lane_threads = max(1, int(getattr(self.backend, "lane_threads", 1)))
            max_batch_size = min(max_batch_size, bc.lane_batch_size * lane_threads)
        self.batcher = DynamicBatcher(
            self.backend.encode,
            max_batch_size=max_batch_size,
            max_queue_delay_ms=bc.max_queue_delay_ms,
            max_queue_size=bc.max_queue_size,
            max_request_share=bc.max_request_share,
            max_queue_wait_ms=bc.max_queue_wait_ms,
            deadline_share=bc.deadline_share,
            max_batch_tokens=bc.max_batch_tokens,
            merge_buckets=bc.merge_buckets,
            length_buckets=tuple(b for b in bc.length_buckets if b <= max_len) or (max_len,),
            metrics=self.metrics,
            pad_id=self.tokenizer.pad_id,
            max_inflight_batches=lanes,
            lane_init=getattr(self.backend, "bind_lane", None) if lanes > 1 else None,
        )
        await self.batcher.start()
        if not warmup:
            return 0.0
        t0 = time.perf_counter()
        await self.batcher.warmup()
        # the encoder's other sessions: its lanes, a worker's burst session (every shape)
        extra = getattr(self.backend, "extra_sessions", None)
        for label, fn, every_shape in extra() if extra is not None else ():
            shapes = None if every_shape else [(1, b) for b in self.batcher.length_buckets]
            await self.batcher.warmup(shapes, encode_fn=fn, label=label)
        return time.perf_counter() - t0

    def healthy(self) -> tuple[bool, str]:
        """The batcher runs and the encoder has not failed its last batches."""
        batcher = self.batcher
        if batcher is None or batcher.state != "running":
            return False, f"the encoder batcher is {getattr(batcher, 'state', 'not started')}"
        if batcher.stats.consecutive_failures >= 3:
            return False, (
                f"the encoder failed its last {batcher.stats.consecutive_failures} batches"
            )
        return True, ""

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop(drain=True)
        self._tokenize_pool.shutdown(wait=False)

    async def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of ``texts``, computed on the tokenizer thread."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        with tracing.stage("tokenize", **{"explorank.texts": len(texts)}):
            ids: list[np.ndarray] = await loop.run_in_executor(
                self._tokenize_pool, self.tokenizer.encode_batch, list(texts)
            )
        self.metrics.stage.labels("tokenize").observe(time.perf_counter() - t0)
        return ids

    # ---------------------------------------------------------------------- texts
    def context_text(self, req: RankInput) -> str:
        """The user text, built exactly as fine-tuning built it (engine/text.py)."""
        texts: list[str] = []
        catalog = self.catalog
        for i, hid in enumerate(req.history_item_ids):
            text = catalog.text(hid)  # retired items still describe a user's past
            if text is None:
                raise NotFoundError(f"history_item_ids[{i}]: item {hid!r} is not in the catalog")
            texts.append(text)
        return user_context_text(texts, req.context_text)

    def item_texts(self, item_ids: Sequence[str], req: RankInput) -> list[str]:
        """The text of each item: the caller's candidate text, else the catalog text."""
        given = {c.item_id: c.text for c in req.candidates if c.text}
        catalog = self.catalog
        return [given.get(item_id) or catalog.text(item_id) or "" for item_id in item_ids]

    # ----------------------------------------------------------------- embeddings
    async def encode_texts(self, texts: Sequence[str], deadline: float | None) -> np.ndarray:
        """Encode texts through the dynamic batcher (no caching)."""
        self.batcher.precheck(deadline)
        ids = await self.tokenize(texts)
        return await self.batcher.submit_many(ids, deadline=deadline)  # type: ignore[no-any-return]

    async def encode_many(self, texts: Sequence[str]) -> np.ndarray:
        """Encode any number of texts, in chunks that fit one request's share of the encoder
        queue (for catalog changes: not a client's request, no deadline)."""
        if not texts:
            return np.zeros((0, self.catalog.dim), dtype=np.float32)
        step = max(1, int(self.batcher.max_per_request))
        parts = [
            await self.encode_texts(texts[i : i + step], None) for i in range(0, len(texts), step)
        ]
        return np.concatenate(parts)

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
        self.batcher.precheck(deadline)
        (ids,) = await self.tokenize([text])
        emb: np.ndarray = await self.batcher.submit(ids, deadline=deadline)
        self.user_cache.put(key, emb)
        return emb

    async def candidates(self, req: RankInput, deadline: float | None) -> Candidates:
        catalog = self.catalog
        if not req.candidates:
            return Candidates(catalog.ids, catalog.rank_embeddings)
        ids: list[str] = []
        rows = np.empty(len(req.candidates), dtype=np.int64)
        new_pos: list[int] = []
        new_texts: list[str] = []
        for i, cand in enumerate(req.candidates):
            ids.append(cand.item_id)
            row = catalog.row(cand.item_id)
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
        if len(new_pos) > self.max_new_texts:
            raise InvalidArgumentError(
                "candidates",
                f"{len(new_pos)} candidates are not in the catalog and must be encoded from "
                f"their text; the limit is {self.max_new_texts} per request "
                "(limits.max_new_texts): send the rest in another request",
            )
        emb = np.empty((len(ids), catalog.dim), dtype=np.float32)
        known = rows >= 0
        emb[known] = catalog.embeddings[rows[known]]
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
        catalog = self.catalog  # retired items keep their rows: they still describe a past
        rows = [catalog.index[h] for h in history_item_ids if h in catalog.index]
        return history_vector(catalog.embeddings[rows], self.history_half_life)

    def _uses_history(self, req: RankInput) -> bool:
        """True when the user vector of ``req`` includes its history's catalog embeddings."""
        return self.user_representation != "text" and bool(req.history_item_ids)

    def _user_text(self, req: RankInput, text: str) -> str | None:
        """The text :meth:`user_vector` encodes for ``req`` (``text``: the full user context
        text); None when it encodes none."""
        if self.user_representation == "text":
            return text
        if not self._uses_history(req):
            return req.context_text
        if self.user_representation == "history" or not req.context_text.strip():
            return None
        return req.context_text

    def _user_needs_encoder(self, req: RankInput, text: str) -> bool:
        """True when the user vector of ``req`` is not cached and needs the encoder."""
        user_text = self._user_text(req, text)
        return (
            bool(user_text and user_text.strip()) and content_key(user_text) not in self.user_cache
        )

    async def user_vector(self, req: RankInput, text: str, deadline: float | None) -> np.ndarray:
        """The user vector of ``req`` under ``ranking.user_representation`` (``text`` is the
        full user context text, :meth:`context_text`)."""
        user_text = self._user_text(req, text)
        if not self._uses_history(req):
            return await self.user_embedding(user_text or "", deadline)
        hist = self.history_embedding(req.history_item_ids)
        if user_text is None:
            return hist
        return combine(hist, await self.user_embedding(user_text, deadline))

    async def embed(
        self, req: RankInput, text: str, deadline: float | None
    ) -> tuple[np.ndarray, Candidates]:
        """The user vector and the candidates, encoded concurrently. When the user vector
        needs the encoder and the encoder is overloaded, the request is refused before any
        other work on it (looking up and encoding its candidates): under overload most
        requests are refused, and a refusal should cost as little as possible."""
        if self._user_needs_encoder(req, text):
            self.batcher.precheck(deadline)
        user_task = asyncio.ensure_future(self.user_vector(req, text, deadline))
        try:
            cands = await self.candidates(req, deadline)
        except BaseException:
            user_task.cancel()
            raise
        return await user_task, cands
