"""A thread-safe bounded LRU cache with optional TTL, for embeddings.

Two uses in the engine: user embeddings keyed by (user id, hash of the context text),
bounded and with a TTL so a user's changing history is picked up; and encoded candidate
texts (not in the catalog) keyed by a hash of the text, bounded, no TTL (a text's
embedding never changes for a given model).

Expired entries are removed on ``get``, from the least recently used end on every ``put``
(so a cache of keys that are never asked for again — a new context per request — holds
about one TTL of them, not its whole budget), and by :meth:`LRUCache.purge_expired`; an
expired entry that was read after newer ones were put can still be counted by ``len()``
until then. The clock is injectable so tests need no sleeping.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from explorank.errors import ConfigError

__all__ = ["LRUCache", "content_key"]

V = TypeVar("V")
_MISSING = object()


def content_key(*parts: str) -> str:
    """A short stable key for text content: blake2b-128 of the parts (NUL-separated).

    E.g. ``content_key(user_id, context_text)`` for user embeddings; keeps long texts out
    of the cache's memory and makes keys comparable across processes.
    """
    h = hashlib.blake2b(digest_size=16)
    for i, part in enumerate(parts):
        if i:
            h.update(b"\x00")
        h.update(part.encode("utf-8"))
    return h.hexdigest()


class LRUCache(Generic[V]):
    """Bounded LRU mapping with optional per-entry TTL (seconds since ``put``).

    Bounded by entries (``maxsize``) and, with ``max_bytes`` and a ``sizeof`` function, by
    the bytes its values hold: entries of very different sizes (a user vector of 1.5 KB, a
    logged whole-catalog event of tens of KB) cannot take memory the count bound allows for.
    ``maxsize=0`` disables caching (every ``get`` misses, ``put`` stores nothing), which lets
    a config switch a cache off without special cases at call sites.
    """

    def __init__(
        self,
        maxsize: int,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int | None = None,
        sizeof: Callable[[V], int] | None = None,
    ) -> None:
        if int(maxsize) < 0:
            raise ConfigError(f"cache maxsize must be >= 0 (0 disables the cache), got {maxsize}")
        if max_bytes is not None and (int(max_bytes) < 0 or sizeof is None):
            raise ConfigError("cache max_bytes must be >= 0 and needs a sizeof function")
        if ttl_s is not None and not ttl_s > 0:
            raise ConfigError(f"cache ttl_s must be > 0 seconds or unset, got {ttl_s}")
        self.maxsize = int(maxsize)
        self.max_bytes = int(max_bytes) if max_bytes is not None else None
        self._sizeof = sizeof
        self.bytes = 0
        self.ttl_s = float(ttl_s) if ttl_s is not None else None
        self._clock = clock
        self._data: OrderedDict[Hashable, tuple[V, float]] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def _lookup(self, key: Hashable, now: float) -> object:
        """Caller holds the lock. Returns the value or _MISSING; counts hit/miss."""
        entry = self._data.get(key)
        if entry is not None:
            value, expires = entry
            if expires > now:
                self._data.move_to_end(key)
                self.hits += 1
                return value
            self._remove(key)
        self.misses += 1
        return _MISSING

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        with self._lock:
            value = self._lookup(key, self._clock())
        return default if value is _MISSING else value  # type: ignore[return-value]

    def get_many(self, keys: Iterable[Hashable]) -> list[V | None]:
        """Look up several keys under one lock acquisition; ``None`` for each miss."""
        with self._lock:
            now = self._clock()
            found = [self._lookup(k, now) for k in keys]
        return [None if v is _MISSING else v for v in found]  # type: ignore[misc]

    def _remove(self, key: Hashable) -> None:
        """Caller holds the lock."""
        del self._data[key]
        self.bytes -= self._sizes.pop(key, 0)

    def put(self, key: Hashable, value: V) -> None:
        if self.maxsize == 0:
            return
        size = self._sizeof(value) if self._sizeof is not None else 0
        if self.max_bytes is not None and size > self.max_bytes:
            return  # larger than the whole budget: not cached
        with self._lock:
            expires = self._clock() + self.ttl_s if self.ttl_s is not None else float("inf")
            if key in self._data:
                self._remove(key)
            self._data[key] = (value, expires)
            self._sizes[key] = size
            self.bytes += size
            while len(self._data) > self.maxsize or (
                self.max_bytes is not None and self.bytes > self.max_bytes
            ):
                oldest = next(iter(self._data))
                self._remove(oldest)
                self.evictions += 1
            if self.ttl_s is not None:
                now = expires - self.ttl_s
                while self._data:
                    oldest = next(iter(self._data))
                    if self._data[oldest][1] > now:
                        break
                    self._remove(oldest)

    def put_many(self, items: Iterable[tuple[Hashable, V]]) -> None:
        for key, value in items:
            self.put(key, value)

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                self._remove(key)
        return entry[0] if entry is not None else None

    def __contains__(self, key: object) -> bool:
        """Membership without touching recency or the hit/miss counters."""
        with self._lock:
            entry = self._data.get(key)  # type: ignore[call-overload]
            return entry is not None and entry[1] > self._clock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def purge_expired(self) -> int:
        """Drop every expired entry now; returns how many were dropped."""
        if self.ttl_s is None:
            return 0
        with self._lock:
            now = self._clock()
            dead = [k for k, (_, exp) in self._data.items() if exp <= now]
            for k in dead:
                self._remove(k)
        return len(dead)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self.bytes = 0

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def stats(self) -> dict[str, float | None]:
        return {
            "size": len(self),
            "maxsize": self.maxsize,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "hit_rate": self.hit_rate,
        }
