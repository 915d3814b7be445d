"""The Reward path and the background work that keeps statistics current and the event log
bounded: the :class:`EventLog` (the store's events behind a cache) and :class:`Feedback`
(rewards, statistics sync with a shared store, closing reward windows with an optional
default reward, retention).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np

from explorank.engine.cache import LRUCache
from explorank.engine.requests import RewardOutput, validate_reward
from explorank.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from explorank.plugins.api import EventRecord, RewardRecord, StateUnavailableError

if TYPE_CHECKING:
    from explorank.engine.catalog import Catalog
    from explorank.engine.config import LimitsConfig, StateConfig
    from explorank.engine.decider import Decider
    from explorank.engine.metrics import EngineMetrics
    from explorank.plugins.api import StateStore

__all__ = ["EventLog", "Feedback"]

log = logging.getLogger("explorank.engine")


def event_nbytes(event: EventRecord) -> int:
    """What an event holds in memory, roughly: its arrays, its candidate ids (the request's
    own string objects: 57 bytes of object and list slot each, plus their characters), the
    ranked ids' references and short strings, and the record itself."""
    arrays = sum(
        np.asarray(a).nbytes
        for a in (event.candidate_scores, event.user_embedding, event.ranked_embeddings)
    )
    ids = sum(57 + len(i) for i in event.candidate_ids)
    return arrays + ids + 96 * len(event.ranked_ids) + 512


