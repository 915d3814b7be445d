"""Crash recovery for the ``redis`` store: array deltas a dead replica acknowledged but never
flushed are recomputed and applied once (see the store's module docstring)."""

from __future__ import annotations

import inspect
import json
import logging
from typing import TYPE_CHECKING

from explorank.plugins.builtin import _records
from explorank.plugins.builtin.redis_deltas import SEP, Sums, add_into

if TYPE_CHECKING:
    from explorank.plugins.builtin.redis_store import ComputeDeltas, RedisStore

log = logging.getLogger("explorank.plugins.builtin.redis_store")


async def recover_pending(store: RedisStore, compute_deltas: ComputeDeltas) -> int:
    """Apply the array deltas that dead replicas acknowledged but never flushed.

    A replica is dead when its heartbeat key (refreshed every ``array_flush_ms``,
    TTL ``replica_ttl_s``) has expired. ``compute_deltas(event, reward)`` must return
    what the engine's policies' ``update`` returned for that reward (only the array
    parts are used). Safe to run from several processes at once: each dead
    replica's deltas are applied at most once. Returns the number of rewards applied;
    rewards whose event has expired cannot be recomputed and are logged and dropped."""
    recovered = 0
    async with store.guard("recover_pending"):
        replicas = [r.decode() for r in await store.client.smembers(store.key("replicas"))]
    for replica in replicas:
        if replica == store.replica_id:
            continue
        async with store.guard("recover_pending"):
            if await store.client.exists(store.key("replica", replica)):
                continue  # alive
            pending = await store.client.hgetall(store.pending_key(replica))
        acc: Sums = {}
        refs = [r.decode() for r in pending]
        n_ok = 0
        for ref, policies_b in zip(refs, pending.values(), strict=True):
            event_id, item_id = ref.split(SEP, 1)
            event = await store.get_event(event_id)
            async with store.guard("recover_pending"):
                raw = await store.client.hget(store.key("rewards", event_id), item_id)
            if event is None or raw is None:
                log.error(
                    "cannot recover array deltas of reward %s/%s: event expired",
                    event_id,
                    item_id,
                )
                continue
            deltas = compute_deltas(event, _records.decode_reward(event_id, item_id, raw))
            if inspect.isawaitable(deltas):
                deltas = await deltas
            for policy in json.loads(policies_b):
                for name, arr in deltas[policy].arrays.items() if policy in deltas else ():
                    add_into(acc, (policy, name), arr)
            n_ok += 1
        if refs and not await store.apply_arrays(replica, refs, acc):
            continue  # another process recovered this replica first
        recovered += n_ok
        async with store.guard("recover_pending"):
            await store.client.srem(store.key("replicas"), replica)
    return recovered
