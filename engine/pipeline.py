"""The Rank and Reward paths (transport-independent): the engine's core.

The gRPC servicer (:mod:`explorank.engine.server`) is a thin layer over :class:`Engine`;
the evaluation tools and tests call it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from explorank import __version__
from explorank.engine.bundle import Bundle, load_bundle
from explorank.engine.cache import LRUCache
from explorank.engine.config import Config
from explorank.engine.metrics import EngineMetrics
from explorank.engine.requests import (
    RankedItemOutput,
    RankInput,
    RankOutput,
    RewardOutput,
    validate_rank,
    validate_reward,
)
from explorank.engine.text import user_context_text
from explorank.errors import (
    ConfigError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from explorank.plugins.api import (
    EventRecord,
    Policy,
    PolicyStats,
    RankContext,
    RewardContext,
    RewardRecord,
    Scorer,
    ScorerContext,
    StateStore,
    StateUnavailableError,
    StatsDelta,
)
from explorank.plugins.manager import PluginManager

log = logging.getLogger("explorank.engine")

#: Candidate counts above this are scored off the event loop.
_OFFLOAD_SCORING_ABOVE = 2048


def _event_seed(base: int, event_id: str) -> np.random.Generator:
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return np.random.default_rng([base & 0xFFFFFFFF, int.from_bytes(digest, "little")])


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass
class _Candidates:
    ids: list[str]
    embeddings: np.ndarray  # (n, d) float32


class Engine:
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
        from explorank.engine.backends import create_backend
        from explorank.engine.tokenize import Tokenizer

        self.config = config
        self.bundle = bundle
        self.metrics = metrics or EngineMetrics()
        self.plugins = plugins or PluginManager(
            block_external=config.plugins.block_external, allow=config.plugins.allow
        )
        bc = config.backend
        self.backend = backend or create_backend(
            bundle,
            backend=bc.backend,
            precision=bc.precision,
            provider=bc.provider,
            intra_op_threads=bc.intra_op_threads,
            max_batch_size=config.batching.max_batch_size,
        )
        self.tokenizer = Tokenizer.from_bundle(bundle)
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
            providers=(getattr(self.backend, "provider", "CPUExecutionProvider"),),
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

    # ------------------------------------------------------------------ background
    async def _sync_loop(self) -> None:
        interval = self.config.state.sync_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            for name, policy in self.policies.items():
                if not policy.stateful:
                    continue
                try:
                    fresh = await self.store.load_stats(name)
                except StateUnavailableError as exc:
                    log.warning("stats sync failed, keeping last known state: %s", exc)
                    break
                fresh.version = self.stats[name].version + 1
                self.stats[name] = fresh

    async def close_windows(self, now: float | None = None, batch: int = 500) -> int:
        """Apply ``state.default_reward`` to every returned item without a reward in events
        whose reward window has closed, then mark those events closed. Idempotent: a
        reward already recorded for (event, item) is a duplicate and is not applied again.
        Returns the number of default rewards applied."""
        sc = self.config.state
        if sc.default_reward is None:
            return 0
        value = float(sc.default_reward)
        cutoff = (time.time() if now is None else now) - sc.reward_window_s
        applied = 0
        while True:
            events = await self.store.events_to_close(cutoff, batch)
            if not events:
                return applied
            for event in events:
                for item_id in event.ranked_ids:
                    deltas = self.deltas_for(event, item_id, value)
                    record = RewardRecord(event.event_id, item_id, value, time.time())
                    if await self.store.record_reward(record, deltas):
                        for name, delta in deltas.items():
                            self.stats[name].apply(delta)
                        applied += 1
            await self.store.mark_events_closed([e.event_id for e in events])
            if len(events) < batch:
                return applied

    async def _window_loop(self) -> None:
        while True:
            try:
                applied = await self.close_windows()
                if applied:
                    log.info("applied the default reward to %d unrewarded items", applied)
                    self.metrics.rewards.labels("default").inc(applied)
            except Exception as exc:  # keep serving; retried next round
                log.warning("closing reward windows failed: %s", exc)
            await asyncio.sleep(self.config.state.window_check_interval_s)

    async def _retention_loop(self) -> None:
        sc = self.config.state
        while True:
            try:
                dropped = await self.store.apply_retention(
                    sc.retention_max_age_s, sc.retention_max_events
                )
                if dropped:
                    log.info("retention dropped %d events", dropped)
            except Exception as exc:  # keep serving
                log.warning("retention failed: %s", exc)
            await asyncio.sleep(sc.retention_interval_s)

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
        name = name or self.config.ranking.default_scorer
        scorer = self.scorers.get(name)
        if scorer is None:
            raise NotFoundError(
                f"unknown scorer {name!r}; available: {', '.join(sorted(self.scorers))}"
            )
        return name, scorer

    def _policy(self, name: str) -> tuple[str, Policy]:
        name = name or self.config.ranking.default_policy
        policy = self.policies.get(name)
        if policy is None:
            raise NotFoundError(
                f"unknown policy {name!r}; available: {', '.join(sorted(self.policies))}"
            )
        return name, policy

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
            return _Candidates([it.id for it in b.items], b.item_embeddings)
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

    @staticmethod
    def _output_from_event(event: EventRecord) -> RankOutput:
        items = [
            RankedItemOutput(i, float(s), float(p), bool(e))
            for i, s, p, e in zip(
                event.ranked_ids,
                event.ranked_scores,
                event.propensities,
                event.explored,
                strict=True,
            )
        ]
        return RankOutput(event.event_id, items, event.model_version, event.scorer, event.policy)

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
                    return self._output_from_event(prior)
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
            return self._output_from_event(event)
        finally:
            self.metrics.stage.labels("total").observe(time.perf_counter() - t_start)
            self._leave()

    # ------------------------------------------------------------------ Reward
    async def reward(self, event_id: str, item_id: str, value: float) -> RewardOutput:
        self._enter()
        try:
            validate_reward(event_id, item_id, value, self.config.limits)
            event = self.event_cache.get(event_id)
            if event is None:
                event = await self.store.get_event(event_id)
            if event is None:
                raise NotFoundError(
                    f"event_id: unknown event {event_id!r} (never logged, or dropped by retention)"
                )
            pos = event.position_of(item_id)
            if pos < 0:
                raise InvalidArgumentError(
                    "item_id", f"item {item_id!r} was not returned by event {event_id!r}"
                )
            age = time.time() - event.created_at
            window = self.config.state.reward_window_s
            if age > window:
                raise FailedPreconditionError(
                    f"reward window closed: event {event_id!r} is {age:.0f} s old; rewards are accepted "
                    f"for {window:.0f} s (state.reward_window_s)"
                )
            deltas = self.deltas_for(event, item_id, float(value))
            record = RewardRecord(event_id, item_id, float(value), time.time())
            accepted = await self.store.record_reward(record, deltas)
            if accepted:
                for name, delta in deltas.items():
                    self.stats[name].apply(delta)
            self.metrics.rewards.labels("accepted" if accepted else "duplicate").inc()
            return RewardOutput(accepted=accepted, duplicate=not accepted)
        finally:
            self._leave()

    def deltas_for(self, event: EventRecord, item_id: str, value: float) -> dict[str, StatsDelta]:
        """What every stateful policy learns from one reward (policy name -> delta).

        Every stateful policy learns from every reward, whichever policy served the event:
        their statistics describe the users, items and representation, not the policy."""
        pos = event.position_of(item_id)
        rctx = RewardContext(
            event_id=event.event_id,
            item_id=item_id,
            value=value,
            score=float(event.ranked_scores[pos]),
            position=pos,
            propensity=float(event.propensities[pos]),
            user_embedding=event.user_embedding,
            item_embedding=event.ranked_embeddings[pos],
        )
        deltas: dict[str, StatsDelta] = {}
        for name, policy in self.policies.items():
            if policy.stateful:
                delta = policy.update(rctx, self.stats[name])
                if delta is not None and not delta.is_empty():
                    deltas[name] = delta
        return deltas

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
        }
