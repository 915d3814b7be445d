"""RedisStore against a real redis-server (private one on a free loopback port, or
``EXPLORANK_TEST_REDIS_URL``); skipped with a reason when neither is available."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis_server import SKIP_REASON, RedisServer, free_port, have_redis

from explorank.errors import ConfigError, InvalidArgumentError
from explorank.plugins.api import EventRecord, RewardRecord, StateUnavailableError, StatsDelta
from explorank.plugins.builtin.redis_store import RedisStore
from tests.store_records import DIM, iter_export_jsonl, parse_export_row
from tests.store_records import make_event as _make_event

pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not have_redis(), reason=SKIP_REASON),
]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}:"  # isolates tests sharing one server


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_deadline(coro: Any, seconds: float) -> Any:
    """``coro`` with a deadline; past it, every task's stack is in the failure (a hang is
    then diagnosable instead of a bare pytest-timeout)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    import io

    out = io.StringIO()
    for t in asyncio.all_tasks():
        if t is not asyncio.current_task():
            t.print_stack(limit=12, file=out)
    task.cancel()
    pytest.fail(f"no result after {seconds:.0f} s; the tasks still running:\n{out.getvalue()}")


def make_event(event_id: str, created_at: float | None = None, k: int = 3) -> EventRecord:
    return _make_event(event_id, created_at, k, policy="linucb")


def deltas_for(event: EventRecord, reward: RewardRecord) -> dict[str, StatsDelta]:
    """What a counting policy and a linear policy would return: exact in binary floats."""
    x = np.asarray(event.ranked_embeddings[event.position_of(reward.item_id)], dtype=np.float64)
    x = np.round(x * 4) / 4  # quarter steps keep sums exact
    return {
        "ucb1": StatsDelta(items={reward.item_id: np.array([1.0, reward.value])}),
        "linucb": StatsDelta(arrays={"A": np.outer(x, x), "b": reward.value * x}),
    }


async def _reward(store: RedisStore, event: EventRecord, item: str, value: float = 0.5) -> bool:
    reward = RewardRecord(event.event_id, item, value, time.time())
    return await store.record_reward(reward, deltas_for(event, reward))


def test_event_roundtrip_and_duplicate(redis_url: str, prefix: str) -> None:
    async def body() -> None:
        store = RedisStore(url=redis_url, key_prefix=prefix)
        await store.open()
        event = make_event("e1")
        await store.log_event(event)
        got = await store.get_event("e1")
        assert got is not None and got.ranked_ids == event.ranked_ids
        np.testing.assert_array_equal(got.ranked_embeddings, event.ranked_embeddings)
        np.testing.assert_array_equal(got.candidate_scores, event.candidate_scores)
        assert await store.get_event("missing") is None
        with pytest.raises(InvalidArgumentError, match="already logged"):
            await store.log_event(event)
        await store.close()

    run(body())


def test_reward_idempotent(redis_url: str, prefix: str) -> None:
    async def body() -> None:
        store = RedisStore(url=redis_url, key_prefix=prefix)
        await store.open()
        event = make_event("e1")
        await store.log_event(event)
        assert await _reward(store, event, "item-0", 1.0) is True
        assert await _reward(store, event, "item-0", 1.0) is False
        assert await _reward(store, event, "item-1", -0.5) is True
        stats = await store.load_stats("ucb1")
        np.testing.assert_array_equal(stats.items["item-0"], [1.0, 1.0])
        np.testing.assert_array_equal(stats.items["item-1"], [1.0, -0.5])
        assert stats.version == 2
        await store.close()

    run(body())


