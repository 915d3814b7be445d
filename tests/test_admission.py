"""Admission by time and fairness in the dynamic batcher (deterministic: the fake encoder's
batches are gated or timed, and the assertions are about order and decisions, not speed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_batcher import FakeEncoder, run, wait_until

from explorank.engine.admission import DEADLINE_SHARE, Admission, ServiceTime, WaitCalibration
from explorank.engine.batcher import DynamicBatcher
from explorank.engine.config import load_config
from explorank.engine.pipeline import Engine
from explorank.engine.requests import CandidateInput, RankInput
from explorank.errors import ConfigError, ResourceExhaustedError, UnavailableError
from tests.server_harness import make_config

pytestmark = pytest.mark.timeout(60)


def test_service_time_fits_overhead_and_cost_per_token() -> None:
    st = ServiceTime(alpha=0.05)
    assert st.predict(1000) == 0.0  # nothing measured yet
    st.observe(0.1, 1000)  # one size only: proportional
    assert st.predict(500) == pytest.approx(0.05) and st.overhead == 0.0
    for tokens in (16, 64, 256, 1024, 2048, 16, 512):  # exactly 2 ms + 10 us per token
        st.observe(0.002 + 1e-5 * tokens, tokens)
    st2 = ServiceTime(alpha=0.05)
    for tokens in (16, 64, 256, 1024, 2048):
        st2.observe(0.002 + 1e-5 * tokens, tokens)
    assert st2.per_token == pytest.approx(1e-5, rel=1e-6)
    assert st2.overhead == pytest.approx(0.002, rel=1e-6)
    assert st2.predict(3000, batches=3) == pytest.approx(3 * 0.002 + 0.03)
    st2.observe(0.0, 10)  # ignored
    assert st2.per_token == pytest.approx(1e-5, rel=1e-6)


def test_the_overhead_is_bounded_by_the_cheapest_batch_measured() -> None:
    """Steady load: batches of 800-1000 tokens whose times scatter so that a line through
    them alone has a 40 ms intercept; warm-up measured a 16-token batch in 4 ms."""
    rng = np.random.default_rng(0)
    st = ServiceTime(alpha=0.05)
    st.observe(0.004, 16)  # warm-up's smallest shape
    times = []
    for _ in range(300):
        tokens = int(rng.integers(800, 1000))
        seconds = 0.040 + 1.3e-4 * tokens + float(rng.normal(0, 0.003))  # a skewed cloud
        st.observe(seconds, tokens)
        times.append((tokens, seconds))
    assert st.cheapest == pytest.approx(0.004)
    assert st.overhead <= 0.004 + 1e-12  # not ~40 ms
    # predictions where the load is stay right (the line goes through the weighted mean)...
    recent = times[-40:]
    mean_t = sum(t for t, _ in recent) / len(recent)
    mean_s = sum(s for _, s in recent) / len(recent)
    assert st.predict(int(mean_t)) == pytest.approx(mean_s, rel=0.05)
    # ...and one small batch is no longer predicted to cost the 40 ms intercept
    assert st.predict(16) < 0.010
    # a fit whose intercept is below the cheapest batch is left alone
    exact = ServiceTime(alpha=0.05)
    for tokens in (16, 64, 256, 1024):
        exact.observe(0.002 + 1e-5 * tokens, tokens)
    assert exact.overhead == pytest.approx(0.002, rel=1e-6)


def test_wait_calibration_is_a_high_quantile_of_the_ratio_within_bounds() -> None:
    cal = WaitCalibration(window=100, quantile=0.9, lo=0.5, hi=4.0, min_samples=10)
    assert cal.factor == 1.0  # nothing measured
    cal.observe(0.001, 0.5)  # predicted under 5 ms: says nothing about the scale
    assert cal.factor == 1.0 and cal.observed == 0
    for _ in range(9):
        cal.observe(0.1, 0.2)
    assert cal.factor == 1.0  # fewer than min_samples
    cal.observe(0.1, 0.2)
    assert cal.factor == pytest.approx(2.0)
    for i in range(1, 101):  # ratios 0.02 ... 2.0 fill the window
        cal.observe(0.1, 0.1 * i / 50)
    assert cal.factor == pytest.approx(91 / 50)  # the 90th percentile, not the mean (1.01)
    for _ in range(100):
        cal.observe(0.1, 0.01)  # the prediction now overestimates: the factor follows down
    assert cal.factor == 0.5  # bounded
    for _ in range(100):
        cal.observe(0.1, 10.0)
    assert cal.factor == 4.0  # bounded
    with pytest.raises(ValueError):
        WaitCalibration(lo=1.5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
            st.floats(min_value=0.0, max_value=50.0, allow_nan=False),
        ),
        max_size=60,
    )
)
def test_wait_calibration_factor_stays_within_its_bounds(pairs: list[tuple[float, float]]) -> None:
    cal = WaitCalibration()
    for predicted, actual in pairs:
        cal.observe(predicted, actual)
        assert cal.lo <= cal.factor <= cal.hi


def test_calibration_scales_the_limit_down_and_the_deadline_rule_both_ways() -> None:
    adm = Admission(max_wait_s=0.25)
    adm.service.observe(0.032, 1000)  # 32 us per token
    now = 100.0
    with pytest.raises(ResourceExhaustedError, match="predicted wait for the encoder is 320 ms"):
        adm.check(ahead_tokens=10_000, own_tokens=64, now=now, deadline=None)
    assert adm.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=now + 0.35) > 0
    for _ in range(500):  # a whole window: real waits were twice the predicted ones
        adm.calibration.observe(0.1, 0.2)
    assert adm.calibration.factor == pytest.approx(2.0)
    # the limit is not scaled up ...
    assert adm.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=None) == pytest.approx(
        0.16
    )
    # ... the deadline rule is: 2 x 160 ms + 2 ms of its own > 70 % of 350 ms
    with pytest.raises(ResourceExhaustedError, match="too close to its deadline"):
        adm.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=now + 0.35)
    for _ in range(500):  # real waits were half the predicted ones: scaled down
        adm.calibration.observe(0.1, 0.05)
    assert adm.calibration.factor == pytest.approx(0.5)
    assert adm.check(ahead_tokens=10_000, own_tokens=64, now=now, deadline=None) == pytest.approx(
        0.16
    )


def test_the_limit_is_for_the_wait_not_for_a_large_requests_own_batches() -> None:
    """A request of eight full batches (640 ms of its own work) behind 32 ms of queue is
    admitted under a 250 ms limit: its own batches are its cost, not a wait; its deadline
    still has to fit all of them."""
    adm = Admission(max_wait_s=0.25)
    adm.service.observe(0.032, 1000)  # 32 us per token
    now = 100.0
    wait = adm.check(ahead_tokens=1000, own_tokens=20_000, own_batches=8, now=now, deadline=None)
    assert wait == pytest.approx(0.032)
    with pytest.raises(ResourceExhaustedError, match="too close to its deadline"):
        adm.check(ahead_tokens=1000, own_tokens=20_000, own_batches=8, now=now, deadline=now + 0.5)


async def _started_batcher(enc: FakeEncoder, max_queue_wait_ms: float) -> DynamicBatcher:
    """Batches of 4, one 16-token bucket, no queue delay: the admission tests' batcher."""
    b = DynamicBatcher(
        enc,
        max_batch_size=4,
        max_queue_delay_ms=0,
        max_queue_size=10_000,
        max_queue_wait_ms=max_queue_wait_ms,
        length_buckets=(16,),
    )
    await b.start()
    return b


