"""Tests of the latency benchmarks (``explorank bench encoder|serve``) on tiny shapes.

No test here measures performance: they check the machinery (FLOP count, percentiles,
interleaving, skip reporting, load generators, metrics windows, reports, the peer).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from explorank.benchmarks.latency.encoder_bench import (
    EncoderBenchConfig,
    percentiles,
    run_encoder_bench,
    time_shape,
)
from explorank.benchmarks.latency.flops import EncoderArch, encoder_flops
from explorank.benchmarks.latency.serve_load import RequestFactory, closed_loop, open_loop
from explorank.benchmarks.latency.serve_procs import check_loopback, parse_metrics, window_stats
from explorank.errors import InvalidArgumentError
from explorank.v1 import ranker_pb2, ranker_pb2_grpc

ENCODER_ROW_KEYS = {
    "backend",
    "batch_size",
    "seq_len",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "throughput_seq_s",
    "speedup_vs_pytorch",
    "gflops",
    "pct_of_ceiling",
}
SERVE_ROW_KEYS = {
    "target",
    "mode",
    "concurrency",
    "rate",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "throughput_rps",
    "errors",
    "avg_batch_size",
    "padding_efficiency",
}
GPU_BACKENDS = (
    "pytorch-cuda",
    "pytorch-cuda-fp16",
    "ort-cuda",
    "ort-cuda-fp16",
    "ort-cuda-fp16-nograph",
    "ort-trt",
    "tensorrt",
)

# --- FLOPs and statistics ----------------------------------------------------------------------


def test_flops_match_hand_count() -> None:
    arch = {
        "num_layers": 2,
        "hidden_size": 4,
        "num_heads": 2,
        "intermediate_size": 8,
        "vocab_size": 10,
    }
    # b=2, s=3, h=4, i=8 per layer: QKV+out 4*(2*6*4*4)=768, scores+context 2*(2*2*3*3*4)=288,
    # FFN 2*(2*6*4*8)=768 -> 1824; two layers -> 3648.
    assert encoder_flops(arch, 2, 3) == 3648


@given(b=st.integers(1, 64), s=st.integers(1, 256))
def test_flops_scale_linearly_in_batch_and_quadratically_in_attention(b: int, s: int) -> None:
    arch = EncoderArch(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536)
    assert encoder_flops(arch, 2 * b, s) == 2 * encoder_flops(arch, b, s)
    # doubling s doubles the GEMM part and quadruples the attention part
    linear = arch.num_layers * b * s * (8 * 384**2 + 4 * 384 * 1536)
    attention = arch.num_layers * 4 * b * s * s * 384
    assert encoder_flops(arch, b, s) == linear + attention
    assert encoder_flops(arch, b, 2 * s) == 2 * linear + 4 * attention


def test_flops_architecture_errors_name_the_key() -> None:
    with pytest.raises(InvalidArgumentError, match="encoder.architecture.hidden_size"):
        encoder_flops({"num_layers": 2, "num_heads": 2, "intermediate_size": 8}, 1, 1)
    with pytest.raises(InvalidArgumentError, match="num_heads"):
        encoder_flops(
            {"num_layers": 2, "hidden_size": 5, "num_heads": 2, "intermediate_size": 8}, 1, 1
        )


def test_percentiles_on_known_data() -> None:
    assert percentiles(list(range(1, 101)), (50, 95, 99)) == pytest.approx([50.5, 95.05, 99.01])
    assert percentiles([7.0], (50, 99)) == [7.0, 7.0]
    assert percentiles([4, 1, 3, 2], (0, 50, 100)) == [1.0, 2.5, 4.0]  # order does not matter
    with pytest.raises(InvalidArgumentError):
        percentiles([])


# --- interleaving ------------------------------------------------------------------------------


def _fake_backends(
    calls: list[str], names: tuple[str, ...]
) -> list[tuple[str, Callable[..., Any]]]:
    def make(name: str) -> Callable[..., Any]:
        def fn(ids: np.ndarray, mask: np.ndarray) -> str:
            calls.append(name)
            return name

        return fn

    return [(n, make(n)) for n in names]


def test_time_shape_interleaves_and_rotates_backends() -> None:
    calls: list[str] = []
    ticks = iter(range(10_000))
    samples, outputs = time_shape(
        _fake_backends(calls, ("a", "b", "c")),
        np.ones((1, 4)),
        np.ones((1, 4)),
        repeats=4,
        warmup=1,
        timer=lambda: float(next(ticks)),
    )
    assert calls[:3] == ["a", "b", "c"]  # warm-up round
    timed = calls[3:]
    rounds = [timed[i : i + 3] for i in range(0, len(timed), 3)]
    assert len(rounds) == 4
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # every round runs every backend once
    assert [r[0] for r in rounds] == ["a", "b", "c", "a"]  # and the first one rotates
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t == 1.0 for v in samples.values() for t in v)  # each call spans one tick
    assert outputs == {"a": "a", "b": "b", "c": "c"}


def test_time_shape_blocks_settle_untimed_then_time_a_block() -> None:
    calls: list[str] = []
    clock = [0.0]

    def timer() -> float:
        clock[0] += 1.0
        return clock[0]

    samples, _ = time_shape(
        _fake_backends(calls, ("a", "b")),
        np.ones((1, 4)),
        np.ones((1, 4)),
        repeats=5,
        warmup=0,
        block=3,
        settle=2,
        timer=timer,
    )
    # round 1: a x (2 settle + 3 timed), b x 5; round 2 (2 timed left): b first, then a
    assert calls == ["a"] * 5 + ["b"] * 5 + ["b"] * 4 + ["a"] * 4
    assert {k: len(v) for k, v in samples.items()} == {"a": 5, "b": 5}


def test_time_shape_budget_caps_repeats_but_keeps_the_minimum() -> None:
    calls: list[str] = []
    clock = [0.0]

    def timer() -> float:  # every call to a backend takes 1 s
        clock[0] += 1.0
        return clock[0]

    samples, _ = time_shape(
        _fake_backends(calls, ("a", "b")),
        np.ones((1, 2)),
        np.ones((1, 2)),
        repeats=100,
        warmup=1,
        budget_s=6.0,
        min_repeats=2,
        timer=timer,
    )
    assert len(samples["a"]) == 3  # 6 s budget / (2 backends x 1 s)
    samples, _ = time_shape(
        _fake_backends(calls, ("a", "b")),
        np.ones((1, 2)),
        np.ones((1, 2)),
        repeats=100,
        warmup=1,
        budget_s=0.1,
        min_repeats=2,
        timer=timer,
    )
    assert len(samples["a"]) == 2


# --- bench encoder on the tiny bundle ----------------------------------------------------------


def _check_encoder_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    from explorank.benchmarks.latency.report import write_encoder_report

    write_encoder_report(report, out, "explorank bench encoder (test)")
    data = json.loads((out / "report.json").read_text())
    for key in ("machine", "ceiling_gflops", "config", "skipped", "rows", "headline"):
        assert key in data
    assert data["ceiling_gflops"] > 0
    assert data["machine"]["cores_available"] >= 1 and "libraries" in data["machine"]
    for row in data["rows"]:
        assert set(row) >= ENCODER_ROW_KEYS
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["gflops"] == pytest.approx(row["flops"] / (row["mean_ms"] / 1000) / 1e9)
        assert row["throughput_seq_s"] == pytest.approx(row["batch_size"] / (row["mean_ms"] / 1000))
    md = (out / "report.md").read_text()
    assert "| backend | batch | seq |" in md
    for png in ("latency_vs_batch.png", "throughput_vs_batch.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.mark.timeout(120)
def test_encoder_bench_tiny_bundle_reports_rows_and_skips(
    tiny_int8_bundle: Path, tmp_path: Path
) -> None:
    from explorank.benchmarks.latency import encoder_backends
    from explorank.engine.backends import cuda_device_count

    calls: list[str] = []

    def opener(*args: Any, **kwargs: Any) -> Any:
        ready, skipped = encoder_backends.open_backends(*args, **kwargs)
        for b in ready:
            inner = b.encode
            b.encode = (lambda f, n: lambda i, m: (calls.append(n), f(i, m))[1])(inner, b.name)
        return ready, skipped

    cfg = EncoderBenchConfig(
        bundle=tiny_int8_bundle,
        backends=["ort-fp32", "ort-int8", "ort-int8:*", "ort-int8:nope", *GPU_BACKENDS],
        batch_sizes=[1, 2],
        seq_lens=[8],
        repeats=3,
        warmup=1,
        ceiling_n=128,
        ceiling_repeats=1,
        gap_ms=0.0,
        block=1,
        settle=0,
    )
    report = run_encoder_bench(cfg, progress=lambda m: None, backend_opener=opener)
    data = _check_encoder_report(tmp_path, report)
    ran = {r["backend"] for r in data["rows"]}
    skipped = {s["backend"]: s["reason"] for s in data["skipped"]}
    # ort-int8 is the first INT8 variant; ort-int8:* adds the others, side by side
    first, *others = [v["name"] for v in data["int8_variants"]]
    assert others and {"ort-fp32", "ort-int8", *(f"ort-int8:{n}" for n in others)} == ran - set(
        GPU_BACKENDS
    )
    assert "no INT8 variant 'nope'" in skipped["ort-int8:nope"]
    by_name = {v["name"]: v for v in data["int8_variants"]}
    assert by_name[first]["kind"] == "static" and by_name[first]["backend"] == "ort-int8"
    assert by_name[others[0]]["backend"] == f"ort-int8:{others[0]}"
    assert by_name[first]["held_out_generic"]["min_cosine"] >= 0.99
    assert data["headline"]["int8_best_backend"] is None  # 32 x 64 was not measured
    assert "## INT8 variants of the bundle" in (tmp_path / "report.md").read_text()
    for name in GPU_BACKENDS:
        assert (name in ran) != (name in skipped)
        if cuda_device_count() == 0:
            assert "GPU" in skipped[name]
    assert all(r["speedup_vs_pytorch"] is None for r in data["rows"])
    assert len(data["rows"]) == 2 * len(ran)
    # interleaved in the real run: per shape, warm-up + 3 timed rounds of alternating backends
    per_shape = 4 * len(ran)
    for start in range(0, len(calls), per_shape):
        shape_calls = calls[start : start + per_shape]
        for r in range(0, per_shape, len(ran)):
            assert sorted(shape_calls[r : r + len(ran)]) == sorted(ran)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_encoder_bench_with_pytorch_baseline(
    tiny_bundle: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    cfg = EncoderBenchConfig(
        bundle=tiny_bundle,  # no --model: the baseline comes from the manifest's source model_dir
        backends=["pytorch", "ort-fp32"],
        batch_sizes=[2],
        seq_lens=[8, 16],
        repeats=3,
        warmup=1,
        ceiling_n=128,
        ceiling_repeats=1,
        gap_ms=0.0,
    )
    data = _check_encoder_report(tmp_path, run_encoder_bench(cfg, progress=lambda m: None))
    assert data["config"]["pytorch_vs_ort_fp32_min_cosine"] > 0.999  # same model, same function
    assert Path(data["config"]["model_dir"]) == tiny_model_dir.resolve()
    for row in data["rows"]:
        base = next(
            r for r in data["rows"] if r["backend"] == "pytorch" and r["seq_len"] == row["seq_len"]
        )
        assert row["speedup_vs_pytorch"] == pytest.approx(
            row["throughput_seq_s"] / base["throughput_seq_s"]
        )


def test_pytorch_model_dir_resolution_and_skip_reason(tiny_model_dir: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from explorank.benchmarks.latency.encoder_backends import open_backends, resolve_model_dir

    recorded = SimpleNamespace(
        manifest={"source": {"model_dir": str(tiny_model_dir)}}, model_name="m"
    )
    assert resolve_model_dir(recorded, None, is_default=False)[0] == tiny_model_dir  # type: ignore[arg-type]
    unknown = SimpleNamespace(
        manifest={"source": {"model_dir": str(tmp_path / "gone")}}, model_name="m"
    )
    model_dir, note = resolve_model_dir(unknown, None, is_default=False)  # type: ignore[arg-type]
    assert model_dir is None and "--model" in note
    ready, skipped = open_backends(
        unknown,
        ["pytorch"],
        model_dir=None,
        model_note=note,
        threads=1,
        max_batch_size=1,  # type: ignore[arg-type]
    )
    assert ready == [] and skipped == [{"backend": "pytorch", "reason": note}]
    with pytest.raises(InvalidArgumentError, match="--model"):
        resolve_model_dir(unknown, tmp_path, is_default=False)  # type: ignore[arg-type]


def test_gpu_rows_compare_with_pytorch_on_the_gpu(tiny_bundle: Path, tmp_path: Path) -> None:
    """GPU rows take PyTorch on the GPU as their baseline, CPU rows PyTorch on the CPU; the
    headline's GPU ratios come from the right rows (stand-in backends: no GPU needed)."""
    from explorank.benchmarks.latency.encoder_backends import BenchBackend
    from explorank.engine.backends.cuda_graphs import GraphPlan

    seen: dict[str, Any] = {}

    speeds = {
        "pytorch": 8.0,
        "ort-fp32": 4.0,
        "pytorch-cuda": 2.0,
        "ort-cuda-fp16": 0.5,
        "ort-cuda-fp16-nograph": 1.0,
    }
    # each backend's "time" is a fixed cost per call, read through a fake timer
    current: dict[str, float] = {"t": 0.0}

    def opener(bundle: Any, names: list[str], **kwargs: Any) -> Any:
        seen.update(kwargs)

        def make(name: str) -> Any:
            def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
                current["t"] += speeds[name]
                return np.ones((ids.shape[0], 4), np.float32)

            return encode

        gpu = ("pytorch-cuda", "ort-cuda-fp16", "ort-cuda-fp16-nograph")
        return [
            BenchBackend(n, make(n), "gpu" if n in gpu else "cpu", {"provider": n}) for n in names
        ], []

    cfg = EncoderBenchConfig(
        bundle=tiny_bundle,
        backends=list(speeds),
        batch_sizes=[1, 32],
        seq_lens=[16, 64],
        repeats=2,
        warmup=1,
        ceiling_n=128,
        ceiling_repeats=1,
        gap_ms=0.0,
        block=1,
        settle=0,
    )
    report = run_encoder_bench(
        cfg, progress=lambda m: None, timer=lambda: current["t"], backend_opener=opener
    )
    plan = seen["graph_plan"]
    assert isinstance(plan, GraphPlan) and plan.shapes == [(1, 16), (32, 16), (1, 64), (32, 64)]
    for row in report["rows"]:
        expected_base = "pytorch-cuda" if row["device"] == "gpu" else "pytorch"
        assert row["speedup_base"] == expected_base
        assert row["speedup_vs_pytorch"] == pytest.approx(
            speeds[expected_base] / speeds[row["backend"]]
        )
    h = report["headline"]
    assert h["cuda_fp16_vs_pytorch_cuda"] == pytest.approx(4.0)
    assert h["cuda_graphs_vs_none"] == pytest.approx(2.0)
    assert h["cuda_graphs_vs_none_smallest_shape"] == pytest.approx(2.0)
    assert h["smallest_shape"] == {"batch_size": 1, "seq_len": 16}
    assert h["cuda_fp16_vs_cuda_fp32"] is None  # ort-cuda did not run
    from explorank.benchmarks.latency.report import encoder_markdown

    assert "CUDA graphs vs none (fp16): 2.00×" in encoder_markdown(report)


