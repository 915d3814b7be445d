"""Tests of the overload and soak scenarios of ``explorank bench serve``.

As in test_bench.py, nothing here measures performance: the phased load generator, the
per-phase accounting, the RSS sampling and growth figures, the goal statements and the
reports are checked for structure and internal consistency (counts add up, samples are in
time order, growth is computed from the samples), never against timing thresholds, except
where a fake server makes the ordering certain by construction.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from explorank.benchmarks.latency.overload import goal_statements, mqw_from_info
from explorank.benchmarks.latency.phased_load import (
    Phase,
    PhasedRun,
    Record,
    phase_summary,
    phased_open_loop,
    recovered_after_s,
    timeline,
)
from explorank.benchmarks.latency.serve_load import RequestFactory
from explorank.benchmarks.latency.soak import (
    FULL_WARMUP_S,
    RssSampler,
    cache_snapshot,
    rss_from_proc,
    soak_summary,
    soak_warmup_s,
)
from explorank.errors import ExplorankError, InvalidArgumentError
from explorank.v1 import ranker_pb2, ranker_pb2_grpc

ITEMS = [(f"i{k}", f"item number {k} " + "word " * (k % 7)) for k in range(30)]
PHASE_KEYS = {
    "phase",
    "offered_rps",
    "goodput_rps",
    "rejected_rps",
    "deadline_exceeded_rps",
    "other_errors",
    "admitted_p50_ms",
    "admitted_p99_ms",
    "rejection_p50_ms",
    "rejection_p99_ms",
    "client_lag_p99_ms",
    "client_cpu_pct",
}


def _check_phase_counts(p: dict[str, Any]) -> None:
    """The accounting identities of one phase summary."""
    assert p["offered"] == p["sent"] + p["not_sent"]
    assert p["sent"] == (
        p["admitted"] + p["rejected"] + p["deadline_exceeded"] + sum(p["other_errors"].values())
    )
    d = p["duration_s"]
    assert p["offered_rps"] == pytest.approx(p["offered"] / d)
    assert p["goodput_rps"] == pytest.approx(p["admitted"] / d)
    assert p["rejected_rps"] == pytest.approx(p["rejected"] / d)
    assert p["offered_rps"] + 1e-9 >= p["goodput_rps"] + p["rejected_rps"]
    if p["admitted"]:
        assert p["admitted_p50_ms"] <= p["admitted_p99_ms"] <= p["admitted_max_ms"]
    else:
        assert p["admitted_p50_ms"] is None
    if p["rejected"]:
        assert p["rejection_p50_ms"] <= p["rejection_p99_ms"]


# --- the phased open loop against a fake server that rejects at once ----------------------------


class Admitting(ranker_pb2_grpc.RankerServicer):
    """Serves at most ``limit`` requests at a time, each in ``delay_s``; refuses the rest at
    once with RESOURCE_EXHAUSTED (what admission control does)."""

    def __init__(self, limit: int = 2, delay_s: float = 0.03) -> None:
        self.limit, self.delay_s, self.busy = limit, delay_s, 0

    async def Rank(self, request: Any, context: Any) -> Any:
        if self.busy >= self.limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        self.busy += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.busy -= 1
        return ranker_pb2.RankResponse(event_id="e")


def _drive(servicer: Admitting, phases: list[Phase], timeout_s: float = 2.0) -> PhasedRun:
    factory = RequestFactory(ITEMS, candidates=3)

    async def main() -> PhasedRun:
        server = grpc.aio.server()
        ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = ranker_pb2_grpc.RankerStub(ch)
                return await phased_open_loop(
                    lambda i: factory.make("p", i),
                    lambda r: stub.Rank(r, timeout=timeout_s),
                    phases,
                    seed=5,
                    drain_s=timeout_s + 1,
                )
        finally:
            await server.stop(0)

    return asyncio.run(main())


@pytest.mark.timeout(60)
def test_phased_open_loop_accounts_for_every_arrival_and_rejections_come_back_first() -> None:
    phases = [Phase("before", 20.0, 0.5), Phase("overload", 300.0, 0.6), Phase("after", 20.0, 0.5)]
    run = _drive(Admitting(limit=2, delay_s=0.03), phases)
    # every arrival is recorded, in time order, inside its phase
    ts = [r.t_s for r in run.records]
    assert ts == sorted(ts)
    for r in run.records:
        assert run.start_of(r.phase) <= r.t_s < run.start_of(r.phase + 1)
        assert r.code and r.latency_ms is not None and r.latency_ms >= r.rtt_ms >= 0  # type: ignore[operator]
    assert run.length_s == pytest.approx(1.6) and run.elapsed_s >= 1.6
    summaries = [phase_summary(run, k) for k in range(3)]
    assert sum(p["offered"] for p in summaries) == len(run.records)
    for p in summaries:
        assert set(p) >= PHASE_KEYS
        _check_phase_counts(p)
        assert p["other_errors"] == {} and p["not_sent"] == 0
    over = summaries[1]
    assert 60 <= over["offered"] <= 330  # Poisson(180): far outside is a broken generator
    # 2 slots x 30 ms serve at most ~67 req/s: most of 300 req/s must be refused, and a refusal
    # (no sleep) comes back before any answer (30 ms sleep at least)
    assert over["rejected"] > 0 and over["admitted"] > 0
    assert over["rejection_p50_ms"] < 30.0 <= over["admitted_p50_ms"]
    # the timeline holds the same arrivals
    tl = timeline(run, 0.2)
    assert len(tl) == 8 and [b["t_s"] for b in tl] == pytest.approx([0.2 * j for j in range(8)])
    assert sum(b["offered_rps"] * 0.2 for b in tl) == pytest.approx(len(run.records))
    assert sum(b["goodput_rps"] * 0.2 for b in tl) == pytest.approx(
        sum(p["admitted"] for p in summaries)
    )
    rec = recovered_after_s(run, 2, bound_ms=1e9, bin_s=0.1)
    assert rec is None or 0.0 <= rec < 0.5


def test_phased_open_loop_prebuild_sends_the_same_requests_built_before_the_run() -> None:
    """With ``prebuild`` every request is built before the first is sent (the client builds
    nothing while it measures), and the run is the one it is without: the same arrival
    times, the same requests in the same order."""
    phases = [Phase("a", 400.0, 0.1), Phase("b", 800.0, 0.1)]

    def drive(prebuild: bool) -> tuple[PhasedRun, list[tuple[str, int]]]:
        events: list[tuple[str, int]] = []

        def make(i: int) -> int:
            events.append(("make", i))
            return i * 7

        async def send(req: int) -> None:
            events.append(("send", req))

        run = asyncio.run(phased_open_loop(make, send, phases, seed=3, prebuild=prebuild))
        return run, events

    (lazy, lazy_events), (ahead, ahead_events) = drive(False), drive(True)
    assert [(r.phase, r.t_s) for r in ahead.records] == [(r.phase, r.t_s) for r in lazy.records]
    assert len(ahead.records) > 20  # ~120 arrivals expected
    sent = [x for kind, x in ahead_events if kind == "send"]
    assert sent == [x for kind, x in lazy_events if kind == "send"]
    assert sent == [7 * i for i in range(len(ahead.records))]
    first_send = next(j for j, (kind, _) in enumerate(ahead_events) if kind == "send")
    assert all(kind == "make" for kind, _ in ahead_events[:first_send])
    assert all(kind == "send" for kind, _ in ahead_events[first_send:])
    assert all(r.code == "OK" for r in ahead.records)


def test_phased_open_loop_refuses_bad_phases() -> None:
    async def send(req: Any) -> Any:
        return None

    for phases in ([], [Phase("x", 0.0, 1.0)], [Phase("x", 5.0, 0.0)]):
        with pytest.raises(InvalidArgumentError):
            asyncio.run(phased_open_loop(lambda i: i, send, phases))


def _synthetic_run() -> PhasedRun:
    """Two 1 s phases: phase 0 all OK at 10/20/30 ms; phase 1: 2 OK (500, 900 ms),
    2 rejected (rtt 1 and 3 ms), 1 timed out, 1 UNAVAILABLE, 1 not sent; then OK again."""
    recs = [Record(0, 0.1 * k, 0.5, "OK", 10.0 * k, 9.0 * k) for k in (1, 2, 3)]
    recs += [
        Record(1, 1.05, 1.0, "OK", 500.0, 499.0),
        Record(1, 1.1, 2.0, "RESOURCE_EXHAUSTED", 5.0, 1.0),
        Record(1, 1.2, 4.0, "RESOURCE_EXHAUSTED", 7.0, 3.0),
        Record(1, 1.3, 0.0, "DEADLINE_EXCEEDED", 1000.0, 1000.0),
        Record(1, 1.4, 0.0, "UNAVAILABLE", 2.0, 2.0),
        Record(1, 1.45, 0.0, "CLIENT_MAX_IN_FLIGHT"),
        Record(1, 1.6, 0.0, "OK", 40.0, 39.0),
        Record(1, 1.7, 0.0, "OK", 50.0, 49.0),
    ]
    run = PhasedRun([Phase("a", 3.0, 1.0), Phase("b", 8.0, 1.0)], recs, elapsed_s=2.5)
    run.cpu_marks = [(0.0, 1.0), (1.0, 1.25), (2.5, 2.0)]
    return run


def test_phase_summary_timeline_and_recovery_on_known_records() -> None:
    run = _synthetic_run()
    a, b = phase_summary(run, 0), phase_summary(run, 1)
    assert (a["offered"], a["admitted"], a["admitted_p50_ms"]) == (3, 3, 20.0)
    assert a["client_cpu_pct"] == pytest.approx(25.0)
    assert b["client_cpu_pct"] == pytest.approx(50.0)
    _check_phase_counts(b)
    assert (b["offered"], b["sent"], b["not_sent"]) == (8, 7, 1)
    assert (b["admitted"], b["rejected"], b["deadline_exceeded"]) == (3, 2, 1)
    assert b["other_errors"] == {"UNAVAILABLE": 1}
    assert b["rejection_p50_ms"] == pytest.approx(2.0)  # the round trips, not from schedule
    assert b["admitted_p50_ms"] == pytest.approx(50.0) and b["admitted_max_ms"] == 500.0
    assert b["client_lag_max_ms"] == 4.0 and b["start_s"] == 1.0
    tl = timeline(run, 0.5)
    assert [x["offered_rps"] for x in tl] == [6.0, 0.0, 12.0, 4.0]
    assert [x["width_s"] for x in tl] == [0.5] * 4
    assert tl[2]["rejected_rps"] == 4.0 and tl[2]["deadline_exceeded_rps"] == 2.0
    assert tl[2]["other_rps"] == 4.0  # UNAVAILABLE and the one not sent
    assert tl[3]["admitted_p50_ms"] == pytest.approx(45.0)
    # phase b: windows of 0.25 s from 1.0: [1.0, 1.25) fails, [1.25, 1.5) fails, [1.5, 1.75) ok
    assert recovered_after_s(run, 1, bound_ms=100.0, bin_s=0.25) == pytest.approx(0.5)
    assert recovered_after_s(run, 1, bound_ms=10.0, bin_s=0.25) is None
    with pytest.raises(InvalidArgumentError):
        timeline(run, 0.0)


def test_goal_statements_compare_measured_figures() -> None:
    run = _synthetic_run()
    section = {
        "phases": [phase_summary(run, 0), {**phase_summary(run, 1), "phase": "overload"}],
        "single_client": {"p99_ms": 100.0},
        "max_queue_wait": {"ms": 50.0, "source": "GetInfo"},
        "capacity": {"throughput_rps": 3.0},
        "deadline_s": 1.0,
        "recovered_after_s": 0.5,
    }
    g = goal_statements(section)
    assert g["p99_bound_ms"] == 250.0 and "max_queue_wait_ms (50)" in g["p99_bound_formula"]
    assert g["overload_admitted_p99_ms"] == pytest.approx(491.0) and g["p99_within_bound"] is False
    assert g["goodput_pct_of_capacity"] == pytest.approx(100.0) and g["goodput_at_least_90pct"]
    assert g["recovery_p99_ms"] is None and g["recovery_p99_vs_single"] is None
    section["max_queue_wait"] = {"ms": None, "source": "not supported by this server"}
    g = goal_statements(section)
    assert g["p99_bound_ms"] == 200.0 and "not supported by this server" in g["p99_bound_formula"]


def test_max_queue_wait_is_read_from_get_info_only_when_the_protocol_has_it() -> None:
    info = ranker_pb2.GetInfoResponse(batching=ranker_pb2.BatchingInfo(max_batch_size=32))
    has = "max_queue_wait_ms" in ranker_pb2.BatchingInfo.DESCRIPTOR.fields_by_name
    assert (mqw_from_info(info) is not None) == has

    class Batching:
        class DESCRIPTOR:  # noqa: N801 - mimics a protobuf message's descriptor
            fields_by_name = {"max_queue_wait_ms": None}

        max_queue_wait_ms = 25.0

    class Info:
        batching = Batching()

    assert mqw_from_info(Info()) == 25.0


# --- RSS sampling and growth ------------------------------------------------------------------


def test_rss_from_proc_reads_this_process_and_none_for_a_missing_one() -> None:
    rss = rss_from_proc(os.getpid())
    assert rss is not None and rss > 1024 * 1024
    assert rss_from_proc(2**22 + 12345) is None  # above the kernel's pid_max limit


def test_rss_sampler_samples_in_time_order_and_skips_failed_reads() -> None:
    values = iter([100, None, 120, 130, 140, 150, 160, 170, 180, 190, 200] + [210] * 100)
    sampler = RssSampler(lambda: next(values), 0.01)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(sampler.run(stop))
        await asyncio.sleep(0.08)
        stop.set()
        await task

    asyncio.run(main())
    ts = [t for t, _ in sampler.samples]
    assert len(sampler.samples) >= 3 and ts == sorted(ts) and ts[0] >= 0
    assert sampler.samples[0][1] == 100 and sampler.samples[1][1] == 120  # None skipped


def test_soak_summary_growth_slope_and_warmup() -> None:
    mb = 1024 * 1024
    # warm-up jump to 200 MB, then +1 MB per 10 s for 60 s
    samples = [(0.0, 150 * mb), (5.0, 199 * mb)] + [
        (10.0 + 10 * k, (200 + k) * mb) for k in range(7)
    ]
    s = soak_summary(samples, warmup_s=10.0)
    assert s["samples"] == 9 and s["rss_start_mb"] == 150.0
    assert (s["rss_after_warmup_mb"], s["rss_after_warmup_t_s"]) == (200.0, 10.0)
    assert (s["rss_end_mb"], s["rss_end_t_s"], s["rss_peak_mb"]) == (206.0, 70.0, 206.0)
    assert s["growth_pct"] == pytest.approx(3.0) and s["measured_over_s"] == 60.0
    assert s["slope_mb_per_min"] == pytest.approx(6.0)
    assert s["slope_pct_per_10min"] == pytest.approx(30.0)
    short = soak_summary([(0.0, 100 * mb)], warmup_s=5.0)  # nothing after warm-up: the last
    assert short["growth_pct"] == 0.0 and short["slope_mb_per_min"] is None
    with pytest.raises(ExplorankError):
        soak_summary([], 1.0)


# --- end to end on the tiny bundle ------------------------------------------------------------


def test_soak_warmup_covers_the_caches_and_snapshot_reads_them() -> None:
    assert soak_warmup_s(600) == FULL_WARMUP_S == 300.0  # one user-cache TTL
    assert soak_warmup_s(10) == pytest.approx(1.0)  # short runs: 10 %
    page = "\n".join(
        (
            "# TYPE explorank_cache_entries gauge",
            'explorank_cache_entries{cache="user"} 7.0',
            'explorank_cache_entries{cache="event"} 2.0',
            "# TYPE explorank_cache_bytes gauge",
            f'explorank_cache_bytes{{cache="user"}} {3 * 2**20}',
            "# TYPE explorank_cache_budget_bytes gauge",
            f'explorank_cache_budget_bytes{{cache="user"}} {64 * 2**20}',
            "# TYPE explorank_cache_requests counter",
            'explorank_cache_requests_total{cache="user",result="hit"} 5.0',
            "# TYPE process_resident_memory_bytes gauge",
            "process_resident_memory_bytes 1e9",
            "",
        )
    )
    assert cache_snapshot(page) == {
        "user": {"entries": 7.0, "mb": 3.0, "budget_mb": 64.0},
        "event": {"entries": 2.0},
    }
    assert cache_snapshot("") == {}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_overload_and_soak_end_to_end_tiny_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from explorank.benchmarks.latency.report import write_serve_report
    from explorank.benchmarks.latency.serve_bench import ServeBenchConfig, run_serve_bench
    from explorank.engine.config import BatchingConfig

    cfg = ServeBenchConfig(
        bundle=tiny_bundle,
        scenarios=["overload", "soak"],
        duration_s=0.6,
        warmup_s=0.3,
        capacity_s=0.6,
        single_s=0.4,
        soak_s=1.5,
        candidates=10,
        timeout_s=5.0,
        max_queue_wait_ms=50.0,
    )
    report = run_serve_bench(cfg, progress=lambda m: None, logs_dir=tmp_path / "logs")
    write_serve_report(report, tmp_path, "explorank bench serve --scenario overload,soak (test)")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["failed"] == [] and data["rows"] == []  # no sweep
    ov = data["overload"]
    assert [p["phase"] for p in ov["phases"]] == ["before", "overload", "recovery"]
    cap = ov["capacity"]["throughput_rps"]
    assert ov["capacity"]["measured"] and cap > 0 and ov["single_client"]["p99_ms"] > 0
    for p, factor in zip(ov["phases"], (0.5, 3.0, 0.5), strict=True):
        assert set(p) >= PHASE_KEYS and p["rate"] == pytest.approx(factor * cap)
        _check_phase_counts(p)
        assert p["offered"] > 0
    assert sum(b["offered_rps"] * b["width_s"] for b in ov["timeline"]) == pytest.approx(
        sum(p["offered"] for p in ov["phases"])
    )
    mqw = ov["max_queue_wait"]
    if "max_queue_wait_ms" in BatchingConfig.model_fields:  # the server knows the setting
        assert mqw["supported"] is True and mqw["ms"] == 50.0
    else:
        assert mqw == {
            "ms": None,
            "source": "not supported by this server",
            "supported": False,
            "requested_ms": 50.0,
        }
    g = ov["goals"]
    assert g["p99_bound_ms"] == pytest.approx(2 * ov["single_client"]["p99_ms"] + (mqw["ms"] or 0))
    assert ov["rss_mb"]["start"] > 0 and ov["rss_mb"]["peak"] >= ov["rss_mb"]["end"]
    soak = data["soak"]
    samples = soak["rss_samples"]
    assert len(samples) >= 3 and [t for t, _ in samples] == sorted(t for t, _ in samples)
    r = soak["rss"]
    assert r["rss_end_mb"] == pytest.approx(samples[-1][1] / 2**20)
    base = next(v for t, v in samples if t >= soak["warmup_s"])
    assert r["rss_after_warmup_mb"] == pytest.approx(base / 2**20)
    assert r["growth_pct"] == pytest.approx((samples[-1][1] - base) / base * 100)
    assert soak["rate"] == pytest.approx(0.5 * soak["capacity"]["throughput_rps"])
    assert soak["warmup_s"] == pytest.approx(0.15) and samples[-1][0] >= 1.5
    end = soak["caches"]["end"]  # the bench-started server's /metrics
    assert set(end) == {"user", "item", "event"}
    assert end["event"]["entries"] >= 1 and 0 < end["event"]["mb"] <= end["event"]["budget_mb"]
    _check_phase_counts(soak["requests"])
    md = (tmp_path / "report.md").read_text()
    assert "## Overload" in md and "## Soak" in md and "## Headline" not in md
    assert "| phase | offered req/s | admitted req/s |" in md
    assert "target ≥" not in md and "target ≤" not in md
    for png in ("overload.png", "soak_rss.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "latency_vs_load.png").exists()
    assert (tmp_path / "logs" / "explorank-soak.log").is_file()


def test_bench_serve_scenario_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from explorank.cli import main

    out = str(tmp_path)
    assert main(["bench", "serve", "--scenario", "storm", "--out", out]) == 2
    assert "--scenario" in capsys.readouterr().err
    for flag, value in (
        ("--overload-factor", "0"),
        ("--deadline-s", "-1"),
        ("--soak-s", "0"),
        ("--greedy-texts", "0"),
    ):
        assert main(["bench", "serve", flag, value, "--out", out]) == 2
        assert flag in capsys.readouterr().err
    from explorank.cli.bench import _scenarios

    class Args:
        scenario: str | None = None
        soak_s: float | None = 60.0

    assert _scenarios(Args()) == ["soak"]  # type: ignore[arg-type]
    Args.scenario = "overload"
    assert _scenarios(Args()) == ["overload", "soak"]  # type: ignore[arg-type]
    Args.scenario, Args.soak_s = "sweep,soak", None
    assert _scenarios(Args()) == ["sweep", "soak"]  # type: ignore[arg-type]


def test_greedy_scenario_end_to_end_tiny_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from explorank.benchmarks.latency.greedy import greedy_request
    from explorank.benchmarks.latency.report import write_serve_report
    from explorank.benchmarks.latency.serve_bench import ServeBenchConfig, run_serve_bench
    from explorank.benchmarks.latency.serve_load import RequestFactory

    factory = RequestFactory([("a", "alpha text"), ("b", "beta text")], candidates=2)
    one, two = greedy_request(factory, 30, 1), greedy_request(factory, 30, 2)
    assert len(one.candidates) == 30 and all(c.text for c in one.candidates)
    texts = {c.text for c in one.candidates} | {c.text for c in two.candidates}
    assert len(texts) == 60  # every text new: nothing the server could have cached
    cfg = ServeBenchConfig(
        bundle=tiny_bundle,
        scenarios=["greedy"],
        duration_s=1.0,
        warmup_s=0.3,
        candidates=10,
        timeout_s=5.0,
        greedy_texts=40,
    )
    report = run_serve_bench(cfg, progress=lambda m: None, logs_dir=tmp_path / "logs")
    write_serve_report(report, tmp_path, "explorank bench serve --scenario greedy (test)")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["failed"] == [] and data["rows"] == []
    g = data["greedy"]
    assert g["greedy_texts"] == 40 and g["small_clients"] == 4
    for window in ("alone", "with_greedy"):
        assert g[window]["completed"] > 0 and g[window]["p99_ms"] > 0
    assert g["greedy"]["completed"] > 0 and g["greedy_alone"]["completed"] >= 1
    assert g["p99_ratio"] == pytest.approx(g["with_greedy"]["p99_ms"] / g["alone"]["p99_ms"])
    md = (tmp_path / "report.md").read_text()
    assert "## One greedy client" in md and "| alone |" in md