def test_two_replicas_merge_within_bound(redis_url: str, prefix: str) -> None:
    flush_ms = 200.0

    async def body() -> None:
        a = RedisStore(
            url=redis_url, key_prefix=prefix, array_flush_ms=flush_ms, array_flush_every=10_000
        )
        b = RedisStore(
            url=redis_url, key_prefix=prefix, array_flush_ms=flush_ms, array_flush_every=10_000
        )
        await a.open()
        await b.open()
        event = make_event("e1")
        await a.log_event(event)
        assert (await b.get_event("e1")) is not None
        reward = RewardRecord("e1", "item-2", 0.75, time.time())
        expected = deltas_for(event, reward)
        t0 = time.monotonic()
        assert await a.record_reward(reward, expected)
        # item statistics are in Redis as soon as the reward is acknowledged
        np.testing.assert_array_equal((await b.load_stats("ucb1")).items["item-2"], [1.0, 0.75])
        # the writer sees its own unflushed array delta at once
        np.testing.assert_array_equal(
            (await a.load_stats("linucb")).arrays["A"], expected["linucb"].arrays["A"]
        )
        while "A" not in (await b.load_stats("linucb")).arrays:
            assert time.monotonic() - t0 < flush_ms / 1000 + 1.0, (
                "array delta not visible within bound"
            )
            await asyncio.sleep(0.02)
        seen = await b.load_stats("linucb")
        np.testing.assert_array_equal(seen.arrays["A"], expected["linucb"].arrays["A"])
        np.testing.assert_array_equal(seen.arrays["b"], expected["linucb"].arrays["b"])
        # a duplicate sent to the other replica is refused and changes nothing
        assert not await b.record_reward(reward, expected)
        await a.close()
        await b.close()
        np.testing.assert_array_equal(
            (await _fresh_stats(redis_url, prefix, "ucb1")).items["item-2"], [1.0, 0.75]
        )

    run(body())


async def _fresh_stats(url: str, prefix: str, policy: str) -> Any:
    store = RedisStore(url=url, key_prefix=prefix)
    await store.open()
    try:
        return await store.load_stats(policy)
    finally:
        await store.close()


@pytest.mark.timeout(240)  # about 1 s on a quiet machine; a starved redis-server is slow
def test_concurrent_increments_sum_exactly(redis_url: str, prefix: str) -> None:
    n_events = 60

    async def body() -> None:
        stores = [
            RedisStore(
                url=redis_url,
                key_prefix=prefix,
                array_flush_every=7,
                compact_after=3,
                socket_timeout_s=10.0,  # 360 concurrent scripts: no spurious timeout under load
            )
            for _ in range(3)
        ]
        for s in stores:
            await s.open()
        events = [make_event(f"e{i}") for i in range(n_events)]
        await asyncio.gather(*(stores[i % 3].log_event(e) for i, e in enumerate(events)))
        # every reward sent twice, through different replicas, the two copies racing each
        # other; at most 48 pairs in flight (a 2-core CI machine serves 360 scripts at once
        # slowly, and what is tested is the races, not the width)
        jobs = [(e, item) for e in events for item in e.ranked_ids]
        gate = asyncio.Semaphore(48)

        async def pair(i: int, e: EventRecord, item: str) -> list[bool]:
            async with gate:
                return list(
                    await asyncio.gather(
                        *(_reward(stores[(i + rep) % 3], e, item) for rep in (0, 1))
                    )
                )

        pairs = await asyncio.gather(*(pair(i, e, item) for i, (e, item) in enumerate(jobs)))
        results = [ok for both in pairs for ok in both]
        assert sum(results) == len(jobs)
        for s in stores:
            await s.close()
        expected_a = np.zeros((DIM, DIM))
        counts: dict[str, float] = {}
        for e, item in jobs:
            d = deltas_for(e, RewardRecord(e.event_id, item, 0.5, 0.0))
            expected_a += d["linucb"].arrays["A"]
            counts[item] = counts.get(item, 0.0) + 1.0
        ucb = await _fresh_stats(redis_url, prefix, "ucb1")
        for item, count in counts.items():
            np.testing.assert_array_equal(ucb.items[item], [count, 0.5 * count])
        lin = await _fresh_stats(redis_url, prefix, "linucb")
        np.testing.assert_array_equal(lin.arrays["A"], expected_a)

    run(_with_deadline(body(), 150))


