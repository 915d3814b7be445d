"""Under faults: health tells the truth, background work survives errors, a broken encoder
batch fails only its own requests, a greedy client does not hold back the others, Redis can
go away and come back, and SIGTERM drains before it stops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from explorank.engine.bundle import load_bundle
from explorank.engine.pipeline import supervise
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ProcessServer, ThreadServer, make_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def _wait_for(pred: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# ------------------------------------------------------------------ health probe
def test_health_follows_the_state_store(tiny_bundle: Path, tmp_path: Path) -> None:
    config = make_config(tiny_bundle, tmp_path / "s.db", server={"health_interval_s": 0.05})
    with ThreadServer(config) as srv:
        channel = srv.channel()
        assert _health(channel) == SERVING
        store = srv.engine.store
        real = store.healthy

        async def down() -> bool:
            return False

        store.healthy = down  # type: ignore[method-assign]
        _wait_for(lambda: _health(channel) == NOT_SERVING)
        assert srv.engine.metrics.ready._value.get() == 0.0
        store.healthy = real  # type: ignore[method-assign]
        _wait_for(lambda: _health(channel) == SERVING)
        assert srv.engine.metrics.ready._value.get() == 1.0


def test_health_reports_a_failing_encoder(tiny_bundle: Path, tmp_path: Path) -> None:
    config = make_config(tiny_bundle, tmp_path / "s.db", server={"health_interval_s": 0.05})
    with ThreadServer(config) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        batcher = srv.engine.embedder.batcher
        real = batcher._encode_fn
        batcher._encode_fn = lambda ids, mask: (_ for _ in ()).throw(RuntimeError("GPU lost"))
        for i in range(3):
            with pytest.raises(grpc.RpcError) as info:
                stub.Rank(ranker_pb2.RankRequest(context_text=f"fail {i}"), timeout=10)
            assert info.value.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
        _wait_for(lambda: _health(srv.channel()) == NOT_SERVING)
        batcher._encode_fn = real
        stub.Rank(ranker_pb2.RankRequest(context_text="works again"), timeout=10)
        _wait_for(lambda: _health(srv.channel()) == SERVING)


# --------------------------------------------------------------- one bad batch
def test_a_failed_batch_fails_only_its_own_requests() -> None:
    from explorank.engine.batcher import DynamicBatcher

    def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if (ids == 666).any():
            raise RuntimeError("bad batch")
        return np.ones((ids.shape[0], 4), np.float32)

    async def main() -> list[Any]:
        b = DynamicBatcher(encode, max_batch_size=2, max_queue_delay_ms=1, length_buckets=(8,))
        await b.start()
        results = await asyncio.gather(
            b.submit(np.array([1, 2])),
            b.submit(np.array([666, 2])),
            b.submit(np.array([3, 4, 5, 6, 7, 8, 9, 10, 11])),  # another bucket
            return_exceptions=True,
        )
        await b.stop()
        assert b.stats.failed_batches >= 1 and b.stats.consecutive_failures == 0
        return results

    results = asyncio.run(main())
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[2], np.ndarray)  # not in the failed batch: served


# ------------------------------------------------------------------ supervision
def test_supervised_task_restarts_after_an_exception() -> None:
    runs: list[float] = []

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError("transient")
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(supervise("flaky", flaky, first_backoff_s=0.01))
        while len(runs) < 3:
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert runs[2] - runs[1] >= runs[1] - runs[0] > 0  # backoff grows


# ------------------------------------------------------------------ greedy client
class _SlowBackend:
    """The real encoder, made to take 40 ms per batch (as a big model would)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.provider, self.precision = inner.name, inner.provider, inner.precision
        self.embedding_dim = inner.embedding_dim

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        time.sleep(0.04)
        return self.inner.encode(ids, mask)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.inner.close()


def test_greedy_client_does_not_starve_the_others(tiny_bundle: Path, tmp_path: Path) -> None:
    """While one client ranks 255 new candidate texts (8 encoder batches of 32), small Ranks
    from other clients are served between its batches, not after all of them."""
    from explorank.engine.backends import create_backend

    bundle = load_bundle(tiny_bundle)
    backend = _SlowBackend(create_backend(bundle, precision="fp32", provider="cpu"))
    config = make_config(
        tiny_bundle,
        tmp_path / "s.db",
        batching={"max_batch_size": 32, "max_queue_wait_ms": 5000.0},
    )
    with ThreadServer(config, backend=backend) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        greedy_req = ranker_pb2.RankRequest(
            context_text="greedy",
            candidates=[
                ranker_pb2.Candidate(item_id=f"g{i}", text=f"greedy text number {i}")
                for i in range(255)
            ],
        )
        small: list[tuple[float, float]] = []
        done = threading.Event()

        def greedy() -> float:
            t0 = time.monotonic()
            stub.Rank(greedy_req, timeout=60)
            done.set()
            return time.monotonic() - t0

        def smalls(k: int) -> None:
            i = 0
            while not done.is_set():
                t0 = time.monotonic()
                stub.Rank(
                    ranker_pb2.RankRequest(context_text=f"small {k} {i}", top_k=3), timeout=60
                )
                small.append((t0, time.monotonic() - t0))
                i += 1

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            g = pool.submit(greedy)
            time.sleep(0.05)  # the greedy request is queued first
            workers = [pool.submit(smalls, k) for k in range(3)]
            greedy_s = g.result()
            for w in workers:
                w.result()
    served_during = [lat for _, lat in small]
    assert len(served_during) >= 3  # others were served while the greedy request ran
    assert max(served_during) < greedy_s  # and none had to wait for all of it
    assert np.median(served_during) < greedy_s / 2