class EventLog:
    """Logged Rank events: written to the store, recent ones kept in memory (bounded by
    entries and by bytes).

    Catalog data is stored by reference: when every returned item is an item of the bundle
    that ranked the event (whose rows never change for that model version), the stored event
    carries no copy of their embeddings (``ranked_embeddings`` of shape ``(0, d)``);
    :meth:`get` restores them from that bundle's catalog. Items added at run time are copied
    (their text, hence their row, may be replaced). The engine keeps the catalog of the bundle
    served before the last reload too, so events ranked just before a reload still learn.
    """

    def __init__(
        self,
        store: StateStore,
        catalog: Callable[[], Catalog],
        *,
        previous: Callable[[str], Catalog | None] = lambda version: None,
        cache_entries: int = 10_000,
        cache_bytes: int = 64 << 20,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.previous = previous
        self.cache: LRUCache[EventRecord] = LRUCache(
            cache_entries, max_bytes=cache_bytes, sizeof=event_nbytes
        )

    async def get(self, event_id: str) -> EventRecord | None:
        event = self.cache.get(event_id)
        if event is None:
            event = await self.store.get_event(event_id)
            if event is not None:
                event = self.restore(event)
        return event

    async def log(self, event: EventRecord) -> None:
        await self.store.log_event(self._by_reference(event))
        self.cache.put(event.event_id, event)

    def _by_reference(self, event: EventRecord) -> EventRecord:
        catalog = self.catalog()
        if not event.ranked_ids or event.model_version != catalog.model_version:
            return event
        index, bundled = catalog.index, catalog.bundled
        emb = np.asarray(event.ranked_embeddings)
        for j, item_id in enumerate(event.ranked_ids):
            row = index.get(item_id)
            # by reference only for bundle items whose row is exactly what the event used
            if (
                row is None
                or item_id not in bundled
                or not np.array_equal(catalog.embeddings[row], emb[j])
            ):
                return event
        empty = np.zeros((0, catalog.dim), dtype=np.float32)
        return dataclasses.replace(event, ranked_embeddings=empty)

    def restore(self, event: EventRecord) -> EventRecord:
        """``event`` with the embeddings it stores by reference filled in from the catalog
        (for events read from the store directly)."""
        if not event.ranked_ids or np.asarray(event.ranked_embeddings).shape[0]:
            return event
        catalog: Catalog | None = self.catalog()
        if catalog is not None and catalog.model_version != event.model_version:
            catalog = self.previous(event.model_version)
        if catalog is None:
            raise FailedPreconditionError(
                f"event {event.event_id!r} was ranked by model {event.model_version!r}, which is "
                "no longer loaded; its rewards can no longer be learned"
            )
        rows = [catalog.index.get(item_id) for item_id in event.ranked_ids]
        if any(r is None for r in rows):
            missing = [i for i, r in zip(event.ranked_ids, rows, strict=True) if r is None]
            raise FailedPreconditionError(
                f"event {event.event_id!r} references catalog items that are no longer in the "
                f"catalog ({', '.join(missing[:3])}); its rewards can no longer be learned"
            )
        return dataclasses.replace(event, ranked_embeddings=catalog.embeddings[rows])


class Feedback:
    """Rewards in; statistics out (see the module docstring)."""

    def __init__(
        self,
        state: StateConfig,
        limits: LimitsConfig,
        decider: Decider,
        events: EventLog,
        metrics: EngineMetrics,
    ) -> None:
        self.state = state
        self.limits = limits
        self.decider = decider
        self.events = events
        self.store = events.store
        self.metrics = metrics

    async def reward(self, event_id: str, item_id: str, value: float) -> RewardOutput:
        validate_reward(event_id, item_id, value, self.limits)
        event = await self.events.get(event_id)
        if event is None:
            raise NotFoundError(
                f"event_id: unknown event {event_id!r} (never logged, or dropped by retention)"
            )
        if event.position_of(item_id) < 0:
            raise InvalidArgumentError(
                "item_id", f"item {item_id!r} was not returned by event {event_id!r}"
            )
        age = time.time() - event.created_at
        window = self.state.reward_window_s
        if age > window:
            raise FailedPreconditionError(
                f"reward window closed: event {event_id!r} is {age:.0f} s old; rewards are accepted "
                f"for {window:.0f} s (state.reward_window_s)"
            )
        accepted = await self._record(event, item_id, float(value))
        self.metrics.rewards.labels("accepted" if accepted else "duplicate").inc()
        return RewardOutput(accepted=accepted, duplicate=not accepted)

    async def _record(self, event: EventRecord, item_id: str, value: float) -> bool:
        """Make one reward durable with every learner's delta, then apply the deltas (both
        plugin work and statistics changes on the decider's thread)."""
        deltas = await self.decider.run(self.decider.deltas_for, event, item_id, value)
        record = RewardRecord(event.event_id, item_id, value, time.time())
        accepted = await self.store.record_reward(record, deltas)
        if accepted:
            await self.decider.run(self.decider.apply, deltas)
        return accepted

    async def recover(self) -> int:
        """Re-apply what crashed replicas left unflushed in a shared store (if it can)."""
        recover = getattr(self.store, "recover_pending", None)
        if recover is None:
            return 0
        recovered = int(
            await recover(
                lambda event, reward: self.decider.deltas_for(
                    self.events.restore(event), reward.item_id, reward.value
                )
            )
        )
        if recovered:
            log.info(
                "recovered statistics of %d rewards left unflushed by a crashed replica", recovered
            )
            await self.decider.load_stats(self.store)
        return recovered

    async def close_windows(self, now: float | None = None, batch: int = 500) -> int:
        """Apply ``state.default_reward`` to every returned item without a reward in events
        whose reward window has closed, then mark those events closed. Idempotent: a
        reward already recorded for (event, item) is a duplicate and is not applied again.
        Returns the number of default rewards applied."""
        if self.state.default_reward is None:
            return 0
        value = float(self.state.default_reward)
        cutoff = (time.time() if now is None else now) - self.state.reward_window_s
        applied = 0
        while True:
            events = await self.store.events_to_close(cutoff, batch)
            if not events:
                return applied
            for stored in events:
                event = self.events.restore(stored)
                for item_id in event.ranked_ids:
                    applied += int(await self._record(event, item_id, value))
            await self.store.mark_events_closed([e.event_id for e in events])
            if len(events) < batch:
                return applied

    # ------------------------------------------------------------ background work
    def background_tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """``(name, loop)`` of every periodic job this configuration needs."""
        jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.store.shared:
            jobs.append(("explorank-stats-sync", self._sync_loop))
        if getattr(self.store, "recover_pending", None) is not None:
            jobs.append(("explorank-recovery", self._recovery_loop))
        if self.state.default_reward is not None:
            jobs.append(("explorank-windows", self._window_loop))
        if self.state.retention:
            jobs.append(("explorank-retention", self._retention_loop))
        return jobs

    async def _sync_loop(self) -> None:
        interval = self.state.sync_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.decider.load_stats(self.store)
            except StateUnavailableError as exc:
                log.warning("stats sync failed, keeping last known state: %s", exc)

    async def _recovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.state.recovery_interval_s)
            try:
                await self.recover()
            except StateUnavailableError as exc:
                log.warning("recovery of crashed replicas' statistics postponed: %s", exc)

    async def _window_loop(self) -> None:
        while True:
            try:
                applied = await self.close_windows()
                if applied:
                    log.info("applied the default reward to %d unrewarded items", applied)
                    self.metrics.rewards.labels("default").inc(applied)
            except Exception as exc:  # keep serving; retried next round
                log.warning("closing reward windows failed: %s", exc)
            await asyncio.sleep(self.state.window_check_interval_s)

    async def _retention_loop(self) -> None:
        sc = self.state
        while True:
            try:
                dropped = await self.store.apply_retention(
                    sc.retention_age_s(), sc.retention_max_events
                )
                if dropped:
                    log.info("retention dropped %d events", dropped)
            except Exception as exc:  # keep serving
                log.warning("retention failed: %s", exc)
            await asyncio.sleep(sc.retention_interval_s)
