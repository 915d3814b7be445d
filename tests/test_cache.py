"""LRUCache: bound, recency, TTL, counters, thread safety."""

from __future__ import annotations

import threading
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorank.engine.cache import LRUCache, content_key
from explorank.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_evicts_least_recently_used() -> None:
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now most recent
    cache.put("c", 3)  # evicts b
    assert "b" not in cache
    assert cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    assert cache.evictions == 1


def test_hit_miss_counters_and_rate() -> None:
    cache: LRUCache[str] = LRUCache(10)
    assert cache.hit_rate == 0.0
    cache.put("k", "v")
    assert cache.get("k") == "v"
    assert cache.get("nope") is None
    assert cache.get("nope", "dflt") == "dflt"
    assert (cache.hits, cache.misses) == (1, 2)
    assert cache.hit_rate == pytest.approx(1 / 3)
    # membership does not count
    assert "k" in cache
    assert (cache.hits, cache.misses) == (1, 2)


def test_ttl_expires_entries() -> None:
    clock = FakeClock()
    cache: LRUCache[int] = LRUCache(10, ttl_s=5.0, clock=clock)
    cache.put("u1", 1)
    clock.now += 4.9
    assert cache.get("u1") == 1
    clock.now += 0.2  # 5.1 s after put: expired even though it was read recently
    assert cache.get("u1") is None
    assert len(cache) == 0  # removed on lookup
    cache.put("u2", 2)
    cache.put("u3", 3)
    clock.now += 6
    assert cache.purge_expired() == 2
    assert len(cache) == 0


def test_keys_never_asked_again_leave_with_their_ttl() -> None:
    """A new key per request (a new context each time) and nothing read back: the cache
    holds about one TTL of entries, not its whole budget (seen: a soak's RSS creeping for
    30 minutes while the user cache filled its 64 MB with expired entries)."""
    clock = FakeClock()
    cache: LRUCache[int] = LRUCache(
        100_000, ttl_s=5.0, clock=clock, max_bytes=10**9, sizeof=lambda v: 8
    )
    for i in range(1000):
        cache.put(f"k{i}", i)
        assert len(cache) <= 5 and cache.bytes == 8 * len(cache)
        clock.now += 1.0
    assert cache.get("k999") == 999 and cache.get("k994") is None


def test_put_refreshes_ttl_and_value() -> None:
    clock = FakeClock()
    cache: LRUCache[int] = LRUCache(10, ttl_s=5.0, clock=clock)
    cache.put("k", 1)
    clock.now += 4
    cache.put("k", 2)
    clock.now += 4
    assert cache.get("k") == 2


def test_get_many() -> None:
    cache: LRUCache[int] = LRUCache(10)
    cache.put_many([("a", 1), ("b", 2)])
    assert cache.get_many(["a", "x", "b"]) == [1, None, 2]
    assert (cache.hits, cache.misses) == (2, 1)


def test_zero_size_disables() -> None:
    cache: LRUCache[int] = LRUCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None
    assert len(cache) == 0


@pytest.mark.parametrize(("maxsize", "ttl"), [(-1, None), (10, 0.0), (10, -3.0)])
def test_bad_config(maxsize: int, ttl: float | None) -> None:
    with pytest.raises(ConfigError):
        LRUCache(maxsize, ttl_s=ttl)


def test_content_key_is_stable_and_separates_parts() -> None:
    assert content_key("u1", "hello") == content_key("u1", "hello")
    assert content_key("u1", "hello") != content_key("u1h", "ello")
    assert content_key("u1", "hello") != content_key("u1", "hello ")
    assert len(content_key("x" * 10_000)) == 32


@settings(max_examples=60, deadline=None)
@given(
    maxsize=st.integers(1, 6),
    ops=st.lists(st.tuples(st.sampled_from(["get", "put"]), st.integers(0, 9)), max_size=60),
)
def test_matches_reference_lru(maxsize: int, ops: list[tuple[str, int]]) -> None:
    """Against an OrderedDict model: same contents, same hit/miss counts, bound held."""
    cache: LRUCache[int] = LRUCache(maxsize)
    ref: OrderedDict[int, int] = OrderedDict()
    hits = misses = 0
    for step, (op, key) in enumerate(ops):
        if op == "put":
            cache.put(key, step)
            ref[key] = step
            ref.move_to_end(key)
            while len(ref) > maxsize:
                ref.popitem(last=False)
        else:
            expected = ref.get(key)
            if expected is not None:
                ref.move_to_end(key)
                hits += 1
            else:
                misses += 1
            assert cache.get(key) == expected
        assert len(cache) == len(ref) <= maxsize
    assert (cache.hits, cache.misses) == (hits, misses)


@pytest.mark.timeout(30)
def test_thread_safety_under_contention() -> None:
    cache: LRUCache[int] = LRUCache(50)
    errors: list[BaseException] = []

    def worker(tid: int) -> None:
        try:
            for i in range(2000):
                key = (tid * 7 + i) % 120
                cache.put(key, key * 2)
                value = cache.get(key)
                assert value is None or value == key * 2
        except BaseException as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) <= 50
    assert cache.hits + cache.misses == 6 * 2000
