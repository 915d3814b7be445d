"""The engine (transport-independent): what it is made of, its lifecycle, and the Rank path.

An :class:`Engine` owns a few objects with one job each and passes them what they need:

- the served :class:`~explorank.engine.generation.Generation`: the bundle, its encoder
  backend (chosen, and its INT8 encoder checked on this CPU, by
  :mod:`explorank.engine.int8_check`), an :class:`~explorank.engine.embedder.Embedder`
  (tokenizer, dynamic batcher, caches, the live catalog) and the scorers built for the
  bundle — replaced atomically by a hot reload;
- a :class:`~explorank.engine.decider.Decider`: scorer and policy plugins, their statistics,
  and the pure decision core (:mod:`explorank.engine.decision`);
- an :class:`~explorank.engine.feedback.EventLog` and a
  :class:`~explorank.engine.feedback.Feedback`: the event log and the Reward path with its
  background work;
- the state store plugin.

The gRPC servicer (:mod:`explorank.engine.server`) is a thin layer over it; tests and tools
call it directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from explorank import __version__
from explorank.engine import generation, tracing
from explorank.engine.bundle import Bundle, load_bundle
from explorank.engine.config import Config
from explorank.engine.decider import Decider
from explorank.engine.decision import Decision, to_event
from explorank.engine.embedder import Embedder
from explorank.engine.feedback import EventLog, Feedback
from explorank.engine.generation import Generation
from explorank.engine.int8_check import PrecisionChoice
from explorank.engine.live import LiveChanges
from explorank.engine.logformat import note_event_id
from explorank.engine.metrics import EngineMetrics
from explorank.engine.requests import (
    RankedItemOutput,
    RankInput,
    RankOutput,
    RewardOutput,
    request_fingerprint,
    validate_rank,
    validate_texts,
)
from explorank.errors import (
    AlreadyExistsError,
    ConfigError,
    InvalidArgumentError,
    UnavailableError,
)
from explorank.plugins.api import EventRecord, StateStore
from explorank.plugins.manager import PluginManager

log = logging.getLogger("explorank.engine")

#: How long :meth:`Engine.stop` waits for the state store to flush and close.
STORE_CLOSE_TIMEOUT_S = 30.0
#: How long :meth:`Engine.stop` waits for its cancelled background tasks to end.
TASK_STOP_TIMEOUT_S = 5.0


async def supervise(
    name: str,
    job: Callable[[], Awaitable[None]],
    *,
    first_backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
) -> None:
    """Run a background loop forever: an unexpected exception is logged with its traceback
    and the loop restarts after a backoff that doubles up to ``max_backoff_s`` (and resets
    once the loop has run longer than the backoff)."""
    backoff = first_backoff_s
    while True:
        started = time.monotonic()
        try:
            await job()
            return  # a loop that ends by itself is done
        except asyncio.CancelledError:
            raise
        except Exception:
            if time.monotonic() - started > backoff:
                backoff = first_backoff_s
            log.exception("background task %s failed; restarting in %.0f s", name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)


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
        self.config = config
        self.metrics = metrics or EngineMetrics()
        pc = config.plugins
        self.plugins = plugins or PluginManager(
            block_external=pc.block_external, allow=pc.allow, block=pc.block, override=pc.override
        )
        self.gen = generation.prepare(config, bundle, self.metrics, backend=backend)
        self.metrics.observe_precision(
            self.gen.precision_choice.served, self.gen.precision_choice.check
        )
        self.decider = Decider(
            config.ranking,
            self.plugins,
            generation.scorer_context(bundle, self.gen.backend),
            self.metrics,
        )
        if store is None:
            self.plugins.require("state store", config.state.store)
            store = self.plugins.create_store(config.state.store, **config.state.store_options())
        self.store = store
        self.live = LiveChanges(self)
        cc = config.cache
        self.events = EventLog(
            store,
            lambda: self.gen.catalog,
            previous=lambda version: self.live.previous_catalogs.get(version),
            cache_entries=cc.event_max_entries,
            cache_bytes=int(cc.event_max_mb * (1 << 20)),
        )
        self.feedback = Feedback(
            config.state, config.limits, self.decider, self.events, self.metrics
        )
        self.metrics.watch_caches(
            {
                "user": lambda: self.gen.embedder.user_cache,
                "item": lambda: self.gen.embedder.item_cache,
                "event": lambda: self.events.cache,
            }
        )
        self.metrics.watch_admission(lambda: getattr(self.gen.embedder.batcher, "admission", None))
        self.metrics.watch_backend(lambda: self.gen.backend)
        self.ready = False
        self.accepting = True
        self._tasks: list[asyncio.Task[Any]] = []
        self._inflight = 0
        #: event id -> the first call's event (None if it failed), while it is being decided
        self._running_events: dict[str, asyncio.Future[EventRecord | None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    # The served generation's parts (a reload replaces all of them at once).
    @property
    def bundle(self) -> Bundle:
        return self.gen.bundle

    @property
    def embedder(self) -> Embedder:
        return self.gen.embedder

    @property
    def backend(self) -> Any:
        return self.gen.backend

    @property
    def precision_choice(self) -> PrecisionChoice:
        return self.gen.precision_choice

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> Engine:
        if config.model.bundle is None:
            raise ConfigError("model.bundle is not set (pass --bundle DIR)")
        mc = config.model
        bundle = load_bundle(mc.bundle, verify=mc.verify_checksums, trusted_keys=mc.trusted_keys)
        return cls(config, bundle, **kwargs)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, warmup: bool = True) -> None:
        from threadpoolctl import threadpool_limits

        # The encoder parallelises inside ONNX Runtime; numpy's BLAS work on the Rank path
        # (scoring, linear policies) is small, and a second multi-threaded pool spinning
        # next to ORT's costs far more than it gains.
        threadpool_limits(limits=1, user_api="blas")

        self.decider.build()
        self.gen.scorers, self.gen.scorer_problems = self.decider.scorers, []
        await self.store.open()
        await self.decider.load_stats(self.store)
        await self.feedback.recover()
        seconds = await self.embedder.start(warmup=warmup)
        if warmup:
            log.info("warm-up done in %.2f s", seconds)
        if self.store.supports_catalog_changes:
            await self.sync_catalog()
        sc = self.config.state
        if sc.default_reward is not None and not self.store.supports_window_close:
            raise ConfigError(
                f"state.default_reward is set, but the {self.store.name!r} store cannot list "
                "events whose reward window closed; unset it or use the sqlite store"
            )
        jobs = self.feedback.background_tasks()
        if self.store.shared and self.store.supports_catalog_changes:
            jobs.append(("explorank-catalog-sync", self.live.catalog_sync_loop))
        for name, job in jobs:
            self._tasks.append(asyncio.create_task(supervise(name, job), name=name))
        self.ready = True
        self.metrics.ready.set(1)
        self.plugins.call_engine_started(self)

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
        if self._tasks:  # bounded: a task stuck inside a client library must not block stop
            done, stuck = await asyncio.wait(self._tasks, timeout=TASK_STOP_TIMEOUT_S)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: supervise() logged it already
            for task in stuck:
                log.error(
                    "background task %s did not stop within %.0f s; leaving it",
                    task.get_name(),
                    TASK_STOP_TIMEOUT_S,
                )
        try:
            await asyncio.wait_for(self.gen.close(0.0), timeout=STORE_CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error(
                "the encoder did not stop within %.0f s; stopping anyway", STORE_CLOSE_TIMEOUT_S
            )
        self.decider.close()
        try:  # a store whose close never returns must not keep the process from stopping
            await asyncio.wait_for(self.store.close(), timeout=STORE_CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error(
                "the %s state store did not close within %.0f s; stopping anyway",
                self.store.name,
                STORE_CLOSE_TIMEOUT_S,
            )

    async def check_health(self, timeout_s: float = 2.0) -> tuple[bool, str]:
        """Can Rank be served right now? ``(ok, why not)``: the engine is ready and
        accepting, the encoder batcher runs and its last batches did not all fail, and the
        state store answers (within ``timeout_s``)."""
        if not self.ready or not self.accepting:
            return False, "not ready" if self.accepting else "shutting down"
        healthy, why = self.embedder.healthy()
        if not healthy:
            return False, why
        try:
            store_ok = await asyncio.wait_for(self.store.healthy(), timeout_s)
        except Exception as exc:  # a store's healthy() must not take health down with it
            store_ok = False
            log.debug("state store health check raised: %s", exc)
        if not store_ok:
            return False, f"the {self.store.name} state store is unreachable"
        return True, ""

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

    # ----------------------------------------------------------------------- Rank
    async def rank(self, req: RankInput, *, deadline: float | None = None) -> RankOutput:
        """Rank candidates for one request. ``deadline`` is a ``time.monotonic()`` time.

        ``event_id`` is an idempotency key of one caller's request: repeating it with the
        same request returns the logged answer (also while the first call is still running:
        both get the first call's result); repeating it with a different request (another
        user, context, candidates, top_k, scorer or policy) is ALREADY_EXISTS."""
        self._enter()
        gen = self.gen
        gen.acquire()
        t_start = time.perf_counter()
        try:
            explicit_event = bool(req.event_id)
            req = validate_rank(req, self.config.limits)
            note_event_id(req.event_id)
            scorer_name = self.decider.scorer_name(req.scorer)
            policy_name = self.decider.policy_name(req.policy)
            fingerprint = request_fingerprint(req, scorer_name, policy_name)
            if not explicit_event:
                event = await self._decide_and_log(
                    gen, req, scorer_name, policy_name, fingerprint, deadline
                )
                return self._output(gen, event, req)
            while True:
                prior = await self.events.get(req.event_id)
                if prior is not None:
                    return self._output(gen, self._same_request(prior, req, fingerprint), req)
                running = self._running_events.get(req.event_id)
                if running is None:
                    break
                first = await asyncio.shield(running)  # None when the first call failed
                if first is not None:
                    return self._output(gen, self._same_request(first, req, fingerprint), req)
            done: asyncio.Future[EventRecord | None] = asyncio.get_running_loop().create_future()
            self._running_events[req.event_id] = done
            event = None
            try:
                event = await self._decide_and_log(
                    gen, req, scorer_name, policy_name, fingerprint, deadline
                )
            except InvalidArgumentError as exc:
                # Our read of the store raced a first call that logged the event and left the
                # in-flight map meanwhile: the event exists now, so answer as a repeat.
                prior = await self.events.get(req.event_id) if exc.field == "event_id" else None
                if prior is None:
                    raise
                event = prior
                return self._output(gen, self._same_request(prior, req, fingerprint), req)
            finally:
                done.set_result(event)
                del self._running_events[req.event_id]
            return self._output(gen, event, req)
        finally:
            self.metrics.stage.labels("total").observe(time.perf_counter() - t_start)
            gen.release()
            self._leave()

    async def encode(
        self, texts: list[str], *, deadline: float | None = None, field: str = "texts"
    ) -> tuple[np.ndarray, str]:
        """The encoder alone: the embeddings of ``texts`` (``(n, dim)`` float32, L2-normalised)
        through the same tokenizer thread and dynamic batcher as Rank — admission, deadlines,
        fairness — with no cache and nothing logged. Returns them with the model version.
        ``field`` names the texts in error messages."""
        self._enter()
        gen = self.gen
        gen.acquire()
        try:
            validate_texts(texts, self.config.limits, field, gen.embedder.batcher.max_per_request)
            vecs = await gen.embedder.encode_texts(texts, deadline)
            return np.asarray(vecs, dtype=np.float32), gen.bundle.model_version
        finally:
            gen.release()
            self._leave()

    @staticmethod
    def _same_request(event: EventRecord, req: RankInput, fingerprint: str) -> EventRecord:
        """``event`` if it was logged for this request, else ALREADY_EXISTS."""
        if event.request_hash:
            same = event.request_hash == fingerprint
        else:  # logged before request fingerprints existed: compare what was recorded
            same = event.user_id == req.user_id
        if not same:
            raise AlreadyExistsError(
                f"event_id: {req.event_id!r} was already used by a different request (another "
                "user, context, candidates, top_k, scorer or policy); use a new event_id for a "
                "new request"
            )
        return event

    async def _decide_and_log(
        self,
        gen: Generation,
        req: RankInput,
        scorer_name: str,
        policy_name: str,
        fingerprint: str,
        deadline: float | None,
    ) -> EventRecord:
        text = gen.embedder.context_text(req)
        user, cands = await gen.embedder.embed(req, text, deadline)

        def decide() -> Decision:
            return self.decider.decide(
                scorer_name,
                policy_name,
                user=user,
                cand_ids=cands.ids,
                cand_vecs=cands.embeddings,
                top_k=req.top_k,
                event_id=req.event_id,
                scorers=gen.scorers,
            )

        decision = await self.decider.run(decide)  # on the decider's thread, not the loop
        t0 = time.perf_counter()
        event = to_event(
            decision,
            event_id=req.event_id,
            created_at=time.time(),
            user=user,
            cand_vecs=cands.embeddings,
            model_version=gen.bundle.model_version,
            user_id=req.user_id,
            context_text=text,
            top_k=req.top_k,
            request_hash=fingerprint,
        )
        with tracing.stage("log"):
            await self.events.log(event)
        self.metrics.stage.labels("log").observe(time.perf_counter() - t0)
        return event

    def _output(self, gen: Generation, event: EventRecord, req: RankInput) -> RankOutput:
        texts = gen.embedder.item_texts(event.ranked_ids, req) if req.include_text else None
        items = [
            RankedItemOutput(item_id, float(s), float(p), bool(e), texts[j] if texts else "")
            for j, (item_id, s, p, e) in enumerate(
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

    # ----------------------------------------------------------------- hot reload
    # ------------------------------------------------- changes while serving (live.py)
    async def reload(self, path: str | Path | None = None) -> dict[str, Any]:
        """Swap in the bundle at ``path`` (default: the configured one); see
        :meth:`LiveChanges.reload`."""
        return await self.live.reload(path)

    async def add_items(self, items: list[tuple[str, str]]) -> dict[str, int]:
        """Add catalog items (id, text) durably, on every replica."""
        return await self.live.add_items(items)

    async def remove_items(self, item_ids: list[str]) -> dict[str, int]:
        """Retire catalog items: never ranked again."""
        return await self.live.remove_items(item_ids)

    async def sync_catalog(self) -> int:
        """Apply the store's catalog changes this replica has not applied yet."""
        return await self.live.sync_catalog()

    # --------------------------------------------------------------------- Reward
    async def reward(self, event_id: str, item_id: str, value: float) -> RewardOutput:
        note_event_id(event_id)
        self._enter()
        try:
            return await self.feedback.reward(event_id, item_id, value)
        finally:
            self._leave()

    # ----------------------------------------------------------------------- info
    def info(self) -> dict[str, Any]:
        bc = self.config.batching
        choice = self.precision_choice
        return {
            "model_name": self.bundle.model_name,
            "model_version": self.bundle.model_version,
            "embedding_dim": self.bundle.embedding_dim,
            "max_seq_length": self.bundle.max_seq_length,
            "backend": getattr(self.backend, "name", "unknown"),
            "execution_provider": getattr(self.backend, "provider", "unknown"),
            "precision": getattr(self.backend, "precision", "unknown"),
            "precision_reason": choice.reason,
            **self.decider.describe(),
            "batching": {
                "max_batch_size": bc.max_batch_size,
                "max_queue_delay_ms": bc.max_queue_delay_ms,
                "max_queue_size": bc.max_queue_size,
                "length_buckets": list(bc.length_buckets),
                "max_queue_wait_ms": bc.max_queue_wait_ms or 0.0,
                "max_batch_tokens": bc.max_batch_tokens or 0,
            },
            "catalog_size": len(self.gen.catalog),
            "state_store": self.config.state.store,
            "version": __version__,
            **({"int8_gate": choice.check.as_info()} if choice.check is not None else {}),
        }