def test_admission_rule() -> None:
    adm = Admission(max_wait_s=0.25)
    now = 100.0
    adm.check(ahead_tokens=10_000, own_tokens=64, now=now, deadline=None)  # no measurement
    adm.service.observe(0.032, 1000)  # 32 us per token (one size seen: no overhead)
    assert adm.check(ahead_tokens=0, own_tokens=64, now=now, deadline=now + 0.001) == 0.0
    assert adm.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=None) == pytest.approx(
        0.16
    )
    with pytest.raises(ResourceExhaustedError, match="batching.max_queue_wait_ms"):
        adm.check(ahead_tokens=10_000, own_tokens=64, now=now, deadline=None)  # 320 ms > 250
    with pytest.raises(ResourceExhaustedError, match="too close to its deadline"):
        adm.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=now + 0.1)
    # the encoding (160 + 2 ms) must end within DEADLINE_SHARE (0.6) of the time left
    assert DEADLINE_SHARE == 0.6
    with pytest.raises(ResourceExhaustedError, match="too close to its deadline"):
        adm.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=now + 0.26)  # 156 ms
    assert adm.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=now + 0.28) > 0
    assert adm.rejected == 3


def test_deadline_share_sets_how_much_of_the_time_left_the_encoding_may_take() -> None:
    now = 100.0
    strict = Admission(max_wait_s=None, deadline_share=0.5)
    loose = Admission(max_wait_s=None)  # the default share, 0.6
    for adm in (strict, loose):
        adm.service.observe(0.032, 1000)  # 32 us per token
    # 160 ms queued + 2 ms of its own against 280 ms left: within 0.6 (168 ms), not 0.5 (140)
    assert loose.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=now + 0.28) > 0
    with pytest.raises(ResourceExhaustedError, match="batching.deadline_share 0.5"):
        strict.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=now + 0.28)
    assert strict.check(ahead_tokens=5000, own_tokens=64, now=now, deadline=now + 0.33) > 0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="deadline_share"):
            Admission(max_wait_s=None, deadline_share=bad)
        with pytest.raises(ConfigError, match="deadline_share"):
            DynamicBatcher(lambda ids: ids, deadline_share=bad)
    with pytest.raises(ConfigError, match="deadline_share"):
        load_config(None, environ={"EXPLORANK__BATCHING__DEADLINE_SHARE": "0"})
    assert load_config(None, environ={}).batching.deadline_share == DEADLINE_SHARE
    cfg = load_config(None, environ={"EXPLORANK__BATCHING__DEADLINE_SHARE": "0.8"})
    assert cfg.batching.deadline_share == 0.8


