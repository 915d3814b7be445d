"""``redis``: a state store shared by several engine replicas (behind a load balancer).

Rewards and item statistics: one Lua script per reward (``redis_record_reward.lua``) does
HSETNX on the event's reward hash (idempotency on (event_id, item_id)) and, only when the
reward is new, the HINCRBYFLOAT of every per-item statistic field. Redis runs scripts
atomically, so a reward is applied once and concurrent increments from any number of
replicas never race.

Array statistics (LinUCB's A = Σxxᵀ, b = Σrx: up to d² floats per reward) are batched in an
:class:`~explorank.plugins.builtin.redis_deltas.ArrayDeltaBuffer`: each replica sums array
deltas locally and flushes them every ``array_flush_every`` rewards or ``array_flush_ms``
(and on close) as float64 blobs appended to a per-array delta list
(``redis_flush_arrays.lua``); readers add ``base + Σ deltas`` with numpy and occasionally
fold the list into ``base`` (an optimistic WATCH/MULTI transaction). So Redis never does d²
float math. The Lua scripts are resource files next to this module.

Crash gap: the reward script also records the reward in this replica's *pending* hash;
the flush script removes exactly the flushed rewards from it, atomically with appending
the deltas. If a replica dies with unflushed deltas, its pending hash names the rewards
whose array deltas are missing, and :meth:`RedisStore.recover_pending` recomputes and
applies them (once) from any live process. Staleness and key layout: docs/state.md.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from explorank import hookimpl
from explorank.errors import ConfigError, InvalidArgumentError, redact
from explorank.plugins.api import (
    CatalogChange,
    EventRecord,
    PluginParams,
    PolicyStats,
    RewardRecord,
    StateStore,
    StateUnavailableError,
    StatsDelta,
)
from explorank.plugins.builtin import _records, redis_export, redis_recovery
from explorank.plugins.builtin.redis_deltas import (
    SEP,
    ArrayDeltaBuffer,
    Sums,
    dump_array,
    load_array,
)

log = logging.getLogger(__name__)

ComputeDeltas = Callable[
    [EventRecord, RewardRecord], "Mapping[str, StatsDelta] | Awaitable[Mapping[str, StatsDelta]]"
]


def _script(name: str) -> str:
    return (importlib.resources.files(__package__) / f"redis_{name}.lua").read_text()


def _num(value: float) -> str:
    return repr(float(value))


class RedisStore(StateStore):
    """Redis-backed store for several replicas: atomic Lua merges, batched array deltas."""

    name = "redis"
    description = "Redis (shared by several replicas): atomic Lua merges, batched array deltas"
    shared = True
    supports_catalog_changes = True

    class Options(PluginParams):
        url: str = Field("redis://127.0.0.1:6379/0", description="redis://, rediss:// or unix://")
        password: str | None = Field(None, description="AUTH password (or in the URL)")
        tls: bool = Field(False, description="TLS (implied by rediss://)")
        ssl_ca_certs: str | None = Field(None, description="CA bundle for TLS")
        key_prefix: str = Field("explorank:", description="prefix of every key")
        socket_timeout_s: float = Field(2.0, gt=0, description="connect and command timeout")
        event_ttl_s: int = Field(7 * 86_400, gt=0, description="how long events are kept")
        array_flush_every: int = Field(64, gt=0, description="rewards per array-delta flush")
        array_flush_ms: float = Field(1000.0, gt=0, description="longest wait between flushes")
        compact_after: int = Field(32, gt=0, description="delta blobs before folding into base")
        replica_id: str | None = Field(None, description="default: host-pid-random")
        replica_ttl_s: int = Field(60, gt=0, description="heartbeat TTL: dead after this")
        max_connections: int = Field(64, gt=0, description="connection pool size")

        @field_validator("url")
        @classmethod
        def _scheme(cls, v: str) -> str:
            if not v.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("must start with redis://, rediss:// or unix://")
            return v

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.url = str(o.url)
        self.password: str | None = o.password
        self.tls = bool(o.tls) or self.url.startswith("rediss://")
        self.ssl_ca_certs: str | None = o.ssl_ca_certs
        self.prefix = str(o.key_prefix)
        self.socket_timeout_s = float(o.socket_timeout_s)
        self.event_ttl_s = int(o.event_ttl_s)
        self.flush_every = int(o.array_flush_every)
        self.flush_ms = float(o.array_flush_ms)
        self.compact_after = int(o.compact_after)
        self.max_connections = int(o.max_connections)
        self.replica_ttl_s = int(o.replica_ttl_s)
        self.replica_id = str(
            o.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._buffer = ArrayDeltaBuffer()
        self._inflight: dict[str, int] = {}
        self._flush_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------- keys
    @property
    def client(self) -> Any:
        """The open ``redis.asyncio.Redis`` client (None before open / after close)."""
        return self._client

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def pending_key(self, replica: str) -> str:
        return self.key("pending", replica)

    # -------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ConfigError(
                "state.store: the redis store needs the redis package (pip install 'explorank[redis]')"
            ) from None
        url = self.url
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.socket_timeout_s,
            "retry": Retry(NoBackoff(), 0),  # fail fast: the engine answers UNAVAILABLE
        }
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            url = "rediss://" + url.split("://", 1)[1]
            if self.ssl_ca_certs:
                kwargs["ssl_ca_certs"] = self.ssl_ca_certs
        # A blocking pool queues bursts of concurrent calls instead of failing them.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=self.max_connections, timeout=self.socket_timeout_s, **kwargs
        )
        self._client = aioredis.Redis(connection_pool=pool)
        for name, file in (
            ("log", "log_event"),
            ("reward", "record_reward"),
            ("flush", "flush_arrays"),
        ):
            self._scripts[name] = self._client.register_script(_script(file))
        try:
            async with self.guard("open"):
                await self._client.ping()
                await self._heartbeat()
        except StateUnavailableError:
            await self._client.aclose(close_connection_pool=True)
            self._client = None
            raise
        self._timer = asyncio.create_task(self._flush_loop(), name="explorank-redis-flush")

    async def close(self) -> None:
        """Flush and disconnect. Every step is bounded (a few socket timeouts in all): a
        background task stuck inside the Redis client must not keep a server from stopping."""
        if self._client is None:
            return
        bound = self.socket_timeout_s + 1.0
        await _cancel_within(self._timer, bound, "array flush loop")
        try:
            await asyncio.wait_for(self._flush_then_deregister(), 2 * bound)
        except (StateUnavailableError, asyncio.TimeoutError) as exc:
            log.error(
                "redis store closed with %d unflushed array rewards: %s",
                len(self._buffer),
                exc or "flush timed out",
            )
        finally:
            await _cancel_within(self._flush_task, bound, "array flush")
            client, self._client = self._client, None
            try:
                await asyncio.wait_for(client.aclose(close_connection_pool=True), bound)
            except (asyncio.TimeoutError, OSError) as exc:
                log.warning("redis connections not closed cleanly: %s", exc or "timed out")

    async def _flush_then_deregister(self) -> None:
        await self.flush()
        async with self.guard("close"):
            if not await self._client.exists(self.pending_key(self.replica_id)):
                await self._client.delete(self.key("replica", self.replica_id))
                await self._client.srem(self.key("replicas"), self.replica_id)

    async def healthy(self) -> bool:
        try:
            return bool(self._client is not None and await self._client.ping())
        except Exception:
            return False

    @asynccontextmanager
    async def guard(self, what: str) -> AsyncIterator[None]:
        """Every Redis failure becomes StateUnavailableError (never a false ack)."""
        from redis.exceptions import RedisError

        if self._client is None:
            raise StateUnavailableError(f"redis store is not open ({what})")
        try:
            yield
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise StateUnavailableError(
                redact(f"redis {self.url} unavailable during {what}: {exc}")
            ) from exc

    async def _heartbeat(self) -> None:
        await self._client.set(self.key("replica", self.replica_id), b"1", ex=self.replica_ttl_s)
        await self._client.sadd(self.key("replicas"), self.replica_id)

    # ----------------------------------------------------------------- events
    async def log_event(self, event: EventRecord) -> None:
        _records.check_event(event)
        payload = _records.encode_event(event)
        async with self.guard("log_event"):
            ok = await self._scripts["log"](
                keys=[self.key("event", event.event_id), self.key("events")],
                args=[payload, _num(event.created_at), self.event_ttl_s, event.event_id],
            )
        if not ok:
            raise InvalidArgumentError("event_id", f"{event.event_id!r} is already logged")

    async def get_event(self, event_id: str) -> EventRecord | None:
        async with self.guard("get_event"):
            data = await self._client.get(self.key("event", event_id))
        return None if data is None else _records.decode_event(data)

    # ---------------------------------------------------------------- rewards
    async def record_reward(self, reward: RewardRecord, deltas: Mapping[str, StatsDelta]) -> bool:
        keys = [self.key("rewards", reward.event_id), self.pending_key(self.replica_id)]
        args: list[Any] = [reward.item_id, _records.encode_reward(reward), self.event_ttl_s]
        item_args: list[Any] = []
        n_item_policies = 0
        array_policies: list[str] = []
        for policy, delta in deltas.items():
            _records.check_deltas_finite(policy, delta.items, delta.arrays)
            if delta.arrays:
                array_policies.append(policy)
            if delta.items:
                n_item_policies += 1
                keys += [self.key("stats", policy, "items"), self.key("stats", policy, "version")]
                fields = [
                    (f"{item_id}#{j}", _num(v))
                    for item_id, vec in delta.items.items()
                    for j, v in enumerate(np.asarray(vec, dtype=np.float64).ravel())
                ]
                item_args += [len(fields), *(x for pair in fields for x in pair)]
        ref = f"{reward.event_id}{SEP}{reward.item_id}" if array_policies else ""
        args += [ref, json.dumps(array_policies), n_item_policies, *item_args]
        if not ref:
            async with self.guard("record_reward"):
                return int(await self._scripts["reward"](keys=keys, args=args)) == 1
        self._inflight[ref] = self._inflight.get(ref, 0) + 1
        try:
            async with self.guard("record_reward"):
                result = int(await self._scripts["reward"](keys=keys, args=args))
            # 2: a duplicate whose first attempt ran here but whose answer was lost (we
            # raised then); its pending ref waits for this replica's deltas: add them.
            if result == 1 or (
                result == 2 and self._inflight[ref] == 1 and ref not in self._buffer
            ):
                self._buffer.add(ref, array_policies, deltas)
                if len(self._buffer) >= self.flush_every and (
                    self._flush_task is None or self._flush_task.done()
                ):
                    self._flush_task = asyncio.create_task(self._flush_quietly())
        finally:
            self._inflight[ref] -= 1
            if not self._inflight[ref]:
                del self._inflight[ref]
        return result == 1

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except StateUnavailableError as exc:
            log.warning("array statistics flush failed, will retry: %s", exc)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_ms / 1000.0)
            try:
                async with self.guard("heartbeat"):
                    await self._heartbeat()
            except StateUnavailableError as exc:
                log.warning("redis heartbeat failed: %s", exc)
            await self._flush_quietly()

    async def flush(self) -> None:
        """Send the locally accumulated array deltas to Redis (atomic, idempotent)."""
        async with self._flush_lock:
            if not len(self._buffer):
                return
            acc, refs = self._buffer.drain()
            try:
                applied = await self.apply_arrays(self.replica_id, list(refs), acc)
            except StateUnavailableError:
                self._buffer.restore(acc, refs)  # kept for the next attempt
                raise
            if not applied:
                log.warning(
                    "array deltas of %d rewards were already applied (flush retried after a lost "
                    "answer, or recover_pending ran for replica %s); dropped them",
                    len(refs),
                    self.replica_id,
                )

    async def apply_arrays(self, replica: str, refs: list[str], acc: Sums) -> bool:
        """Append ``acc`` for ``replica`` and forget ``refs`` from its pending hash,
        atomically; False when another process did it first."""
        keys = [self.pending_key(replica)]
        arr_args: list[Any] = []
        for (policy, name), arr in acc.items():
            keys += [
                self.key("stats", policy, "arr", name, "deltas"),
                self.key("stats", policy, "arrays"),
                self.key("stats", policy, "version"),
            ]
            arr_args += [name, dump_array(arr)]
        async with self.guard("flush"):
            result = await self._scripts["flush"](
                keys=keys, args=[len(refs), *refs, len(acc), *arr_args]
            )
        return bool(result)

    async def recover_pending(self, compute_deltas: ComputeDeltas) -> int:
        """Apply the array deltas that dead replicas acknowledged but never flushed (see
        :func:`explorank.plugins.builtin.redis_recovery.recover_pending`)."""
        return await redis_recovery.recover_pending(self, compute_deltas)

    # ------------------------------------------------------------------ stats
    async def load_stats(self, policy: str) -> PolicyStats:
        """Redis's merged statistics plus this replica's not yet flushed array deltas."""
        stats = PolicyStats()
        async with self.guard("load_stats"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(self.key("stats", policy, "items"))
            pipe.smembers(self.key("stats", policy, "arrays"))
            pipe.get(self.key("stats", policy, "version"))
            fields, names, version = await pipe.execute()
            names = sorted(n.decode() for n in names)
            if names:
                pipe = self._client.pipeline(transaction=True)
                for name in names:
                    pipe.get(self.key("stats", policy, "arr", name, "base"))
                    pipe.lrange(self.key("stats", policy, "arr", name, "deltas"), 0, -1)
                blobs = await pipe.execute()
        stats.version = int(version or 0)
        parts: dict[str, dict[int, float]] = {}
        for field, value in fields.items():
            item_id, j = field.decode().rsplit("#", 1)
            parts.setdefault(item_id, {})[int(j)] = float(value)
        for item_id, vals in parts.items():
            vec = np.zeros(max(vals) + 1, dtype=np.float64)
            vec[list(vals)] = list(vals.values())
            stats.items[item_id] = vec
        for i, name in enumerate(names if names else []):
            base, deltas = blobs[2 * i], blobs[2 * i + 1]
            total = load_array(base) if base is not None else None
            for blob in deltas:
                total = load_array(blob) if total is None else total + load_array(blob)
            if total is not None:
                stats.arrays[name] = total
            if len(deltas) > self.compact_after:
                await self._compact(policy, name)
        for name, arr in self._buffer.pending_for(policy).items():
            cur = stats.arrays.get(name)
            stats.arrays[name] = arr.copy() if cur is None else cur + arr
        return stats

    async def _compact(self, policy: str, name: str) -> None:
        """Fold the delta list into ``base``; a concurrent compaction makes this a no-op."""
        from redis.exceptions import WatchError

        base_key = self.key("stats", policy, "arr", name, "base")
        list_key = self.key("stats", policy, "arr", name, "deltas")
        try:
            async with self.guard("compact"), self._client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(base_key)
                    base = await pipe.get(base_key)
                    deltas = await pipe.lrange(list_key, 0, -1)
                    total = load_array(base) if base is not None else None
                    for blob in deltas:
                        total = load_array(blob) if total is None else total + load_array(blob)
                    if total is None:
                        return
                    pipe.multi()
                    pipe.set(base_key, dump_array(total))
                    pipe.ltrim(list_key, len(deltas), -1)
                    await pipe.execute()
                except WatchError:
                    return  # someone else compacted meanwhile
        except StateUnavailableError as exc:
            log.warning("array compaction skipped: %s", exc)

    # ------------------------------------------------------------------ catalog
    async def log_catalog_changes(self, changes: Sequence[CatalogChange]) -> int:
        """RPUSH onto one list: the list position is the sequence number."""
        batch = list(changes)
        if not batch:
            return 0
        payloads = [
            json.dumps({"kind": c.kind, "item_id": c.item_id, "text": c.text, "at": c.created_at})
            for c in batch
        ]
        async with self.guard("log_catalog_changes"):
            return int(await self._client.rpush(self.key("catalog", "changes"), *payloads))

    async def catalog_changes(self, after_seq: int = 0) -> list[CatalogChange]:
        async with self.guard("catalog_changes"):
            rows = await self._client.lrange(self.key("catalog", "changes"), int(after_seq), -1)
        out = []
        for i, raw in enumerate(rows, start=int(after_seq) + 1):
            obj = json.loads(raw)
            out.append(CatalogChange(obj["kind"], obj["item_id"], obj["text"], obj["at"], i))
        return out

    # ------------------------------------------------------- export, retention
    async def export_events(self, path: Path, fmt: str = "jsonl") -> int:
        return await redis_export.export_events(self, Path(path), fmt)

    async def apply_retention(self, max_age_s: float | None, max_events: int | None) -> int:
        """Drop events (and their rewards) older than ``max_age_s`` or beyond the newest
        ``max_events``. Statistics are untouched: they already absorbed the rewards."""
        return await redis_export.apply_retention(self, max_age_s, max_events)


@hookimpl
def register_state_stores(register: Callable[[type], None]) -> None:
    register(RedisStore)


async def _cancel_within(task: asyncio.Task[None] | None, seconds: float, what: str) -> None:
    """Cancel ``task`` and wait for it to end, at most ``seconds``."""
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        log.warning("redis store: the %s task did not stop within %.1f s", what, seconds)