def test_compaction_keeps_the_sum(redis_url: str, prefix: str) -> None:
    async def body() -> None:
        store = RedisStore(url=redis_url, key_prefix=prefix, array_flush_every=1, compact_after=2)
        await store.open()
        event = make_event("e1")
        total = np.zeros((DIM, DIM))
        for i, item in enumerate(event.ranked_ids):
            reward = RewardRecord("e1", item, 0.25 * i, time.time())
            d = deltas_for(event, reward)
            total += d["linucb"].arrays["A"]
            assert await store.record_reward(reward, d)
            await store.flush()
        for _ in range(2):  # the first load folds the delta list into the base
            np.testing.assert_array_equal((await store.load_stats("linucb")).arrays["A"], total)
        assert await store._client.llen(store.key("stats", "linucb", "arr", "A", "deltas")) == 0
        await store.close()

    run(body())


def test_recover_pending_after_replica_crash(redis_url: str, prefix: str) -> None:
    async def body() -> None:
        dead = RedisStore(
            url=redis_url,
            key_prefix=prefix,
            array_flush_ms=60_000,
            array_flush_every=10_000,
            replica_ttl_s=1,
        )
        await dead.open()
        dead._timer.cancel()  # type: ignore[union-attr]  # the replica "dies": no flush, no heartbeat
        event = make_event("e1")
        await dead.log_event(event)
        total = np.zeros((DIM, DIM))
        for item in event.ranked_ids:
            reward = RewardRecord("e1", item, 1.0, time.time())
            total += deltas_for(event, reward)["linucb"].arrays["A"]
            assert await dead.record_reward(reward, deltas_for(event, reward))
        live = RedisStore(url=redis_url, key_prefix=prefix)
        await live.open()
        assert "A" not in (await live.load_stats("linucb")).arrays
        assert await live.recover_pending(deltas_for) == 0  # heartbeat still fresh: not dead yet
        await asyncio.sleep(1.2)
        assert await live.recover_pending(deltas_for) == len(event.ranked_ids)
        assert await live.recover_pending(deltas_for) == 0
        np.testing.assert_array_equal((await live.load_stats("linucb")).arrays["A"], total)
        await dead.flush()  # a zombie flush after recovery must not double-count
        np.testing.assert_array_equal((await live.load_stats("linucb")).arrays["A"], total)
        await live.close()
        await dead._client.aclose(close_connection_pool=True)

    run(body())


def test_export_and_retention(redis_url: str, prefix: str, tmp_path: Path) -> None:
    async def body() -> None:
        store = RedisStore(url=redis_url, key_prefix=prefix)
        await store.open()
        now = time.time()
        for i in range(5):
            await store.log_event(make_event(f"e{i}", created_at=now - 100 + i))
        await _reward(store, make_event("e3"), "item-1", -1.0)
        n = await store.export_events(tmp_path / "log.jsonl")
        rows = list(iter_export_jsonl(tmp_path / "log.jsonl"))
        assert n == 5 and [r["event_id"] for r in rows] == [f"e{i}" for i in range(5)]
        event, rewards = parse_export_row(rows[3])
        assert [(r.item_id, r.value) for r in rewards] == [("item-1", -1.0)]
        np.testing.assert_array_equal(event.ranked_embeddings, make_event("e3").ranked_embeddings)
        assert rows[3]["ranked"][1] == {
            "item_id": "item-1",
            "score": 0.25,
            "propensity": 0.8,
            "explored": True,
            "position": 1,
        }
        assert await store.apply_retention(None, 3) == 2
        assert await store.get_event("e1") is None and await store.get_event("e2") is not None
        assert await store.apply_retention(97.5, None) == 1  # e2 (now-98) is older
        assert await store.export_events(tmp_path / "log2.jsonl") == 2
        assert [
            json.loads(x)["event_id"] for x in (tmp_path / "log2.jsonl").read_text().splitlines()
        ] == ["e3", "e4"]
        # statistics already absorbed the reward: retention leaves them alone
        assert (await store.load_stats("ucb1")).items["item-1"][0] == 1.0
        await store.close()

    run(body())