def test_overloaded_batcher_rejects_at_once_instead_of_queueing() -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = await _started_batcher(enc, max_queue_wait_ms=50)
        b.admission.service.observe(0.016, 64)  # 4 sequences x 16 tokens take 16 ms
        busy = asyncio.ensure_future(b.submit(np.arange(1, 9)))
        await wait_until(enc.entered.is_set)
        # each sequence is 16 padded tokens = 4 ms of predicted work: about a dozen fit
        # under 50 ms (counting the batch being computed), the rest are refused at once
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(b.submit(np.arange(1, 9))) for _ in range(40)]
        await asyncio.sleep(0.05)
        refused = [
            t for t in tasks if t.done() and isinstance(t.exception(), ResourceExhaustedError)
        ]
        assert time.monotonic() - t0 < 0.5  # refused on the spot, not after waiting
        assert all("max_queue_wait_ms" in str(t.exception()) for t in refused)
        admitted = [t for t in tasks if t not in refused]
        assert 8 <= len(admitted) <= 13, len(admitted)
        assert b.stats.rejected_overflow == len(refused)
        enc.gate.set()
        await asyncio.gather(busy, *admitted)
        assert b.pending == 0 and b._pending_tokens == 0 and b._executing_tokens == 0
        await b.submit(np.arange(1, 9))  # idle again: admitted
        await b.stop()

    run(main)


def test_precheck_refuses_before_any_work_when_the_queue_rules_a_request_out() -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = await _started_batcher(enc, max_queue_wait_ms=50)
        b.precheck(None)  # idle: nothing ahead, admitted
        b.admission.service.observe(0.016, 64)  # 4 ms per 16-token sequence
        busy = asyncio.ensure_future(b.submit(np.arange(1, 9)))
        await wait_until(enc.entered.is_set)
        queued = [asyncio.ensure_future(b.submit(np.arange(1, 9))) for _ in range(6)]
        await asyncio.sleep(0)
        b.precheck(None)  # 7 x 4 ms ahead: under 50 ms
        now = time.monotonic()
        with pytest.raises(ResourceExhaustedError, match="too close to its deadline"):
            b.precheck(now + 0.02)  # 28 ms of queue against 20 ms left
        before = b.stats.rejected_overflow
        b.admission.max_wait_s = 0.02  # what is queued alone (28 ms) is over the limit
        with pytest.raises(ResourceExhaustedError, match="max_queue_wait_ms"):
            b.precheck(None)
        assert b.stats.rejected_overflow == before + 1
        enc.gate.set()
        await asyncio.gather(busy, *queued)
        await b.stop()
        with pytest.raises(UnavailableError):
            b.precheck(None)

    run(main)


