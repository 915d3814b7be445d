"""DynamicBatcher: batching, per-caller results, length buckets, overload, deadlines,
cancellation, draining, loop responsiveness, warm-up.

The fake encoder returns per-row features derived only from a row's real tokens, so a
row that reached the wrong caller (or was computed with the wrong mask) is detected.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorank.engine.batcher import BatcherStats, DynamicBatcher
from explorank.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")


def features(ids: np.ndarray) -> np.ndarray:
    """What the fake encoder returns for one unpadded sequence (order-sensitive)."""
    ids = ids.astype(np.float64)
    pos = np.arange(1, ids.shape[0] + 1, dtype=np.float64)
    return np.array([ids.shape[0], ids.sum(), (ids * pos).sum(), ids[0], ids[-1]])


class FakeEncoder:
    """Records every call; optional per-call sleep, or a gate that blocks the call."""

    def __init__(self, sleep_s: float = 0.0, gated: bool = False) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.sleep_s = sleep_s
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not gated:
            self.gate.set()
        self.lock = threading.Lock()

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls.append((ids.copy(), mask.copy()))
        self.entered.set()
        if not self.gate.wait(timeout=20):
            raise RuntimeError("test gate never opened")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return np.stack([features(row[m.astype(bool)]) for row, m in zip(ids, mask, strict=True)])

    def seen_rows(self) -> list[list[int]]:
        return [
            row[m.astype(bool)].tolist()
            for ids, mask in self.calls
            for row, m in zip(ids, mask, strict=True)
        ]


class RecordingMetrics:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int, float]] = []
        self.waits: list[float] = []
        self.dropped: list[tuple[str, int]] = []

    def observe_batch(
        self, size: int, real_tokens: int, padded_tokens: int, compute_s: float
    ) -> None:
        self.batches.append((size, real_tokens, padded_tokens, compute_s))

    def observe_queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def observe_dropped(self, reason: str, count: int) -> None:
        self.dropped.append((reason, count))


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


def seq(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(1, 30_000, size=n).astype(np.int64)


# ---------------------------------------------------------------- batching and mapping
def test_concurrent_requests_are_batched() -> None:
    enc = FakeEncoder(sleep_s=0.005)
    metrics = RecordingMetrics()

    async def main() -> list[np.ndarray]:
        b = DynamicBatcher(enc, max_batch_size=16, max_queue_delay_ms=5, metrics=metrics)
        await b.start()
        rng = np.random.default_rng(0)
        inputs = [seq(rng, 10) for _ in range(50)]
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.stop()
        for x, out in zip(inputs, outs, strict=True):
            np.testing.assert_array_equal(out, features(x))
        return outs

    run(main)
    sizes = [ids.shape[0] for ids, _ in enc.calls]
    assert sum(sizes) == 50 and max(sizes) > 1 and max(sizes) <= 16
    assert len(enc.calls) < 50
    assert [m[0] for m in metrics.batches] == sizes
    assert len(metrics.waits) == 50 and min(metrics.waits) >= 0


def test_hundreds_of_distinct_requests_map_back_to_their_callers() -> None:
    enc = FakeEncoder()
    rng = np.random.default_rng(7)
    inputs = [seq(rng, int(n)) for n in rng.integers(1, 150, size=400)]
    many_inputs = [seq(rng, int(n)) for n in (3, 40, 17, 128, 5)]

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=8, max_queue_delay_ms=1)
        await b.start()

        async def caller(x: np.ndarray) -> None:
            await asyncio.sleep(float(rng.random()) * 0.01)  # arrivals spread out
            out = await b.submit(x)
            np.testing.assert_array_equal(out, features(x))

        await asyncio.gather(*(caller(x) for x in inputs))
        many = many_inputs
        out = await b.submit_many(many)
        np.testing.assert_array_equal(out, np.stack([features(x) for x in many]))
        await b.stop()
        assert b.stats.requests == 405

    run(main)
    # every sequence was computed exactly once
    expected = sorted(tuple(x.tolist()) for x in inputs + many_inputs)
    assert sorted(tuple(r) for r in enc.seen_rows()) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(1, 140), min_size=1, max_size=60),
    max_batch=st.integers(1, 9),
    delay_ms=st.sampled_from([0.0, 0.5, 2.0]),
)
def test_mapping_property(lengths: list[int], max_batch: int, delay_ms: float) -> None:
    """For any arrival mix: every caller gets f(its own ids); no batch exceeds the limit."""
    enc = FakeEncoder()
    inputs = [
        np.arange(i * 1000 + 1, i * 1000 + 1 + n, dtype=np.int64) for i, n in enumerate(lengths)
    ]

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=max_batch, max_queue_delay_ms=delay_ms)
        await b.start()
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.stop()
        for x, out in zip(inputs, outs, strict=True):
            np.testing.assert_array_equal(out, features(x))

    run(main)
    assert all(ids.shape[0] <= max_batch for ids, _ in enc.calls)
    assert len(enc.seen_rows()) == len(inputs)


def test_no_batch_mixes_length_buckets() -> None:
    enc = FakeEncoder(sleep_s=0.002)
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 200, size=300)

    async def main() -> BatcherStats:
        b = DynamicBatcher(
            enc, max_batch_size=32, max_queue_delay_ms=3, length_buckets=(16, 32, 64, 128)
        )
        await b.start()
        await asyncio.gather(*(b.submit(seq(rng, int(n))) for n in lengths))
        await b.stop()
        assert b.bucket_for(1) == 16 and b.bucket_for(16) == 16 and b.bucket_for(17) == 32
        assert b.bucket_for(129) == 136 and b.bucket_for(136) == 136  # own length, multiple of 8
        return b.stats

    stats = run(main)
    computed = 0
    for ids, mask in enc.calls:
        width = ids.shape[1]
        real = mask.sum(1)
        buckets = {
            16
            if n <= 16
            else 32
            if n <= 32
            else 64
            if n <= 64
            else 128
            if n <= 128
            else -(-n // 8) * 8
            for n in real
        }
        assert len(buckets) == 1, f"batch of width {width} mixes buckets: lengths {sorted(real)}"
        # padded to the batch's longest sequence (rounded up to 8), never past its bucket
        assert width == min(buckets.pop(), -(-int(real.max()) // 8) * 8)
        assert (ids[mask == 0] == 0).all()  # padding is the pad id
        computed += ids.size
    assert stats.padded_tokens == computed
    assert stats.real_tokens == int(lengths.sum())
    assert 0 < stats.padding_efficiency <= 1


def test_oldest_bucket_goes_first() -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=8, max_queue_delay_ms=0)
        await b.start()
        first = asyncio.ensure_future(b.submit(np.arange(1, 4)))
        await wait_until(enc.entered.is_set)  # the worker is busy with `first`
        long_req = asyncio.ensure_future(b.submit(np.arange(1, 30)))  # bucket 32, older
        await asyncio.sleep(0.005)
        short = [asyncio.ensure_future(b.submit(np.arange(1, 5))) for _ in range(5)]  # bucket 16
        await asyncio.sleep(0.005)
        enc.gate.set()
        await asyncio.gather(first, long_req, *short)
        await b.stop()

    run(main)
    widths = [ids.shape[1] for ids, _ in enc.calls]
    assert widths == [8, 32, 8]  # buckets 16, 32, 16; padding trimmed to the longest (x8)
    assert enc.calls[2][0].shape[0] == 5  # the five short ones batched together


def test_full_batch_goes_without_waiting_and_lone_request_waits_the_delay() -> None:
    enc = FakeEncoder()

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=4, max_queue_delay_ms=10_000)
        await b.start()
        t0 = time.monotonic()
        await asyncio.gather(*(b.submit(np.arange(1, 6)) for _ in range(4)))
        assert time.monotonic() - t0 < 2.0  # full batch: no 10 s wait
        await b.stop()

        b2 = DynamicBatcher(enc, max_batch_size=4, max_queue_delay_ms=40)
        await b2.start()
        t0 = time.monotonic()
        await b2.submit(np.arange(1, 6))
        assert time.monotonic() - t0 >= 0.035  # alone: waited for company
        await b2.stop()

    run(main)


def test_batching_disabled_with_max_batch_size_one() -> None:
    enc = FakeEncoder()

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=1, max_queue_delay_ms=5)
        await b.start()
        rng = np.random.default_rng(1)
        inputs = [seq(rng, 7) for _ in range(12)]
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        for x, out in zip(inputs, outs, strict=True):
            np.testing.assert_array_equal(out, features(x))
        await b.stop()
        assert b.warmup_batch_sizes == (1,)

    run(main)
    assert [ids.shape[0] for ids, _ in enc.calls] == [1] * 12


# ---------------------------------------------------------------- overload, deadlines, cancellation
def test_queue_overflow_raises_immediately() -> None:
    enc = FakeEncoder(gated=True)
    metrics = RecordingMetrics()

    async def main() -> None:
        b = DynamicBatcher(
            enc, max_batch_size=2, max_queue_delay_ms=0, max_queue_size=4, metrics=metrics
        )
        await b.start()
        busy = asyncio.ensure_future(b.submit(np.arange(1, 4)))
        await wait_until(enc.entered.is_set)
        queued = [asyncio.ensure_future(b.submit(np.arange(1, 4))) for _ in range(4)]
        await asyncio.sleep(0.01)
        assert b.pending == 4
        t0 = time.monotonic()
        with pytest.raises(ResourceExhaustedError, match="queue is full"):
            await b.submit(np.arange(1, 4))
        with pytest.raises(ResourceExhaustedError):
            await b.submit_many([np.arange(1, 4)])
        assert time.monotonic() - t0 < 0.05
        # more sequences than one request may ever queue: the caller's error, not overload
        with pytest.raises(InvalidArgumentError, match="per-request share"):
            await b.submit_many([np.arange(1, 4)] * 5)
        enc.gate.set()
        await asyncio.gather(busy, *queued)
        await b.submit(np.arange(1, 4))  # room again
        await b.stop()
        assert b.stats.rejected_overflow == 2

    run(main)
    assert ("overflow", 1) in metrics.dropped


def test_expired_deadlines_are_never_computed() -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=4, max_queue_delay_ms=0)
        await b.start()
        busy = asyncio.ensure_future(b.submit(np.array([1, 1, 1])))
        await wait_until(enc.entered.is_set)
        doomed = asyncio.ensure_future(
            b.submit(np.array([66, 66]), deadline=time.monotonic() + 0.03)
        )
        alive = asyncio.ensure_future(b.submit(np.array([77, 77]), deadline=time.monotonic() + 30))
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await doomed  # fails at its deadline, while the worker is still busy
        assert time.monotonic() - t0 < 1.0 and not enc.gate.is_set()
        with pytest.raises(DeadlineExceededError):
            await b.submit(np.array([88]), deadline=time.monotonic() - 1)  # already past
        enc.gate.set()
        np.testing.assert_array_equal(await alive, features(np.array([77, 77])))
        await busy
        await b.stop()
        assert b.stats.dropped_deadline == 2

    run(main)
    rows = enc.seen_rows()
    assert [66, 66] not in rows and [88] not in rows and [77, 77] in rows


def test_cancelled_requests_are_dropped() -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=4, max_queue_delay_ms=0)
        await b.start()
        busy = asyncio.ensure_future(b.submit(np.array([1, 2])))
        await wait_until(enc.entered.is_set)
        stays = asyncio.ensure_future(b.submit(np.array([44])))
        gone = asyncio.ensure_future(b.submit(np.array([55, 55, 55])))  # behind a live one
        first_gone = asyncio.ensure_future(b.submit(np.array([56, 56, 56])))
        await asyncio.sleep(0.005)
        gone.cancel()
        enc.gate.set()
        await asyncio.gather(busy, stays, first_gone)
        with pytest.raises(asyncio.CancelledError):
            await gone
        await b.stop()
        assert b.stats.dropped_cancelled == 1

    run(main)
    rows = enc.seen_rows()
    assert [55, 55, 55] not in rows and [44] in rows and [56, 56, 56] in rows


def test_encode_errors_reach_every_caller_and_the_batcher_survives() -> None:
    calls = {"n": 0}

    def flaky(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("backend exploded")
        return np.ones((ids.shape[0], 3), np.float32)

    async def main() -> None:
        b = DynamicBatcher(flaky, max_batch_size=8, max_queue_delay_ms=5)
        await b.start()
        results = await asyncio.gather(
            *(b.submit(np.arange(1, 5)) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        assert (await b.submit(np.arange(1, 5))).shape == (3,)
        await b.stop()

    run(main)


def test_wrong_row_count_from_encode_fn_is_an_error() -> None:
    async def main() -> None:
        b = DynamicBatcher(
            lambda ids, mask: np.zeros((1, 4)), max_batch_size=4, max_queue_delay_ms=20
        )
        await b.start()
        with pytest.raises(RuntimeError, match="one row per input"):
            await asyncio.gather(b.submit(np.arange(1, 3)), b.submit(np.arange(1, 3)))
        await b.stop()

    run(main)


# ---------------------------------------------------------------- lifecycle and the loop
def test_stop_drains_queued_and_inflight_work() -> None:
    enc = FakeEncoder(sleep_s=0.01)

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=4, max_queue_delay_ms=50)
        await b.start()
        rng = np.random.default_rng(5)
        inputs = [seq(rng, int(n)) for n in rng.integers(1, 100, size=20)]
        tasks = [asyncio.ensure_future(b.submit(x)) for x in inputs]
        await asyncio.sleep(0)  # all enqueued
        await b.stop(drain=True)  # must not wait 50 ms per bucket, must compute everything
        assert all(t.done() for t in tasks)
        for x, t in zip(inputs, tasks, strict=True):
            np.testing.assert_array_equal(t.result(), features(x))
        with pytest.raises(UnavailableError):
            await b.submit(np.arange(1, 3))

    run(main)


def test_stop_without_drain_fails_queued_but_finishes_inflight() -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=2, max_queue_delay_ms=0)
        await b.start()
        busy = asyncio.ensure_future(b.submit(np.array([9, 9])))
        await wait_until(enc.entered.is_set)
        queued = [asyncio.ensure_future(b.submit(np.array([i + 1]))) for i in range(3)]
        await asyncio.sleep(0.005)
        stopping = asyncio.ensure_future(b.stop(drain=False))
        await asyncio.sleep(0.005)
        enc.gate.set()
        await stopping
        np.testing.assert_array_equal(busy.result(), features(np.array([9, 9])))
        for t in queued:
            assert isinstance(t.exception(), UnavailableError)

    run(main)
    assert len(enc.calls) == 1


def test_event_loop_stays_responsive_during_slow_encode() -> None:
    enc = FakeEncoder(sleep_s=0.3)  # a blocking call, as a real backend is

    async def main() -> int:
        b = DynamicBatcher(enc, max_batch_size=4, max_queue_delay_ms=0)
        await b.start()
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.ensure_future(ticker())
        await b.submit(np.arange(1, 10))
        stop.set()
        await t
        await b.stop()
        return ticks

    assert run(main) >= 15  # ~60 possible in 0.3 s; a blocked loop would give ~1


def test_submit_validation_and_lifecycle_errors() -> None:
    async def main() -> None:
        b = DynamicBatcher(FakeEncoder())
        with pytest.raises(UnavailableError):
            await b.submit(np.arange(1, 3))  # not started
        await b.start()
        with pytest.raises(InvalidArgumentError):
            await b.submit(np.array([], dtype=np.int64))
        with pytest.raises(InvalidArgumentError):
            await b.submit(np.ones((2, 2), dtype=np.int64))
        with pytest.raises(InvalidArgumentError):
            await b.submit(np.array([0.5, 1.5]))
        with pytest.raises(InvalidArgumentError):
            await b.submit_many([])
        out = await b.submit([3, 4, 5])  # lists are accepted
        np.testing.assert_array_equal(out, features(np.array([3, 4, 5])))
        await b.stop()

    run(main)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_queue_delay_ms": -1},
        {"max_queue_size": 0},
        {"length_buckets": ()},
        {"length_buckets": (0, 16)},
        {"warmup_batch_sizes": (64,)},
        {"max_inflight_batches": 0},
    ],
)
def test_bad_config(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DynamicBatcher(FakeEncoder(), **kwargs)


# ---------------------------------------------------------------- warm-up and a real model
def test_warmup_covers_every_bucket_and_batch_size() -> None:
    enc = FakeEncoder()

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=12, length_buckets=(8, 16, 32))
        assert b.warmup_batch_sizes == (1, 2, 4, 8, 12)
        shapes = await b.warmup()
        assert shapes == b.warmup_shapes()
        custom = DynamicBatcher(
            enc, max_batch_size=3, length_buckets=(8,), warmup_batch_sizes=range(1, 4)
        )
        assert custom.warmup_shapes() == [(1, 8), (2, 8), (3, 8)]

    run(main)
    seen = {ids.shape for ids, _ in enc.calls}
    assert seen == {(bs, length) for length in (8, 16, 32) for bs in (1, 2, 4, 8, 12)}
    assert len(enc.calls) == 15


def test_warmup_of_a_second_session_leaves_the_cost_model_alone() -> None:
    """``serve --workers``' burst session is warmed through the same shapes; its (slow,
    first-run) times do not become the encoder's cost that admission predicts with."""
    enc, other = FakeEncoder(), FakeEncoder()

    async def main() -> None:
        b = DynamicBatcher(enc, max_batch_size=4, length_buckets=(8, 16))
        await b.warmup()
        service = b.admission.service
        fitted = (service.per_token, service.overhead, service.cheapest)
        assert service.per_token is not None
        shapes = await b.warmup(encode_fn=other, label="the burst session")
        assert shapes == b.warmup_shapes()
        assert (service.per_token, service.overhead, service.cheapest) == fitted

    run(main)
    assert [ids.shape for ids, _ in other.calls] == [ids.shape for ids, _ in enc.calls]
    assert len(enc.calls) == 6


