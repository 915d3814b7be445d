"""``bench serve --soak-s N``: steady load for a long time while the server's resident
memory is sampled.

On one explorank server (started by the bench, or ``--address``): warm up, measure the
capacity (closed-loop saturation, or ``--capacity``), then send Poisson load at
``soak_fraction`` (default 50 %) of it for a warm-up and then ``N`` seconds while
sampling the server's RSS every few seconds. The warm-up lets allocator pools, ONNX Runtime
arenas and the server's bounded caches reach their steady size: the event cache fills its
byte budget (at 50 % load on two cores within about 2.5 minutes) and the user cache holds
one TTL of contexts (``cache.user_ttl_s``, 5 minutes by default), so a soak of 5 minutes or
more warms up for :data:`FULL_WARMUP_S` (``--soak-warmup-s`` sets another). Growth is
measured over the ``N`` seconds after it, from the first sample at its end to the last:

* a bench-started server: ``VmRSS`` of its process from ``/proc/<pid>/status``;
* ``--address``: ``process_resident_memory_bytes`` from ``--metrics-url`` (explorank's
  /metrics exports it).

Where the server's /metrics is known, the caches' entries and bytes against their budgets
(``explorank_cache_*``) are read at the end of the warm-up and at the end, so the report
shows whether they were full when growth was measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorank.benchmarks.latency.phased_load import (
    Phase,
    closed_point,
    phase_summary,
    phased_open_loop,
)
from explorank.benchmarks.latency.serve_load import RequestFactory
from explorank.benchmarks.latency.serve_procs import explorank_server, scrape_metrics
from explorank.errors import ExplorankError

if TYPE_CHECKING:
    from explorank.benchmarks.latency.serve_bench import ServeBenchConfig

__all__ = [
    "FULL_WARMUP_S",
    "RssSampler",
    "cache_snapshot",
    "rss_from_metrics",
    "rss_from_proc",
    "run_soak",
    "sample_interval_s",
    "soak_summary",
    "soak_warmup_s",
]

RSS_METRIC = "process_resident_memory_bytes"
MB = 1024.0 * 1024.0
#: Warm-up of a soak of 5 minutes or more: the user cache's default TTL, the last of the
#: server's bounded caches to reach its steady size under constant load.
FULL_WARMUP_S = 300.0


def rss_from_proc(pid: int) -> int | None:
    """Resident set size of process ``pid`` in bytes (``VmRSS``), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_from_metrics(url: str) -> int | None:
    """``process_resident_memory_bytes`` from a Prometheus endpoint, None when absent."""
    value = scrape_metrics(url).get(RSS_METRIC)
    return int(value) if value is not None else None


def sample_interval_s(soak_s: float) -> float:
    """About 100 samples per run, between every 0.2 s and every 5 s."""
    return min(5.0, max(0.2, soak_s / 100.0))


def soak_warmup_s(soak_s: float) -> float:
    """The warm-up before a soak of ``soak_s`` measured seconds: :data:`FULL_WARMUP_S` for
    soaks of 5 minutes or more, else 10 % of it (short runs, tests)."""
    return FULL_WARMUP_S if soak_s >= 300.0 else 0.1 * soak_s


_CACHE_GAUGES = {
    "explorank_cache_entries": ("entries", 1.0),
    "explorank_cache_bytes": ("mb", MB),
    "explorank_cache_budget_bytes": ("budget_mb", MB),
}