def test_the_batch_computing_counts_only_its_remaining_time() -> None:
    """A batch predicted to take 100 ms that started 60 ms ago leaves at most 40 ms of wait;
    one past its prediction leaves none (not the whole batch again)."""
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = await _started_batcher(enc, max_queue_wait_ms=1000)
        b.admission.service.observe(0.1, 8)  # the 8-token batch below: 100 ms
        busy = asyncio.ensure_future(b.submit(np.arange(1, 9)))
        await wait_until(enc.entered.is_set)
        assert b._check_time(16, 1, 1, time.monotonic(), None) <= 0.1
        await asyncio.sleep(0.06)
        assert b._check_time(16, 1, 1, time.monotonic(), None) <= 0.1 - 0.06 + 1e-9
        await asyncio.sleep(0.06)
        assert b._check_time(16, 1, 1, time.monotonic(), None) == 0.0
        enc.gate.set()
        await busy
        assert b._exec_started == []
        await b.stop()

    run(main)


def test_a_large_requests_backlog_does_not_count_as_ahead_of_a_new_request() -> None:
    """32 sequences enter the queue 4 at a time; a request arriving now waits for the 4
    queued (and the batch being computed), not for all 32: it is admitted under a limit
    that the whole large request would exceed."""
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = await _started_batcher(enc, max_queue_wait_ms=40)
        b.admission.service.observe(0.016, 64)  # 4 ms per 16-token sequence
        busy = asyncio.ensure_future(b.submit(np.arange(1, 9)))
        await wait_until(enc.entered.is_set)
        big = asyncio.ensure_future(b.submit_many([np.arange(1, 9) for _ in range(32)]))
        await asyncio.sleep(0)
        assert b.pending == 32
        tokens, batches = b._ahead()
        # the batch computing (8 padded tokens) + the 4 queued (16 each); not 8 + 32 x 16
        assert tokens == 8 + 4 * 16 and batches == 2
        b.precheck(None)  # 20 ms ahead, not 132 ms
        small = asyncio.ensure_future(b.submit(np.arange(1, 5)))
        enc.gate.set()
        await asyncio.gather(busy, big, small)
        assert b._ahead() == (0, 0)
        await b.stop()

    run(main)


def test_large_request_does_not_hold_back_later_small_ones() -> None:
    """A request of 8 batches enters the queue one batch at a time: a small request that
    arrives after it is computed after at most two of its batches, not after all eight."""
    enc = FakeEncoder(sleep_s=0.01)

    async def main() -> None:
        b = DynamicBatcher(
            enc, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=1000, length_buckets=(16,)
        )
        await b.start()
        big = asyncio.ensure_future(
            b.submit_many([np.array([7, i + 1]) for i in range(32)])  # marker token 7
        )
        await asyncio.sleep(0.002)
        small = await b.submit(np.array([9, 9, 9]))  # marker token 9
        assert small[0] == 3  # its own row (length 3)
        rows = await big
        assert [r[0] for r in rows] == [2] * 32  # every row of the big request, in order
        await b.stop()

    run(main)
    batches = [[row[0] for row, m in zip(ids, mask, strict=True)] for ids, mask in enc.calls]
    small_batch = next(i for i, batch in enumerate(batches) if 9 in batch)
    assert small_batch <= 2, batches
    assert sum(batch.count(7) for batch in batches) == 32
    assert all(len(batch) <= 4 for batch in batches)


def test_cancelled_large_request_leaves_no_backlog() -> None:
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = DynamicBatcher(
            enc, max_batch_size=2, max_queue_delay_ms=0, max_queue_size=100, length_buckets=(16,)
        )
        await b.start()
        busy = asyncio.ensure_future(b.submit(np.arange(1, 4)))
        await wait_until(enc.entered.is_set)
        big = asyncio.ensure_future(b.submit_many([np.arange(1, 4)] * 10))
        await asyncio.sleep(0.01)
        assert b.pending == 10 and len(b._backlogs) == 1
        big.cancel()
        enc.gate.set()
        await busy
        await wait_until(lambda: b.pending == 0)
        assert not b._backlogs and b._pending_tokens == 0
        await b.stop()

    run(main)


