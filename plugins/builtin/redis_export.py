"""Export and retention for the ``redis`` store: events paged by creation time, joined with
their rewards, and dropped by age or count. Functions over a :class:`RedisStore`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from explorank.plugins.builtin import _records

if TYPE_CHECKING:
    from explorank.plugins.builtin.redis_store import RedisStore

log = logging.getLogger("explorank.plugins.builtin.redis_store")


async def iter_event_ids(store: RedisStore, page: int = 500) -> AsyncIterator[list[str]]:
    """Event ids by creation time, paged by score (robust to concurrent inserts)."""
    last = float("-inf")
    seen_at_last: set[str] = set()
    while True:
        async with store.guard("export"):
            rows = await store.client.zrangebyscore(
                store.key("events"),
                last,
                "+inf",
                start=0,
                num=page + len(seen_at_last),
                withscores=True,
            )
        fresh = [(m.decode(), s) for m, s in rows if m.decode() not in seen_at_last or s != last]
        if not fresh:
            return
        top = fresh[-1][1]
        seen_at_last = {m for m, s in fresh if s == top} | (seen_at_last if top == last else set())
        last = top
        yield [m for m, _ in fresh]


async def export_events(store: RedisStore, path: Path, fmt: str = "jsonl") -> int:
    with _records.ExportWriter(Path(path), _records.check_format(fmt)) as writer:
        async for ids in iter_event_ids(store):
            async with store.guard("export"):
                pipe = store.client.pipeline(transaction=False)
                for event_id in ids:
                    pipe.get(store.key("event", event_id))
                    pipe.hgetall(store.key("rewards", event_id))
                res = await pipe.execute()
            for i, event_id in enumerate(ids):
                payload, rewards = res[2 * i], res[2 * i + 1]
                if payload is None:
                    continue  # expired (event_ttl_s)
                recs = [_records.decode_reward(event_id, k.decode(), v) for k, v in rewards.items()]
                writer.write(_records.export_row(_records.decode_event(payload), recs))
                if writer.count % 10_000 == 0:
                    log.info("exported %d events", writer.count)
    return writer.count


async def apply_retention(
    store: RedisStore, max_age_s: float | None, max_events: int | None
) -> int:
    """Drop events (and their rewards) older than ``max_age_s`` or beyond the newest
    ``max_events``. Statistics are untouched: they already absorbed the rewards."""
    doomed: list[bytes] = []
    zkey = store.key("events")
    async with store.guard("apply_retention"):
        if max_age_s is not None:
            doomed += await store.client.zrangebyscore(
                zkey, "-inf", f"({time.time() - max_age_s!r}"
            )
        if max_events is not None:
            excess = await store.client.zcard(zkey) - int(max_events)
            if excess > 0:
                doomed += await store.client.zrange(zkey, 0, excess - 1)
        ids = sorted({d.decode() for d in doomed})
        dropped = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            pipe = store.client.pipeline(transaction=True)
            pipe.delete(*[store.key("event", e) for e in chunk])
            pipe.delete(*[store.key("rewards", e) for e in chunk])
            pipe.zrem(zkey, *chunk)
            dropped += int((await pipe.execute())[0])
    return dropped
