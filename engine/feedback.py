"""The Reward path and the engine's background feedback work: statistics sync with a
shared store, closing reward windows (optional default reward), retention.

A mixin of :class:`explorank.engine.pipeline.Engine`; split out so that the Rank path and
the feedback path can be read on their own."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from explorank.engine.requests import RewardOutput, validate_reward
from explorank.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from explorank.plugins.api import (
    EventRecord,
    RewardContext,
    RewardRecord,
    StateUnavailableError,
    StatsDelta,
)

if TYPE_CHECKING:
    from explorank.engine.cache import LRUCache
    from explorank.engine.config import Config
    from explorank.engine.metrics import EngineMetrics
    from explorank.plugins.api import Policy, PolicyStats, StateStore

log = logging.getLogger("explorank.engine")


class FeedbackMixin:
    """Reward, and what keeps policy statistics current and the event log bounded."""

    config: Config
    metrics: EngineMetrics
    policies: dict[str, Policy]
    stats: dict[str, PolicyStats]
    event_cache: LRUCache

    @property
    def store(self) -> StateStore:  # provided by Engine
        raise NotImplementedError

    def _enter(self) -> None:  # provided by Engine
        raise NotImplementedError

    def _leave(self) -> None:  # provided by Engine
        raise NotImplementedError

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