def test_the_batcher_calibrates_its_predictions_from_the_waits_it_sees() -> None:
    """A cost model that says 40 ms per sequence for an encoder that takes almost nothing:
    the queued requests wait far less than predicted, the factor goes to its lower bound and
    the next predictions are shorter (a stalled batch, the other way round, raises the
    factor: then only the deadline rule uses it, see WaitCalibration)."""
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = await _started_batcher(enc, max_queue_wait_ms=2000)
        b.admission.service.observe(0.16, 64)  # 40 ms per 16-token sequence
        busy = asyncio.ensure_future(b.submit(np.arange(1, 9)))
        await wait_until(enc.entered.is_set)
        # request k is predicted to wait 20 + 40k ms (all under the 2 s limit)
        queued = [asyncio.ensure_future(b.submit(np.arange(1, 9))) for _ in range(30)]
        await asyncio.sleep(0)
        tokens, batches = b._ahead()
        enc.gate.set()
        await asyncio.gather(busy, *queued)
        cal = b.admission.calibration
        # the calibration uses predicted waits of a tenth of the limit (200 ms) and more
        assert cal.min_predicted_s == pytest.approx(0.2)
        assert cal.observed == 25 and cal.factor == 0.5
        wait = b.admission.check(
            ahead_tokens=tokens, ahead_batches=batches, own_tokens=16, now=0.0, deadline=None
        )
        assert wait == pytest.approx(0.5 * b.admission.service.predict(tokens, batches))
        await b.stop()

    run(main)


def test_requests_record_the_models_prediction_not_the_calibrated_one() -> None:
    """The calibration compares real waits with the cost model's own predictions; were it
    fed its scaled ones, a factor of 0.5 would make the next ratios look twice as large and
    pull the factor back up (feedback)."""
    enc = FakeEncoder(gated=True)

    async def main() -> None:
        b = await _started_batcher(enc, max_queue_wait_ms=2000)
        b.admission.service.observe(0.16, 64)  # 40 ms per 16-token sequence
        for _ in range(100):
            b.admission.calibration.observe(0.4, 0.2)
        assert b.admission.calibration.factor == pytest.approx(0.5)
        busy = asyncio.ensure_future(b.submit(np.arange(1, 9)))
        await wait_until(enc.entered.is_set)
        queued = [asyncio.ensure_future(b.submit(np.arange(1, 9))) for _ in range(8)]
        await asyncio.sleep(0)
        tokens, batches = b._ahead()
        model = b.admission.service.predict(tokens, batches)
        assert b._check_time(16, 1, 1, time.monotonic(), None) == pytest.approx(model, abs=0.01)
        last = b._queues[16][-1]
        assert last.predicted_wait is not None and last.predicted_wait > 0.6 * model
        enc.gate.set()
        await asyncio.gather(busy, *queued)
        await b.stop()

    run(main)


def test_a_refused_rank_does_no_work_on_its_candidates(tiny_bundle: Path, tmp_path: Path) -> None:
    """Under overload the encoder refuses a Rank whose user context is not cached before the
    candidates are looked up; a Rank whose context is cached needs no encoder and is served."""

    async def main() -> None:
        engine = Engine.from_config(make_config(tiny_bundle, tmp_path / "s.db"))
        await engine.start(warmup=False)
        try:
            emb = engine.gen.embedder
            ids = list(emb.catalog.ids[:5])
            cands = [CandidateInput(i) for i in ids]
            await engine.rank(RankInput(context_text="seen before", candidates=cands))
            looked_up: list[Any] = []
            real_candidates = emb.candidates

            async def spy(*args: Any, **kwargs: Any) -> Any:
                looked_up.append(args)
                return await real_candidates(*args, **kwargs)

            def overloaded(deadline: float | None) -> None:
                raise ResourceExhaustedError("overloaded (test)")

            emb.candidates = spy  # type: ignore[method-assign]
            emb.batcher.precheck = overloaded  # type: ignore[method-assign]
            with pytest.raises(ResourceExhaustedError, match="overloaded"):
                await engine.rank(RankInput(context_text="never seen", candidates=cands))
            assert looked_up == []
            out = await engine.rank(RankInput(context_text="seen before", candidates=cands))
            assert len(out.items) > 0 and len(looked_up) == 1
        finally:
            await engine.stop(1.0)

    asyncio.run(main())