def test_outage_raises_unavailable(prefix: str) -> None:
    try:
        server = RedisServer().start()
    except FileNotFoundError:
        pytest.skip("needs a private redis-server binary to kill")

    async def body() -> None:
        store = RedisStore(url=server.url, key_prefix=prefix, socket_timeout_s=1.0)
        await store.open()
        event = make_event("e1")
        await store.log_event(event)
        assert await _reward(store, event, "item-0")
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(StateUnavailableError):
            await _reward(store, event, "item-1")
        with pytest.raises(StateUnavailableError):
            await store.log_event(make_event("e2"))
        with pytest.raises(StateUnavailableError):
            await store.load_stats("ucb1")
        with pytest.raises(StateUnavailableError):
            await store.get_event("e1")
        assert time.monotonic() - t0 < 5.0
        await store.close()  # logs the unflushed deltas, does not raise

    try:
        run(body())
    finally:
        server.cleanup()


def test_unreachable_at_open_and_bad_options() -> None:
    with pytest.raises(StateUnavailableError):
        run(RedisStore(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5).open())
    with pytest.raises(ConfigError, match="unknown parameter"):
        RedisStore(urll="redis://x")
    with pytest.raises(ConfigError, match="array_flush_ms"):
        RedisStore(array_flush_ms=0)
    with pytest.raises(ConfigError, match="url"):
        RedisStore(url="http://localhost")


def test_lost_answer_then_retry_applies_once(redis_url: str, prefix: str) -> None:
    """The script ran but the answer was lost: the caller got UNAVAILABLE; its retry is a
    duplicate, yet the array delta still reaches Redis exactly once."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def body() -> None:
        store = RedisStore(
            url=redis_url, key_prefix=prefix, array_flush_every=10_000, array_flush_ms=60_000
        )
        await store.open()
        event = make_event("e1")
        reward = RewardRecord("e1", "item-1", 1.0, time.time())
        expected = deltas_for(event, reward)
        script = store._scripts["reward"]

        async def lost(*args: Any, **kwargs: Any) -> Any:
            await script(*args, **kwargs)
            raise RedisConnectionError("connection reset after the script ran")

        store._scripts["reward"] = lost
        with pytest.raises(StateUnavailableError):
            await store.record_reward(reward, expected)
        store._scripts["reward"] = script
        assert await store.record_reward(reward, expected) is False
        assert await store.record_reward(reward, expected) is False  # not accumulated twice
        await store.flush()
        await store.close()
        lin = await _fresh_stats(redis_url, prefix, "linucb")
        np.testing.assert_array_equal(lin.arrays["A"], expected["linucb"].arrays["A"])
        ucb = await _fresh_stats(redis_url, prefix, "ucb1")
        np.testing.assert_array_equal(ucb.items["item-1"], [1.0, 1.0])

    run(body())


def test_close_is_bounded_when_the_flush_never_returns(redis_url: str, prefix: str) -> None:
    async def body() -> tuple[float, bool]:
        store = RedisStore(url=redis_url, key_prefix=prefix, socket_timeout_s=0.2)
        await store.open()

        async def stuck() -> None:
            await asyncio.Event().wait()  # a flush stuck inside the client

        store.flush = stuck  # type: ignore[method-assign]
        t0 = time.monotonic()
        await store.close()
        return time.monotonic() - t0, store._client is None

    took, closed = run(body())
    # bounded by a few socket timeouts (2 x (0.2 + 1) s for the flush), and closed anyway
    assert closed and 2.0 < took < 6.0, took