# ------------------------------------------------------------------ Redis outage
@pytest.mark.redis
@pytest.mark.timeout(240)
def test_redis_outage_unavailable_then_recovers_without_losing_acks(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from redis_server import RedisServer

    try:
        redis = RedisServer(persistent=True).start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        config = make_config(
            tiny_bundle,
            tmp_path / "unused.db",
            server={"health_interval_s": 0.1},
            state={
                "store": "redis",
                "options": {"url": redis.url, "socket_timeout_s": 0.5, "array_flush_every": 1},
            },
        )
        with ThreadServer(config) as srv:
            channel = srv.channel()
            stub = ranker_pb2_grpc.RankerStub(channel)
            acked: set[tuple[str, str]] = set()
            codes: dict[str, int] = {}

            def traffic(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    try:
                        ev = stub.Rank(
                            ranker_pb2.RankRequest(context_text="outage", top_k=2, policy="ucb1"),
                            timeout=5,
                        )
                        item = ev.items[0].item_id
                        if stub.Reward(
                            ranker_pb2.RewardRequest(event_id=ev.event_id, item_id=item, value=1.0),
                            timeout=5,
                        ).accepted:
                            acked.add((ev.event_id, item))
                        codes["OK"] = codes.get("OK", 0) + 1
                    except grpc.RpcError as err:
                        name = err.code().name  # type: ignore[attr-defined]
                        codes[name] = codes.get(name, 0) + 1
                        time.sleep(0.02)

            traffic(1.0)
            before_outage = len(acked)
            assert before_outage > 0 and _health(channel) == SERVING
            redis.stop()
            _wait_for(lambda: _health(channel) == NOT_SERVING)
            traffic(1.0)
            assert len(acked) == before_outage  # nothing acknowledged while Redis is down
            assert codes.get("UNAVAILABLE", 0) > 0
            assert set(codes) <= {"OK", "UNAVAILABLE"}
            redis.restart()
            _wait_for(lambda: _health(channel) == SERVING, timeout=20)
            traffic(1.0)
            assert len(acked) > before_outage  # it reconnected by itself
            stored = srv.run(srv.engine.store.load_stats("ucb1"))
        # every acknowledged reward is in Redis: ucb1's counts add up to them
        assert sum(float(v[0]) for v in stored.items.values()) == len(acked)
    finally:
        redis.cleanup()


# ------------------------------------------------------------------ SIGTERM drain
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_drains_then_refuses_then_exits(tiny_bundle: Path, tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    proc = ProcessServer(
        ["--bundle", str(tiny_bundle), "--state-db", str(db)],
        tmp_path,
        env={"EXPLORANK__SERVER__DRAIN_S": "1.5", "EXPLORANK__SERVER__HEALTH_INTERVAL_S": "0.1"},
    )
    try:
        proc.wait_ready()
        channel = grpc.insecure_channel(proc.address)
        stub = ranker_pb2_grpc.RankerStub(channel)
        ev = stub.Rank(ranker_pb2.RankRequest(context_text="before", top_k=2), timeout=10)
        assert stub.Reward(
            ranker_pb2.RewardRequest(event_id=ev.event_id, item_id=ev.items[0].item_id, value=1),
            timeout=10,
        ).accepted
        proc.signal(signal.SIGTERM)
        _wait_for(lambda: _health(channel) == NOT_SERVING, timeout=5)
        # draining: NOT_SERVING, yet calls are still answered
        during = stub.Rank(ranker_pb2.RankRequest(context_text="during", top_k=2), timeout=10)
        assert len(during.items) == 2
        assert proc.proc.wait(timeout=60) == 0
        with pytest.raises(grpc.RpcError) as info:
            stub.Rank(ranker_pb2.RankRequest(context_text="after"), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        log = proc.output()
        assert "draining for 1.5 s" in log and log.index("draining") < log.index("stopped")
    finally:
        proc.stop()
    # state was flushed: the acknowledged reward is in the database
    import sqlite3

    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM rewards").fetchone()
    assert count == 1
