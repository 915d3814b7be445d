"""The engine (transport-independent): construction, lifecycle and the Rank path.

The Reward path and background feedback work live in :mod:`.feedback`, user and candidate
embeddings in :mod:`.embeddings`. The gRPC servicer (:mod:`explorank.engine.server`) is a
thin layer over :class:`Engine`;
the evaluation tools and tests call it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Any, TypeVar

import numpy as np

from explorank import __version__
from explorank.engine.bundle import Bundle, load_bundle
from explorank.engine.cache import LRUCache
from explorank.engine.config import Config
from explorank.engine.embeddings import EmbeddingMixin
from explorank.engine.feedback import FeedbackMixin
from explorank.engine.metrics import EngineMetrics
from explorank.engine.requests import (
    RankedItemOutput,
    RankInput,
    RankOutput,
    validate_rank,
)
from explorank.errors import (
    ConfigError,
    NotFoundError,
    UnavailableError,
)
from explorank.plugins.api import (
    EventRecord,
    Policy,
    PolicyStats,
    RankContext,
    Scorer,
    ScorerContext,
    StateStore,
)
from explorank.plugins.manager import PluginManager

log = logging.getLogger("explorank.engine")
T = TypeVar("T")

#: Candidate counts above this are scored off the event loop.
_OFFLOAD_SCORING_ABOVE = 2048


def _event_seed(base: int, event_id: str) -> np.random.Generator:
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return np.random.default_rng([base & 0xFFFFFFFF, int.from_bytes(digest, "little")])


def _lookup(kind: str, name: str, table: dict[str, T]) -> tuple[str, T]:
    """A plugin instance by name, or NOT_FOUND listing what is available."""
    found = table.get(name)
    if found is None:
        raise NotFoundError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table))}")
    return name, found


class Engine(EmbeddingMixin, FeedbackMixin):
    """Loads a bundle, runs the encoder through the dynamic batcher, and serves Rank/Reward."""

    def __init__(
        self,
        config: Config,
        bundle: Bundle,
        *,
        plugins: PluginManager | None = None,
        store: StateStore | None = None,
        metrics: EngineMetrics | None = None,
        backend: Any = None,
    ) -> None:
        from explorank.engine.int8_check import PrecisionChoice, choose_encoder
        from explorank.engine.tokenize import Tokenizer

        self.config = config
        self.bundle = bundle
        self.metrics = metrics or EngineMetrics()
        self.plugins = plugins or PluginManager(
            block_external=config.plugins.block_external, allow=config.plugins.allow
        )
        self.tokenizer = Tokenizer.from_bundle(bundle)
        if backend is None:
            self.backend, self.precision_choice = choose_encoder(
                bundle,
                self.tokenizer,
                config.backend,
                max_batch_size=config.batching.max_batch_size,
            )
        else:
            self.backend = backend
            served = str(getattr(backend, "precision", "unknown"))
            self.precision_choice = PrecisionChoice(
                config.backend.precision, served, f"{served}: backend given by the caller"
            )
        self.metrics.observe_precision(self.precision_choice.served, self.precision_choice.check)
        self.user_cache = LRUCache(config.cache.user_max_entries, ttl_s=config.cache.user_ttl_s)
        self.item_cache = LRUCache(config.cache.item_max_entries)
        self.event_cache = LRUCache(10_000)
        centroid = (
            bundle.item_embeddings.mean(axis=0)
            if len(bundle.items)
            else np.zeros(bundle.embedding_dim)
        )
        norm = float(np.linalg.norm(centroid))
        self._centroid = (centroid / norm if norm > 0 else centroid).astype(np.float32)
        self._catalog_ids = [it.id for it in bundle.items]
        self._store = store
        self.scorers: dict[str, Scorer] = {}
        self.policies: dict[str, Policy] = {}
        self.stats: dict[str, PolicyStats] = {}
        self.batcher: Any = None
        self.ready = False
        self.accepting = True
        self._tasks: list[asyncio.Task[Any]] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> Engine:
        if config.model.bundle is None:
            raise ConfigError("model.bundle is not set (pass --bundle DIR)")
        bundle = load_bundle(config.model.bundle, verify=config.model.verify_checksums)
        return cls(config, bundle, **kwargs)

    @property
    def store(self) -> StateStore:
        assert self._store is not None, "engine not started"
        return self._store

    def _check_defaults(self) -> None:
        rc = self.config.ranking
        self.plugins.require("scorer", rc.default_scorer)
        self.plugins.require("policy", rc.default_policy)
        self.plugins.require("state store", self.config.state.store)

    def _build_plugins(self) -> None:
        rc = self.config.ranking
        ctx = ScorerContext(
            embedding_dim=self.bundle.embedding_dim,
            heads=self.bundle.heads(),
            bundle_dir=self.bundle.path,
            providers=self._head_providers(),
            intra_op_threads=1,
        )
        for name in self.plugins.scorer_classes():
            try:
                self.scorers[name] = self.plugins.create_scorer(
                    name, ctx, **rc.scorers.get(name, {})
                )
            except Exception as exc:  # a third-party scorer that cannot serve this bundle
                if name == rc.default_scorer:
                    raise ConfigError(f"default scorer {name!r} cannot be created: {exc}") from exc
                log.warning("scorer %s unavailable for this bundle: %s", name, exc)
        for name in self.plugins.policy_classes():
            try:
                self.policies[name] = self.plugins.create_policy(name, **rc.policies.get(name, {}))
            except Exception as exc:
                if name == rc.default_policy or name in rc.policies:
                    raise ConfigError(f"policy {name!r} cannot be created: {exc}") from exc
                log.warning("policy %s unavailable: %s", name, exc)
        unknown = [n for n in list(rc.policies) if n not in self.policies]
        if unknown:
            raise ConfigError(f"ranking.policies configures unknown policies {unknown}")

    def _head_providers(self) -> tuple[str, ...]:
        """ONNX Runtime providers for scoring heads: the encoder's device, as ORT names.

        A head is a small MLP: on a GPU the CUDA EP (never the TensorRT EP, whose engine
        build would cost more than the head), else the CPU; the native TensorRT backend's
        provider ("TensorRT") is not an ORT provider at all."""
        import onnxruntime as ort

        on_gpu = getattr(self.backend, "provider", "") in (
            "TensorRT",
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
        )
        if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            return ("CUDAExecutionProvider", "CPUExecutionProvider")
        return ("CPUExecutionProvider",)

    async def start(self, *, warmup: bool = True) -> None:
        from threadpoolctl import threadpool_limits

        from explorank.engine.batcher import DynamicBatcher

        # The encoder parallelises inside ONNX Runtime; numpy's BLAS work on the Rank path
        # (scoring, linear policies) is small, and a second multi-threaded pool spinning
        # next to ORT's costs far more than it gains.
        threadpool_limits(limits=1, user_api="blas")

        self._check_defaults()
        self._build_plugins()
        if self._store is None:
            sc = self.config.state
            self._store = self.plugins.create_store(sc.store, **sc.options)
        await self.store.open()
        await self._load_all_stats()
        recover = getattr(self.store, "recover_pending", None)
        if recover is not None:  # a shared store: re-apply what crashed replicas left unflushed
            recovered = await recover(
                lambda event, reward: self.deltas_for(event, reward.item_id, reward.value)
            )
            if recovered:
                log.info(
                    "recovered statistics of %d rewards left unflushed by a crashed replica",
                    recovered,
                )
                await self._load_all_stats()
        bc = self.config.batching
        self.batcher = DynamicBatcher(
            self.backend.encode,
            max_batch_size=bc.max_batch_size,
            max_queue_delay_ms=bc.max_queue_delay_ms,
            max_queue_size=bc.max_queue_size,
            length_buckets=tuple(b for b in bc.length_buckets if b <= self.bundle.max_seq_length)
            or (self.bundle.max_seq_length,),
            metrics=self.metrics,
            pad_id=self.tokenizer.pad_id,
        )
        await self.batcher.start()
        if warmup:
            t0 = time.perf_counter()
            await self.batcher.warmup()
            log.info("warm-up done in %.2f s", time.perf_counter() - t0)
        if self.store.shared:
            self._tasks.append(asyncio.create_task(self._sync_loop(), name="explorank-stats-sync"))
        sc = self.config.state
        if sc.default_reward is not None:
            if not self.store.supports_window_close:
                raise ConfigError(
                    f"state.default_reward is set, but the {self.store.name!r} store cannot list "
                    "events whose reward window closed; unset it or use the sqlite store"
                )
            self._tasks.append(asyncio.create_task(self._window_loop(), name="explorank-windows"))
        if sc.retention_max_age_s or sc.retention_max_events:
            self._tasks.append(
                asyncio.create_task(self._retention_loop(), name="explorank-retention")
            )
        self.ready = True
        self.metrics.ready.set(1)
        self.plugins.call_engine_started(self)

    async def _load_all_stats(self) -> None:
        for name, policy in self.policies.items():
            self.stats[name] = (
                await self.store.load_stats(name) if policy.stateful else PolicyStats()
            )

    async def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new calls, let in-flight ones finish (up to ``grace_s``), flush state."""
        self.accepting = False
        self.ready = False
        self.metrics.ready.set(0)
        self.plugins.call_engine_stopping(self)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        except asyncio.TimeoutError:
            log.warning("%d calls still in flight after %.1f s grace", self._inflight, grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.batcher is not None:
            await self.batcher.stop(drain=True)
        if self._store is not None:
            await self._store.close()
        close = getattr(self.backend, "close", None)
        if close:
            close()

    # ------------------------------------------------------------------ helpers
    def _enter(self) -> None:
        if not self.accepting:
            raise UnavailableError("server is shutting down")
        if not self.ready:
            raise UnavailableError("server is not ready (warming up)")
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def _scorer(self, name: str) -> tuple[str, Scorer]:
        return _lookup("scorer", name or self.config.ranking.default_scorer, self.scorers)

    def _policy(self, name: str) -> tuple[str, Policy]:
        return _lookup("policy", name or self.config.ranking.default_policy, self.policies)

    def _output_from_event(self, event: EventRecord, req: RankInput) -> RankOutput:
        texts = self._item_texts(event.ranked_ids, req) if req.include_text else None
        items = [
            RankedItemOutput(i, float(s), float(p), bool(e), texts[j] if texts else "")
            for j, (i, s, p, e) in enumerate(
                zip(
                    event.ranked_ids,
                    event.ranked_scores,
                    event.propensities,
                    event.explored,
                    strict=True,
                )
            )
        ]
        return RankOutput(event.event_id, items, event.model_version, event.scorer, event.policy)

    def _item_texts(self, item_ids: list[str], req: RankInput) -> list[str]:
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

    # ------------------------------------------------------------------ Rank
    async def rank(self, req: RankInput, *, deadline: float | None = None) -> RankOutput:
        """Rank candidates for one request. ``deadline`` is a ``time.monotonic()`` time."""
        self._enter()
        t_start = time.perf_counter()
        try:
            explicit_event = bool(req.event_id)
            req = validate_rank(req, self.config.limits)
            scorer_name, scorer = self._scorer(req.scorer)
            policy_name, policy = self._policy(req.policy)
            if explicit_event:
                prior = self.event_cache.get(req.event_id) or await self.store.get_event(
                    req.event_id
                )
                if prior is not None:
                    return self._output_from_event(prior, req)
            text = self._context_text(req)
            user_task = asyncio.ensure_future(self._user_embedding(text, deadline))
            try:
                cands = await self._candidates(req, deadline)
            except BaseException:
                user_task.cancel()
                raise
            user = await user_task

            t0 = time.perf_counter()
            n = len(cands.ids)
            if n > _OFFLOAD_SCORING_ABOVE:
                scores = await asyncio.to_thread(scorer.score, user, cands.embeddings)
            else:
                scores = scorer.score(user, cands.embeddings)
            scores = np.asarray(scores, dtype=np.float32).reshape(-1)
            if scores.shape[0] != n or not np.all(np.isfinite(scores)):
                raise UnavailableError(f"scorer {scorer_name!r} returned invalid scores")
            t1 = time.perf_counter()
            self.metrics.stage.labels("score").observe(t1 - t0)

            ctx = RankContext(
                scores=scores,
                item_ids=cands.ids,
                item_embeddings=cands.embeddings,
                user_embedding=user,
                top_k=req.top_k,
                rng=_event_seed(self.config.ranking.seed, req.event_id),
                stats=self.stats.get(policy_name, PolicyStats()),
            )
            ranking = policy.rank(ctx)
            ranking.validate(n, req.top_k)
            t2 = time.perf_counter()
            self.metrics.stage.labels("policy").observe(t2 - t1)

            order = np.asarray(ranking.order, dtype=np.int64)
            ranked_ids = [cands.ids[i] for i in order.tolist()]
            ranked_scores = scores[order].astype(float).tolist()
            props = np.asarray(ranking.propensities, dtype=np.float64).tolist()
            explored = np.asarray(ranking.explored, dtype=bool).tolist()
            event = EventRecord(
                event_id=req.event_id,
                created_at=time.time(),
                user_id=req.user_id,
                scorer=scorer_name,
                policy=policy_name,
                model_version=self.bundle.model_version,
                candidate_ids=cands.ids,
                candidate_scores=scores,
                ranked_ids=ranked_ids,
                ranked_scores=ranked_scores,
                propensities=props,
                explored=explored,
                user_embedding=np.asarray(user, dtype=np.float32),
                ranked_embeddings=np.ascontiguousarray(cands.embeddings[order], dtype=np.float32),
                context_text=text,
                top_k=req.top_k,
            )
            await self.store.log_event(event)
            self.event_cache.put(event.event_id, event)
            self.metrics.stage.labels("log").observe(time.perf_counter() - t2)
            return self._output_from_event(event, req)
        finally:
            self.metrics.stage.labels("total").observe(time.perf_counter() - t_start)
            self._leave()

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        bc = self.config.batching
        return {
            "model_name": self.bundle.model_name,
            "model_version": self.bundle.model_version,
            "embedding_dim": self.bundle.embedding_dim,
            "max_seq_length": self.bundle.max_seq_length,
            "backend": getattr(self.backend, "name", "unknown"),
            "execution_provider": getattr(self.backend, "provider", "unknown"),
            "precision": getattr(self.backend, "precision", "unknown"),
            "precision_reason": self.precision_choice.reason,
            "scorers": sorted(self.scorers),
            "policies": sorted(self.policies),
            "default_scorer": self.config.ranking.default_scorer,
            "default_policy": self.config.ranking.default_policy,
            "batching": {
                "max_batch_size": bc.max_batch_size,
                "max_queue_delay_ms": bc.max_queue_delay_ms,
                "max_queue_size": bc.max_queue_size,
                "length_buckets": list(bc.length_buckets),
            },
            "catalog_size": len(self.bundle.items),
            "state_store": self.config.state.store,
            "version": __version__,
            **(
                {"int8_gate": self.precision_choice.check.as_info()}
                if self.precision_choice.check is not None
                else {}
            ),
        }