@pytest.mark.parametrize("lanes", [1, 2])
def test_lanes_compute_batches_side_by_side(lanes: int) -> None:
    """``max_inflight_batches`` (the encoder's lanes): that many batches are computed at
    once, each request still gets its own row, and the cost model takes each batch's time
    as a share of the encoder (two batches of 0.2 s side by side: 0.1 s each)."""
    barrier = threading.Barrier(2, timeout=1.0)
    enc = FakeEncoder()
    met: list[bool] = []
    threads: list[int] = []
    bound: dict[int, int] = {}  # executor thread -> the lane it was told it is

    def lane_init(i: int) -> None:
        bound[threading.get_ident()] = i

    def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if not barrier.broken:
            try:  # both batches inside the encoder at the same time, or neither waits long
                barrier.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)
            time.sleep(0.2)
        threads.append(threading.get_ident())
        return enc(ids, mask)

    async def main() -> None:
        b = DynamicBatcher(
            encode,
            max_batch_size=4,
            length_buckets=(8, 16),
            max_inflight_batches=lanes,
            lane_init=lane_init,
        )
        await b.start()
        seqs = [np.arange(1, 4), np.arange(1, 13), np.arange(2, 5), np.arange(2, 14)]
        out = await asyncio.gather(*(b.submit(x) for x in seqs))
        for x, row in zip(seqs, out, strict=True):
            np.testing.assert_array_equal(row, features(x))
        assert b.stats.batches == 2  # one per bucket
        service = b.admission.service
        if lanes == 2:
            assert met == [True, True]
            assert service.predict(16) < 0.15, service.predict(16)
        else:  # one at a time: the first waits for a partner that never comes
            assert met == [False]  # and the second skipped the broken barrier
            assert service.predict(16) > 0.2, service.predict(16)
        # serial work keeps to one thread (the first lane), whatever ran before
        barrier.abort()
        threads.clear()
        for x in seqs:
            np.testing.assert_array_equal(await b.submit(x), features(x))
        assert len(threads) == 4 and len(set(threads)) == 1
        assert bound[threads[0]] == 0  # the first lane's thread
        assert sorted(bound.values()) == list(range(lanes))  # each thread told its lane
        await b.stop()

    run(main)