def cache_snapshot(text: str) -> dict[str, dict[str, float]]:
    """``{cache: {entries, mb, budget_mb}}`` from a /metrics page (empty when the server
    exports no cache gauges)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = _CACHE_GAUGES.get(sample.name)
            if field is not None and "cache" in sample.labels:
                out.setdefault(sample.labels["cache"], {})[field[0]] = sample.value / field[1]
    return out


def _caches_now(url: str | None) -> dict[str, dict[str, float]] | None:
    if not url or not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        return None
    try:
        with urllib.request.urlopen(url, timeout=5.0) as resp:  # noqa: S310 - loopback only
            return cache_snapshot(resp.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


class RssSampler:
    """Samples ``read()`` every ``interval_s`` into ``samples`` as (seconds since
    ``origin``, bytes); a failed read (None) is skipped."""

    def __init__(
        self,
        read: Callable[[], int | None],
        interval_s: float,
        *,
        origin: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.read, self.interval_s, self.clock = read, interval_s, clock
        self.origin = clock() if origin is None else origin
        self.samples: list[tuple[float, int]] = []

    def sample(self) -> int | None:
        t = self.clock() - self.origin
        value = self.read()
        if value is not None:
            self.samples.append((t, value))
        return value

    async def run(self, stop: asyncio.Event) -> None:
        """Sample now and then every ``interval_s`` until ``stop`` is set, then once more."""
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        await asyncio.to_thread(self.sample)


def soak_summary(samples: list[tuple[float, int]], warmup_s: float) -> dict[str, Any]:
    """RSS after warm-up (the first sample at or after ``warmup_s``), at the end, their
    growth in %, the peak, and the least-squares slope over the samples after warm-up."""
    if not samples:
        raise ExplorankError("no RSS sample was taken")
    after = [s for s in samples if s[0] >= warmup_s] or samples[-1:]
    base_t, base = after[0]
    end_t, end = samples[-1]
    slope = None
    if len(after) >= 2 and after[-1][0] > after[0][0]:
        ts = [t for t, _ in after]
        vs = [v / MB for _, v in after]
        mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
        den = sum((t - mt) ** 2 for t in ts)
        slope = sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den * 60.0
    return {
        "samples": len(samples),
        "rss_start_mb": samples[0][1] / MB,
        "rss_after_warmup_mb": base / MB,
        "rss_after_warmup_t_s": base_t,
        "rss_end_mb": end / MB,
        "rss_end_t_s": end_t,
        "rss_peak_mb": max(v for _, v in samples) / MB,
        "growth_pct": (end - base) / base * 100.0 if base else None,
        "measured_over_s": end_t - base_t,
        "slope_mb_per_min": slope,
        "slope_pct_per_10min": slope * 10.0 / (base / MB) * 100.0
        if (slope is not None and base)
        else None,
    }


async def _measure(
    address: str,
    read_rss: Callable[[], int | None],
    factory: RequestFactory,
    cfg: ServeBenchConfig,
    progress: Callable[[str], None],
    metrics_url: str | None,
) -> dict[str, Any]:
    import grpc

    from explorank.v1 import ranker_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)

        def send(req: Any) -> Any:
            return stub.Rank(req, timeout=cfg.timeout_s)

        drain = cfg.timeout_s + 2
        if read_rss() is None:
            raise ExplorankError(
                "cannot read the server's resident memory: "
                + (
                    f"{cfg.metrics_url} has no {RSS_METRIC} (a server whose /metrics exports "
                    "no process metrics: run the soak without --address)"
                    if cfg.address
                    else "its process is gone"
                )
            )
        await closed_point(
            lambda i: factory.make("soak-warm", i),
            send,
            concurrency=cfg.capacity_clients,
            duration_s=cfg.warmup_s,
            drain_s=drain,
        )
        capacity: dict[str, Any] = {"measured": False, "throughput_rps": cfg.capacity_rps}
        if cfg.capacity_rps is None:
            capacity = {"measured": True}
            capacity |= await closed_point(
                lambda i: factory.make("soak-cap", i),
                send,
                concurrency=cfg.capacity_clients,
                duration_s=cfg.capacity_s,
                drain_s=drain,
            )
        cap = float(capacity["throughput_rps"] or 0.0)
        if not cap > 0:
            raise ExplorankError(f"capacity measurement got no answers ({capacity['errors']})")
        rate = cfg.soak_fraction * cap
        warmup = soak_warmup_s(cfg.soak_s) if cfg.soak_warmup_s is None else cfg.soak_warmup_s
        total = warmup + cfg.soak_s
        progress(
            f"soak: {rate:.1f} req/s ({cfg.soak_fraction:.0%} of {cap:.1f}): {warmup:g} s "
            f"warm-up, then {cfg.soak_s:g} s measured; RSS every {sample_interval_s(total):g} s"
        )
        await asyncio.sleep(0.3)
        sampler = RssSampler(read_rss, sample_interval_s(total))
        stop = asyncio.Event()
        sampling = asyncio.ensure_future(sampler.run(stop))
        caches: dict[str, Any] = {}

        async def after_warmup() -> None:
            await asyncio.sleep(warmup)
            caches["after_warmup"] = await asyncio.to_thread(_caches_now, metrics_url)
            progress(f"soak: warm-up over; caches {caches['after_warmup'] or 'not exported'}")

        snapshot = asyncio.ensure_future(after_warmup())
        try:
            run = await phased_open_loop(
                lambda i: factory.make("soak", i),
                send,
                [Phase("soak", rate, total)],
                seed=cfg.seed,
                max_in_flight=max(1024, int(rate * (cfg.timeout_s + 1) * 2)),
                drain_s=drain,
            )
        finally:
            stop.set()
            await sampling
            if not snapshot.done():
                snapshot.cancel()
        caches["end"] = await asyncio.to_thread(_caches_now, metrics_url)
    summary = soak_summary(sampler.samples, warmup)
    return {
        "capacity": capacity,
        "load_fraction": cfg.soak_fraction,
        "rate": rate,
        "soak_s": cfg.soak_s,
        "warmup_s": warmup,
        "caches": caches,
        "interval_s": sampler.interval_s,
        "deadline_s": cfg.timeout_s,
        "rss_source": f"{RSS_METRIC} at {cfg.metrics_url}" if cfg.address else "/proc VmRSS",
        "requests": phase_summary(run, 0),
        "rss": summary,
        "rss_samples": [[t, v] for t, v in sampler.samples],
    }


def run_soak(
    cfg: ServeBenchConfig,
    bundle_path: Path,
    factory: RequestFactory,
    work: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The ``soak`` section of the report (raises :class:`ExplorankError` on failure)."""
    if cfg.address:
        url = cfg.metrics_url
        if not url:
            raise ExplorankError(
                f"the soak against --address needs --metrics-url exporting {RSS_METRIC}"
            )
        return asyncio.run(
            _measure(cfg.address, lambda: rss_from_metrics(url), factory, cfg, progress, url)
        )
    server = explorank_server(
        bundle_path, work, "explorank-soak", threads=cfg.threads, extra=cfg.server_args
    )
    t0 = time.perf_counter()
    progress("soak: starting explorank ...")
    with server:
        address = server.start(cfg.startup_timeout_s)
        pid = server.pid
        progress(
            f"soak: serving on {address} (pid {pid}, started in {time.perf_counter() - t0:.1f} s)"
        )
        assert pid is not None
        return asyncio.run(
            _measure(
                address, lambda: rss_from_proc(pid), factory, cfg, progress, server.metrics_url
            )
        )
