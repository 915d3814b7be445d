"""The engine (transport-independent): what it is made of, its lifecycle, and the Rank path.

An :class:`Engine` owns a few objects with one job each and passes them what they need:

- the encoder backend, chosen (and its INT8 encoder checked on this CPU) by
  :mod:`explorank.engine.int8_check`;
- an :class:`~explorank.engine.embedder.Embedder`: tokenizer, dynamic batcher, caches;
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
import contextlib
import logging
import time
from typing import Any

from explorank import __version__
from explorank.engine.bundle import Bundle, load_bundle
from explorank.engine.config import Config
from explorank.engine.decider import Decider
from explorank.engine.decision import Decision, to_event
from explorank.engine.embedder import Embedder
from explorank.engine.feedback import EventLog, Feedback
from explorank.engine.metrics import EngineMetrics
from explorank.engine.requests import (
    RankedItemOutput,
    RankInput,
    RankOutput,
    RewardOutput,
    validate_rank,
)
from explorank.errors import ConfigError, UnavailableError
from explorank.plugins.api import EventRecord, ScorerContext, StateStore
from explorank.plugins.manager import PluginManager

log = logging.getLogger("explorank.engine")

#: Candidate counts above this are decided off the event loop.
_OFFLOAD_DECISION_ABOVE = 2048


def head_providers(backend: Any) -> tuple[str, ...]:
    """ONNX Runtime providers for scoring heads: the encoder's device, as ORT names.

    A head is a small MLP: on a GPU the CUDA EP (never the TensorRT EP, whose engine
    build would cost more than the head), else the CPU; the native TensorRT backend's
    provider ("TensorRT") is not an ORT provider at all."""
    import onnxruntime as ort

    on_gpu = getattr(backend, "provider", "") in (
        "TensorRT",
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    )
    if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


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
        from explorank.engine.int8_check import PrecisionChoice, choose_encoder
        from explorank.engine.tokenizer import Tokenizer

        self.config = config
        self.bundle = bundle
        self.metrics = metrics or EngineMetrics()
        pc = config.plugins
        self.plugins = plugins or PluginManager(
            block_external=pc.block_external, allow=pc.allow, block=pc.block, override=pc.override
        )
        tokenizer = Tokenizer.from_bundle(bundle)
        if backend is None:
            backend, self.precision_choice = choose_encoder(
                bundle, tokenizer, config.backend, max_batch_size=config.batching.max_batch_size
            )
        else:
            served = str(getattr(backend, "precision", "unknown"))
            self.precision_choice = PrecisionChoice(
                config.backend.precision, served, f"{served}: backend given by the caller"
            )
        self.metrics.observe_precision(self.precision_choice.served, self.precision_choice.check)
        self.backend = backend
        self.embedder = Embedder(
            bundle,
            backend,
            tokenizer,
            batching=config.batching,
            cache=config.cache,
            metrics=self.metrics,
            ranking=config.ranking,
        )
        self.decider = Decider(
            config.ranking,
            self.plugins,
            ScorerContext(
                embedding_dim=bundle.embedding_dim,
                heads=bundle.heads(),
                bundle_dir=bundle.path,
                providers=head_providers(backend),
                intra_op_threads=1,
            ),
            self.metrics,
        )
        if store is None:
            self.plugins.require("state store", config.state.store)
            store = self.plugins.create_store(config.state.store, **config.state.store_options())
        self.store = store
        self.events = EventLog(store)
        self.feedback = Feedback(
            config.state, config.limits, self.decider, self.events, self.metrics
        )
        self.ready = False
        self.accepting = True
        self._tasks: list[asyncio.Task[Any]] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> Engine:
        if config.model.bundle is None:
            raise ConfigError("model.bundle is not set (pass --bundle DIR)")
        bundle = load_bundle(config.model.bundle, verify=config.model.verify_checksums)
        return cls(config, bundle, **kwargs)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, warmup: bool = True) -> None:
        from threadpoolctl import threadpool_limits

        # The encoder parallelises inside ONNX Runtime; numpy's BLAS work on the Rank path
        # (scoring, linear policies) is small, and a second multi-threaded pool spinning
        # next to ORT's costs far more than it gains.
        threadpool_limits(limits=1, user_api="blas")

        self.decider.build()
        await self.store.open()
        await self.decider.load_stats(self.store)
        await self.feedback.recover()
        seconds = await self.embedder.start(warmup=warmup)
        if warmup:
            log.info("warm-up done in %.2f s", seconds)
        sc = self.config.state
        if sc.default_reward is not None and not self.store.supports_window_close:
            raise ConfigError(
                f"state.default_reward is set, but the {self.store.name!r} store cannot list "
                "events whose reward window closed; unset it or use the sqlite store"
            )
        for name, job in self.feedback.background_tasks():
            self._tasks.append(asyncio.create_task(job(), name=name))
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
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.embedder.stop()
        await self.store.close()
        close = getattr(self.backend, "close", None)
        if close:
            close()

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
        """Rank candidates for one request. ``deadline`` is a ``time.monotonic()`` time."""
        self._enter()
        t_start = time.perf_counter()
        try:
            explicit_event = bool(req.event_id)
            req = validate_rank(req, self.config.limits)
            scorer_name = self.decider.scorer_name(req.scorer)
            policy_name = self.decider.policy_name(req.policy)
            if explicit_event:
                prior = await self.events.get(req.event_id)
                if prior is not None:
                    return self._output(prior, req)
            text = self.embedder.context_text(req)
            user, cands = await self.embedder.embed(req, text, deadline)

            def decide() -> Decision:
                return self.decider.decide(
                    scorer_name,
                    policy_name,
                    user=user,
                    cand_ids=cands.ids,
                    cand_vecs=cands.embeddings,
                    top_k=req.top_k,
                    event_id=req.event_id,
                )

            if len(cands.ids) > _OFFLOAD_DECISION_ABOVE:
                decision = await asyncio.to_thread(decide)
            else:
                decision = decide()
            t0 = time.perf_counter()
            event = to_event(
                decision,
                event_id=req.event_id,
                created_at=time.time(),
                user=user,
                cand_vecs=cands.embeddings,
                model_version=self.bundle.model_version,
                user_id=req.user_id,
                context_text=text,
                top_k=req.top_k,
            )
            await self.events.log(event)
            self.metrics.stage.labels("log").observe(time.perf_counter() - t0)
            return self._output(event, req)
        finally:
            self.metrics.stage.labels("total").observe(time.perf_counter() - t_start)
            self._leave()

    def _output(self, event: EventRecord, req: RankInput) -> RankOutput:
        texts = self.embedder.item_texts(event.ranked_ids, req) if req.include_text else None
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

    # --------------------------------------------------------------------- Reward
    async def reward(self, event_id: str, item_id: str, value: float) -> RewardOutput:
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
            },
            "catalog_size": len(self.bundle.items),
            "state_store": self.config.state.store,
            "version": __version__,
            **({"int8_gate": choice.check.as_info()} if choice.check is not None else {}),
        }