def test_real_onnx_model_through_the_batcher(tmp_path: Any) -> None:
    """Batched, bucketed ORT results equal each sequence encoded alone."""
    from test_backends import make_bundle  # the hand-built ONNX encoder

    from explorank.engine.backends import create_backend

    backend = create_backend(make_bundle(tmp_path), provider="cpu", intra_op_threads=1)
    rng = np.random.default_rng(11)
    inputs = [rng.integers(1, 50, size=int(n)) for n in rng.integers(1, 60, size=40)]

    async def main() -> list[np.ndarray]:
        b = DynamicBatcher(
            backend.encode, max_batch_size=8, max_queue_delay_ms=2, length_buckets=(8, 16, 32, 64)
        )
        await b.start()
        await b.warmup()
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.stop()
        assert b.stats.requests / b.stats.batches > 1
        return outs

    outs = run(main)
    for x, out in zip(inputs, outs, strict=True):
        alone = backend.encode(x[None, :], np.ones((1, x.shape[0]), np.int64))[0]
        np.testing.assert_allclose(out, alone, atol=1e-5)


def test_broken_or_partial_metrics_never_stop_the_batcher() -> None:
    class Broken:
        def observe_batch(self, *args: Any) -> None:
            raise ValueError("exporter bug")

        def observe_queue_wait(self, seconds: float) -> None:
            raise ValueError("exporter bug")

        # no observe_dropped: it is optional

    async def main() -> None:
        b = DynamicBatcher(FakeEncoder(), max_batch_size=4, max_queue_delay_ms=1, metrics=Broken())  # type: ignore[arg-type]
        await b.start()
        out = await asyncio.gather(*(b.submit(np.arange(1, 4)) for _ in range(6)))
        assert len(out) == 6
        with pytest.raises(DeadlineExceededError):
            await b.submit(np.arange(1, 4), deadline=time.monotonic() - 1)
        assert b._state == "running"
        await b.stop()

    run(main)


