"""Changes while serving: a new bundle swapped in (:meth:`LiveChanges.reload`) and catalog
items added and retired at run time (:meth:`LiveChanges.add_items`,
:meth:`LiveChanges.remove_items`), kept in the state store and replayed by every replica
(:meth:`LiveChanges.sync_catalog`). The :class:`~explorank.engine.pipeline.Engine` owns one
and exposes these as its own methods."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorank.engine import generation, heap
from explorank.engine.bundle import load_bundle
from explorank.engine.catalog import Catalog
from explorank.engine.requests import validate_catalog_item
from explorank.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError
from explorank.plugins.api import CatalogChange

if TYPE_CHECKING:
    from explorank.engine.pipeline import Engine

__all__ = ["LiveChanges"]

log = logging.getLogger("explorank.engine")


class LiveChanges:
    """Reload and catalog changes of one engine (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: the catalog of the bundle served before the last reload, by model version: events
        #: it ranked store its items' embeddings by reference and still learn
        self.previous_catalogs: dict[str, Catalog] = {}
        self._reloading = asyncio.Lock()
        self._catalog_lock = asyncio.Lock()

    async def reload(self, path: str | Path | None = None) -> dict[str, Any]:
        """Load, verify and warm up the bundle at ``path`` (default: the configured one)
        next to the serving one, switch to it atomically, and stop the old one once the
        calls that started on it are done. Any failure leaves the old one serving."""
        if self._reloading.locked():
            raise FailedPreconditionError("a reload is already in progress; try again later")
        async with self._reloading:
            target = Path(path) if path else self.engine.config.model.bundle
            if target is None:
                raise InvalidArgumentError("bundle", "no bundle given and none configured")
            t0 = time.perf_counter()
            mc = self.engine.config.model
            bundle = await asyncio.to_thread(
                load_bundle, target, verify=mc.verify_checksums, trusted_keys=mc.trusted_keys
            )
            new = await asyncio.to_thread(
                generation.prepare,
                self.engine.config,
                bundle,
                self.engine.metrics,
                decider=self.engine.decider,
            )
            try:
                await new.embedder.start(warmup=True)
                if self.engine.store.supports_catalog_changes:
                    async with self._catalog_lock:
                        changes = await self.engine.store.catalog_changes(0)
                        await generation.apply_changes(new.embedder, changes)
            except BaseException:
                await new.close(0.0)
                raise
            old = self.engine.gen
            self.engine.gen = new  # the switch: every Rank from here on uses the new generation
            # events the old bundle ranked still learn from its (bundled) item embeddings
            self.previous_catalogs = {old.catalog.model_version: old.catalog}
            self.engine.decider.use_scorers(new.scorers, new.scorer_problems)
            self.engine.metrics.observe_precision(
                new.precision_choice.served, new.precision_choice.check
            )
            seconds = time.perf_counter() - t0
            log.info("reload: %s", generation.describe_swap(old, new, seconds))
            await old.close(self.engine.config.server.grace_s)
            heap.refreeze()  # a no-op unless `serve` froze the start-up heap
            return {
                "model_version": new.bundle.model_version,
                "previous_version": old.bundle.model_version,
                "catalog_size": len(new.catalog),
                "seconds": seconds,
            }

    # -------------------------------------------------------------------- catalog
    async def add_items(self, items: list[tuple[str, str]]) -> dict[str, int]:
        """Add items (id, text) to the catalog, durably, then apply every change the store
        holds that this replica has not applied yet."""
        bundled = self.engine.gen.catalog.bundled
        for i, (item_id, text) in enumerate(items):
            validate_catalog_item(item_id, text, self.engine.config.limits, f"items[{i}]")
            if item_id in bundled:
                raise AlreadyExistsError(
                    f"items[{i}].item_id: {item_id!r} is in the bundle's catalog; "
                    "a bundled item's text changes only with a new bundle (export, then reload)"
                )
        now = time.time()
        changes = [CatalogChange("add", item_id, text, now) for item_id, text in items]
        return await self._change_catalog(changes)

    async def remove_items(self, item_ids: list[str]) -> dict[str, int]:
        """Retire items: never ranked again (rewards of past events are still learned)."""
        for i, item_id in enumerate(item_ids):
            validate_catalog_item(item_id, "", self.engine.config.limits, f"item_ids[{i}]")
        now = time.time()
        return await self._change_catalog([CatalogChange("remove", i, "", now) for i in item_ids])

    async def _change_catalog(self, changes: list[CatalogChange]) -> dict[str, int]:
        self.engine._enter()
        try:
            if not self.engine.store.supports_catalog_changes:
                raise FailedPreconditionError(
                    f"the {self.engine.store.name!r} state store cannot keep catalog changes; "
                    "use the sqlite or redis store"
                )
            if not changes:
                raise InvalidArgumentError("items", "no items given")
            await self.engine.store.log_catalog_changes(changes)
            await self.sync_catalog()
            added = sum(c.kind == "add" for c in changes)
            return {
                "added": added,
                "removed": len(changes) - added,
                "catalog_size": len(self.engine.gen.catalog),
            }
        finally:
            self.engine._leave()

    async def sync_catalog(self) -> int:
        """Apply the store's catalog changes this replica has not applied yet."""
        async with self._catalog_lock:
            gen = self.engine.gen
            changes = await self.engine.store.catalog_changes(gen.catalog.seq)
            if not changes:
                return 0
            applied = await generation.apply_changes(gen.embedder, changes)
            log.info("catalog: %d changes applied, %d items rankable", applied, len(gen.catalog))
            return applied

    async def catalog_sync_loop(self) -> None:
        interval = self.engine.config.state.sync_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            await self.sync_catalog()