def test_bench_encoder_provider_cuda_without_a_gpu_says_why(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from explorank.cli import main
    from explorank.engine.backends import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("checks the no-GPU path; a GPU is present")
    args = ["bench", "encoder", "--bundle", str(tiny_bundle), "--provider", "cuda"]
    assert main([*args, "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    for name in ("pytorch-cuda", "ort-cuda-fp16", "ort-cuda-fp16-nograph", "tensorrt"):
        assert f"skipping {name}: no NVIDIA GPU" in err
    assert "none of the requested backends can run here" in err


def test_bench_cli_bad_input_exits_2(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from explorank.cli import main

    assert main(["bench", "encoder", "--bundle", str(tiny_bundle), "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
    assert main(["bench", "encoder", "--bundle", str(tiny_bundle), "--backends", "ort-fp64"]) == 2
    assert "--backends" in capsys.readouterr().err
    assert main(["bench", "serve", "--address", "10.1.2.3:50051", "--out", str(tmp_path)]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["bench"]) == 2


# --- load generators against a fake in-process Ranker -------------------------------------------


class FakeRanker(ranker_pb2_grpc.RankerServicer):
    """Answers after ``delay_s``; every ``fail_every``-th request fails with INVALID_ARGUMENT."""

    def __init__(self, delay_s: float = 0.002, fail_every: int = 5) -> None:
        self.delay_s, self.fail_every = delay_s, fail_every
        self.received = 0
        self.failed = 0

    async def Rank(self, request: Any, context: Any) -> Any:
        self.received += 1
        n = self.received
        await asyncio.sleep(self.delay_s)
        if self.fail_every and n % self.fail_every == 0:
            self.failed += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fake failure")
        return ranker_pb2.RankResponse(
            event_id=f"e{n}", items=[ranker_pb2.RankedItem(item_id="x", score=1.0)]
        )


async def _fake_server(servicer: FakeRanker) -> AsyncIterator[Any]:
    server = grpc.aio.server()
    ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ranker_pb2_grpc.RankerStub(ch)
    finally:
        await server.stop(0)


ITEMS = [(f"i{k}", f"item number {k} " + "word " * (k % 7)) for k in range(30)]


def _run(coro_fn: Callable[[Any], Any], servicer: FakeRanker) -> Any:
    async def main() -> Any:
        gen = _fake_server(servicer)
        stub = await gen.__anext__()
        try:
            return await coro_fn(stub)
        finally:
            await gen.aclose()

    return asyncio.run(main())


@pytest.mark.timeout(30)
def test_closed_loop_counts_requests_and_errors_and_stops() -> None:
    fake = FakeRanker(delay_s=0.002, fail_every=5)
    factory = RequestFactory(ITEMS, candidates=5)

    async def go(stub: Any) -> Any:
        return await closed_loop(
            lambda i: factory.make("t", i),
            lambda r: stub.Rank(r, timeout=5),
            concurrency=4,
            duration_s=0.5,
        )

    res = _run(go, fake)
    assert res.sent == fake.received > 8
    assert res.errors == fake.failed == res.error_codes["INVALID_ARGUMENT"] > 0
    assert res.completed + res.errors == res.sent
    assert 0.5 <= res.elapsed_s < 2.0
    s = res.summary()
    assert s["throughput_rps"] == pytest.approx(res.completed / res.elapsed_s)

    capped = _run(
        lambda stub: closed_loop(
            lambda i: factory.make("t", i),
            lambda r: stub.Rank(r, timeout=5),
            concurrency=3,
            duration_s=30,
            max_requests=7,
        ),
        FakeRanker(fail_every=0),
    )
    assert capped.sent == capped.completed == 7 and capped.elapsed_s < 5


@pytest.mark.timeout(30)
def test_open_loop_poisson_counts_and_stops() -> None:
    fake = FakeRanker(delay_s=0.002, fail_every=4)
    factory = RequestFactory(ITEMS, candidates=5)

    async def go(stub: Any) -> Any:
        return await open_loop(
            lambda i: factory.make("o", i),
            lambda r: stub.Rank(r, timeout=5),
            rate=100.0,
            duration_s=0.5,
            seed=3,
        )

    res = _run(go, fake)
    assert res.sent == fake.received == res.arrivals
    assert 15 <= res.sent <= 110  # Poisson(50): far outside this is a broken generator
    assert res.errors == fake.failed and res.completed + res.errors == res.sent
    assert res.elapsed_s < 2.0


@pytest.mark.timeout(30)
def test_open_loop_bounds_in_flight_and_deadlines_end_hung_requests() -> None:
    hung = FakeRanker(delay_s=30.0, fail_every=0)
    factory = RequestFactory(ITEMS, candidates=3)

    async def go(stub: Any) -> Any:
        return await open_loop(
            lambda i: factory.make("h", i),
            lambda r: stub.Rank(r, timeout=0.3),
            rate=200.0,
            duration_s=0.4,
            max_in_flight=5,
            seed=1,
        )

    res = _run(go, hung)
    assert res.completed == 0 and res.sent <= res.arrivals
    assert res.error_codes["DEADLINE_EXCEEDED"] == res.sent
    assert res.error_codes["CLIENT_MAX_IN_FLIGHT"] == res.arrivals - res.sent > 0
    assert res.elapsed_s < 3.0


def test_request_factory_is_deterministic_varied_and_cache_defeating() -> None:
    f = RequestFactory(ITEMS, candidates=8, seed=1)
    a, b = f.make("c4", 0), f.make("c4", 0)
    assert a == b  # every target sees the same requests
    contexts = {f.make("c4", i).context_text for i in range(50)} | {
        f.make("c16", i).context_text for i in range(50)
    }
    assert len(contexts) == 100  # unique by default: the user cache cannot hide encoder work
    req = f.make("c4", 3)
    ids = [c.item_id for c in req.candidates]
    assert len(ids) == len(set(ids)) == 8 and set(ids) <= {i for i, _ in ITEMS}
    n_texts = [sum(t in f.make("x", i).context_text for _, t in ITEMS) for i in range(40)]
    assert min(n_texts) >= 1 and max(n_texts) >= 2
    pooled = RequestFactory(ITEMS, candidates=3, unique=False, pool=4)
    assert len({pooled.make("c1", i).context_text for i in range(60)}) <= 4
    with pytest.raises(InvalidArgumentError, match="--candidates"):
        RequestFactory(ITEMS, candidates=0)


def test_request_factory_history_users_are_the_same_items_as_ids() -> None:
    f = RequestFactory(ITEMS, candidates=5, seed=2)
    for i in range(20):
        text_req, hist_req = f.make("c1", i), f.make("c1", i, history=True)
        assert hist_req.context_text == "" and 1 <= len(hist_req.history_item_ids) <= 4
        texts = dict(ITEMS)
        assert all(texts[h] in text_req.context_text for h in hist_req.history_item_ids)
        assert list(hist_req.candidates) == list(text_req.candidates)


def test_serve_bench_history_target_makes_no_encoder_call(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """``explorank-history`` serves users given as history ids with
    ``user_representation = "history"``: the server's encoder never runs after warm-up."""
    if importlib.util.find_spec("explorank.engine.server") is None:
        pytest.skip("explorank.engine.server is not importable")
    from explorank.benchmarks.latency.serve_bench import ServeBenchConfig, run_serve_bench

    cfg = ServeBenchConfig(
        bundle=tiny_bundle,
        targets=["explorank", "explorank-history"],
        concurrency=[1],
        rates=[5.0],
        duration_s=0.6,
        warmup_s=0.3,
        candidates=10,
        timeout_s=5.0,
    )
    report = run_serve_bench(cfg, progress=lambda m: None)
    rows = {(r["target"], r["mode"]): r for r in report["rows"]}
    assert all(r["errors"] == 0 and r["completed"] > 0 for r in rows.values())
    hist, text = rows[("explorank-history", "closed")], rows[("explorank", "closed")]
    assert not hist.get("batches") and (text.get("batches") or 0) > 0
    h = report["headline"]
    assert h["history_p50_ms"] == hist["p50_ms"] and h["history_vs_text_p50"] > 0


# --- metrics and addresses ---------------------------------------------------------------------

SAMPLE_METRICS = """\
# HELP explorank_batch_size Encoder batch sizes
# TYPE explorank_batch_size histogram
explorank_batch_size_bucket{le="1.0"} 3.0
explorank_batch_size_bucket{le="+Inf"} 10.0
explorank_batch_size_count 10.0
explorank_batch_size_sum 40.0
explorank_batch_size_created 1.7e+09
# HELP explorank_tokens_real_total Real (unpadded) tokens encoded
# TYPE explorank_tokens_real_total counter
explorank_tokens_real_total 900.0
explorank_tokens_real_created 1.7e+09
# HELP explorank_tokens_computed_total Tokens computed incl. padding
# TYPE explorank_tokens_computed_total counter
explorank_tokens_computed_total 1000.0
# HELP explorank_requests_total RPCs by method and status code
# TYPE explorank_requests_total counter
explorank_requests_total{code="OK",rpc="Rank"} 12.0
explorank_requests_total{code="INVALID_ARGUMENT",rpc="Rank"} 3.0
"""


def test_parse_metrics_and_window_stats() -> None:
    before = parse_metrics(SAMPLE_METRICS)
    assert (
        before["explorank_batch_size_sum"] == 40.0 and before["explorank_batch_size_count"] == 10.0
    )
    assert before["explorank_tokens_real_total"] == 900.0
    assert before["explorank_requests_total"] == 15.0  # summed over label sets
    assert not any(k.endswith(("_created", "_bucket")) for k in before)
    after = dict(
        before,
        explorank_batch_size_sum=100.0,
        explorank_batch_size_count=20.0,
        explorank_tokens_real_total=1800.0,
        explorank_tokens_computed_total=2000.0,
    )
    w = window_stats(before, after)
    assert w["avg_batch_size"] == pytest.approx(6.0)  # (100-40)/(20-10)
    assert w["padding_efficiency"] == pytest.approx(0.9)
    idle = window_stats(before, before)
    assert idle["avg_batch_size"] is None and idle["padding_efficiency"] is None


@pytest.mark.parametrize("address", ["10.0.0.1:50051", "example.com:80", "0.0.0.0:1"])
def test_non_loopback_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidArgumentError, match="loopback"):
        check_loopback(address)


def test_loopback_addresses_are_accepted_and_format_checked() -> None:
    assert check_loopback("127.0.0.1:50051") == "127.0.0.1:50051"
    assert check_loopback("localhost:9") == "localhost:9"
    for bad in ("127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(InvalidArgumentError, match="HOST:PORT"):
            check_loopback(bad)


# --- the torch peer and the end-to-end run ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torch_peer_ranks_like_the_bundle_encoder(tiny_bundle: Path, tiny_model_dir: Path) -> None:
    pytest.importorskip("torch")
    from explorank.benchmarks.latency.peer_torch_server import TorchEncoder, build_server
    from explorank.engine.backends import create_backend
    from explorank.engine.bundle import load_bundle
    from explorank.engine.tokenizer import Tokenizer

    bundle = load_bundle(tiny_bundle)
    server, port, _ = build_server(
        bundle, TorchEncoder(tiny_model_dir, bundle.max_seq_length, 1), workers=2
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = ranker_pb2_grpc.RankerStub(ch)
            ids = [it.id for it in bundle.items[:20]]
            text = bundle.items[30].text
            resp = stub.Rank(
                ranker_pb2.RankRequest(
                    context_text=text,
                    top_k=5,
                    candidates=[ranker_pb2.Candidate(item_id=i) for i in ids],
                ),
                timeout=30,
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(
                    ranker_pb2.RankRequest(
                        context_text="x", candidates=[ranker_pb2.Candidate(item_id="nope")]
                    ),
                    timeout=30,
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(0)
    tok = Tokenizer.from_bundle(bundle)
    with create_backend(bundle, backend="onnxruntime", precision="fp32", provider="cpu") as be:
        u = be.encode(*tok.pad([tok.encode(text)]))[0]
    expected = bundle.item_embeddings[[bundle.index[i] for i in ids]] @ u
    order = np.argsort(-expected)[:5]
    assert [it.item_id for it in resp.items] == [ids[i] for i in order]
    assert [it.score for it in resp.items] == pytest.approx(expected[order], abs=1e-3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_serve_bench_end_to_end_quick(
    tiny_bundle: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec("explorank.engine.server") is None:
        pytest.skip(
            "explorank.engine.server is not importable: the engine's server is not built yet"
        )
    from explorank.benchmarks.latency.report import write_serve_report
    from explorank.benchmarks.latency.serve_bench import ServeBenchConfig, run_serve_bench

    targets = ["explorank", "explorank-nobatch", "explorank-w2"]  # w2: two worker processes
    if importlib.util.find_spec("torch") is not None:
        targets.append("torch-peer")
    cfg = ServeBenchConfig(
        bundle=tiny_bundle,
        model_dir=tiny_model_dir,
        targets=targets,
        concurrency=[1, 4],
        duration_s=0.6,
        warmup_s=0.3,
        candidates=10,
        timeout_s=5.0,
        reward_fraction=0.5,
    )
    report = run_serve_bench(cfg, progress=lambda m: None, logs_dir=tmp_path / "logs")
    write_serve_report(report, tmp_path, "explorank bench serve (test)")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["skipped"] == []
    rows = data["rows"]
    assert {r["target"] for r in rows} == set(targets)
    for t in targets:
        mine = [r for r in rows if r["target"] == t]
        assert [r["mode"] for r in mine] == ["closed", "closed", "open", "open"]
        assert [r["concurrency"] for r in mine[:2]] == [1, 4]
        # an open-loop point may exceed what a loaded machine serves: admission refuses
        # the excess at once (RESOURCE_EXHAUSTED); any other error is a failure
        assert all(
            set(r) >= SERVE_ROW_KEYS
            and set(r["error_codes"]) <= {"RESOURCE_EXHAUSTED"}
            and r["completed"] > 0
            for r in mine
        )
        assert all(r["errors"] == 0 for r in mine if r["mode"] == "closed")
    assert all(r["followups"] > 0 and r["followup_errors"] == {} for r in rows)  # Rewards accepted
    ex = [r for r in rows if r["target"].startswith("explorank")]
    assert all(r["avg_batch_size"] >= 1.0 and 0 < r["padding_efficiency"] <= 1.0 for r in ex)
    assert all(r["avg_batch_size"] == 1.0 for r in ex if r["target"] == "explorank-nobatch")
    rates = data["config"]["rates_used"]
    assert all(
        sorted(r["rate"] for r in rows if r["target"] == t and r["mode"] == "open") == sorted(rates)
        for t in targets
    )  # the same open-loop rates for every target
    assert data["headline"]["encoder_batch1_p50_ms"] > 0
    for png in ("latency_vs_load.png", "throughput_vs_concurrency.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| target | mode |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "logs" / "explorank.log").is_file()


# --- headline ratios ---------------------------------------------------------------------------


def _srow(
    target: str, c: int, rps: float, p50: float, p99: float, pad: float | None = None
) -> dict[str, Any]:
    return {
        "target": target,
        "mode": "closed",
        "concurrency": c,
        "rate": None,
        "throughput_rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "padding_efficiency": pad,
    }


def test_serve_headline_ratios() -> None:
    from explorank.benchmarks.latency.headlines import serve_headline

    rows = [
        _srow("explorank", 1, 80, 6.0, 9.0, 0.95),
        _srow("explorank", 16, 300, 40, 90, 0.9),
        _srow("explorank-nobatch", 16, 150, 80, 200),
        _srow("torch-peer", 16, 100, 150, 400),
    ]
    h = serve_headline(rows, [1, 16], encoder_ms=5.0, encoder_seq=32)
    assert h["explorank_vs_peer_throughput"] == pytest.approx(3.0)
    assert h["batching_on_vs_off"] == pytest.approx(2.0)
    assert h["padding_efficiency"] == 0.9 and h["single_client_overhead_ms"] == pytest.approx(1.0)
    assert h["explorank_p99_ms"] == 90 and h["peer_p99_ms"] == 400
    assert "targets" not in h and "met" not in h  # measurements only, no internal goals
    only = serve_headline([_srow("explorank", 4, 10, 1, 2)], [4], None, None)  # nothing to compare
    assert only["concurrency"] == 4 and only["explorank_vs_peer_throughput"] is None
    assert only["batching_on_vs_off"] is None and only["single_client_overhead_ms"] is None


def test_encoder_headline_at_32x64() -> None:
    from explorank.benchmarks.latency.headlines import encoder_headline

    def row(backend: str, thr: float, pct: float | None = None, b: int = 32) -> dict[str, Any]:
        return {
            "backend": backend,
            "batch_size": b,
            "seq_len": 64,
            "throughput_seq_s": thr,
            "pct_of_ceiling": pct,
        }

    rows = [
        row("pytorch", 100),
        row("ort-fp32", 150, 92.0),
        row("ort-int8", 240, 140.0),
        row("ort-int8", 999, b=8),
    ]
    h = encoder_headline(rows, {"parity": {"int8": {"passed": True}}})
    assert h["int8_vs_pytorch"] == pytest.approx(2.4) and h["int8_vs_fp32"] == pytest.approx(1.6)
    assert h["fp32_pct_of_ceiling"] == 92.0 and h["fp32_vs_pytorch"] == pytest.approx(1.5)
    assert "targets" not in h and "met" not in h
    assert h["int8_accuracy_gate_passed"] is True


def test_reports_print_measured_ratios_without_internal_targets() -> None:
    from explorank.benchmarks.latency.headlines import serve_headline
    from explorank.benchmarks.latency.report import encoder_markdown, serve_markdown

    rows = [
        _srow("explorank", 1, 80, 6.0, 9.0, 0.95),
        _srow("explorank", 16, 300, 40, 90, 0.9),
        _srow("explorank-nobatch", 16, 150, 80, 200),
        _srow("torch-peer", 16, 100, 150, 400),
    ]
    for r in rows:
        r.update(mode="closed", p90_ms=r["p99_ms"], completed=1, errors=0, avg_batch_size=None)
    serve_md = serve_markdown({"headline": serve_headline(rows, [1, 16], 5.0, 32), "rows": rows})
    assert "**3.00×**; p99 90 ms vs 400 ms" in serve_md  # explorank vs peer
    assert "**2.00×**" in serve_md and "**0.90**" in serve_md and "**1.00 ms**" in serve_md
    headline = {
        "shape": {"batch_size": 32, "seq_len": 64},
        "int8_vs_pytorch": 2.4,
        "fp32_vs_pytorch": 1.5,
        "int8_vs_fp32": 1.6,
        "fp32_pct_of_ceiling": 92.0,
        "int8_accuracy_gate_passed": True,
    }
    encoder_md = encoder_markdown({"headline": headline, "rows": []})
    assert "**2.40×**" in encoder_md and "**92.0%** of the matmul ceiling" in encoder_md
    for md in (serve_md, encoder_md):
        assert "target ≥" not in md and "target ≤" not in md