def test_sparse_arrivals_are_dispatched_without_waiting_the_delay() -> None:
    """A lone client pays no queue delay once arrivals are known to be far apart; a burst
    (small gaps) still waits for company."""
    enc = FakeEncoder()

    async def main() -> tuple[float, list[int]]:
        b = DynamicBatcher(enc, max_batch_size=8, max_queue_delay_ms=100)
        await b.start()
        latency = 0.0
        for _ in range(4):  # arrivals 450 ms apart > 4 x 100 ms
            t0 = time.monotonic()
            await b.submit(np.arange(1, 6))
            latency = time.monotonic() - t0
            await asyncio.sleep(0.45)
        # now a burst: gaps collapse, requests wait and batch together
        await asyncio.gather(*(b.submit(np.arange(1, 6)) for _ in range(20)))
        await b.stop()
        return latency, [ids.shape[0] for ids, _ in enc.calls]

    latency, sizes = run(main)
    assert latency < 0.06, f"sparse request waited {latency * 1000:.0f} ms (delay is 100 ms)"
    assert max(sizes[4:]) > 1, f"the burst was not batched: {sizes}"


# ---------------------------------------------------------------- token budget and merging
def test_token_budget_caps_batches_of_long_sequences() -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> DynamicBatcher:
        b = DynamicBatcher(
            enc,
            max_batch_size=16,
            max_queue_delay_ms=0,
            max_batch_tokens=256,
            length_buckets=(16, 64),
        )
        assert (b.batch_limit(16), b.batch_limit(64), b.batch_limit(1000)) == (16, 4, 1)
        assert (16, 16) in b.warmup_shapes() and (4, 64) in b.warmup_shapes()
        assert all(n * length <= 256 or n == 1 for n, length in b.warmup_shapes())
        await b.start()
        first = asyncio.ensure_future(b.submit(np.arange(1, 4)))
        await wait_until(enc.entered.is_set)  # the worker is busy: the rest queue up
        rng = np.random.default_rng(0)
        longs = [asyncio.ensure_future(b.submit(seq(rng, 60))) for _ in range(10)]
        shorts = [asyncio.ensure_future(b.submit(seq(rng, 10))) for _ in range(10)]
        await asyncio.sleep(0.01)
        enc.gate.set()
        await asyncio.gather(first, *longs, *shorts)
        await b.stop()
        return b

    run(main)
    shapes = [ids.shape for ids, _ in enc.calls[1:]]
    assert sorted(shapes) == sorted([(4, 64), (4, 64), (2, 64), (10, 16)])


def _batcher_with_costs(enc: FakeEncoder, overhead_s: float, per_token_s: float) -> DynamicBatcher:
    b = DynamicBatcher(
        enc,
        max_batch_size=32,
        max_queue_delay_ms=0,
        length_buckets=(16, 32, 64),
        merge_buckets=True,
    )
    # the cost model the batcher would have fitted: overhead + per-token
    for tokens in (16, 64, 256, 1024, 2048):
        b.admission.service.observe(overhead_s + per_token_s * tokens, tokens)
    return b


@pytest.mark.parametrize(
    ("overhead_s", "per_token_s", "merged"),
    [(0.010, 1e-6, True), (0.001, 1e-4, False)],
    ids=["overhead-dominates", "tokens-dominate"],
)
def test_buckets_merge_only_when_padding_costs_less_than_a_batch(
    overhead_s: float, per_token_s: float, merged: bool
) -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> DynamicBatcher:
        b = _batcher_with_costs(enc, overhead_s, per_token_s)
        service = b.admission.service
        assert service.overhead == pytest.approx(overhead_s, rel=1e-3)
        # keep the given costs: the gated first call's wall time (longer on a busy machine)
        # must not move the fit this test is about
        service.observe = lambda *args, **kwargs: None  # type: ignore[method-assign]
        await b.start()
        first = asyncio.ensure_future(b.submit(np.arange(1, 4)))
        await wait_until(enc.entered.is_set)
        rng = np.random.default_rng(1)
        # buckets 16, 32 and 64
        inputs = [seq(rng, 12) for _ in range(3)] + [seq(rng, 28) for _ in range(3)]
        inputs += [seq(rng, 60) for _ in range(2)]
        futs = [asyncio.ensure_future(b.submit(x)) for x in inputs]
        await asyncio.sleep(0.01)
        enc.gate.set()
        await first
        out = await asyncio.gather(*futs)
        await b.stop()
        for x, row in zip(inputs, out, strict=True):  # every caller got its own row
            np.testing.assert_array_equal(row, features(x))
        return b

    run(main)
    later = enc.calls[1:]
    if merged:
        # padding the 16- and 32-token requests to 64 costs far less than a 10 ms overhead
        assert [ids.shape for ids, _ in later] == [(8, 64)]
    else:
        assert sorted(ids.shape for ids, _ in later) == [(2, 64), (3, 16), (3, 32)]
    for ids, mask in later:
        real = mask.sum(1)
        assert ids.shape[1] == -(-int(real.max()) // 8) * 8
    assert sorted(len(r) for r in enc.seen_rows()) == sorted([3, 12, 12, 12, 28, 28, 28, 60, 60])
