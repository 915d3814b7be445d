"""Prometheus metrics for one engine (own registry, so several engines can share a process).

Exposed on ``server.metrics_port`` (``/metrics``). Names:

- ``explorank_requests_total{rpc, code}``                 calls by RPC and gRPC status
- ``explorank_stage_seconds{stage}``                      queue, tokenize, encode, score, policy, log, total
- ``explorank_batch_size``                                encoder batch sizes
- ``explorank_tokens_real_total`` / ``_computed_total``   padding efficiency = real / computed
- ``explorank_cache_requests_total{cache, result}``       user / item cache hits and misses
- ``explorank_cache_entries{cache}`` / ``explorank_cache_bytes{cache}`` /
  ``explorank_cache_budget_bytes{cache}``                 user / item / event caches: what
  they hold now (bytes as the budget counts them) against their budget
- ``explorank_admission_wait_factor``                    measured / predicted encoder wait
  (admission by time calibrates its predictions by it)
- ``explorank_encoder_cost_seconds{term}``               the fitted encoder cost model
  ``overhead + per_token x padded tokens`` per batch (admission and bucket merging use it)
- ``process_resident_memory_bytes`` and the other ``process_*`` metrics (Linux)
- ``explorank_queue_rejections_total`` / ``explorank_deadline_drops_total``
- ``explorank_encoder_precision{precision}``              1 for the precision being served
- ``explorank_int8_check{measure}``                       the load-time INT8 check on this CPU:
  ``passed`` (1/0), ``min_cosine``, ``top10_overlap`` (absent when not checked)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512)


def _reader(get: Callable[[], Any], field: Callable[[Any], float]) -> Callable[[], float]:
    return lambda: float(field(get()))


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "explorank_requests", "RPCs by method and status code", ["rpc", "code"], registry=r
        )
        self.stage = Histogram(
            "explorank_stage_seconds",
            "Time per Rank stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "explorank_batch_size", "Encoder batch sizes", buckets=_BATCH_BUCKETS, registry=r
        )
        self.tokens_real = Counter(
            "explorank_tokens_real", "Real (unpadded) tokens encoded", registry=r
        )
        self.tokens_computed = Counter(
            "explorank_tokens_computed", "Tokens computed incl. padding", registry=r
        )
        self.cache = Counter(
            "explorank_cache_requests", "Embedding cache look-ups", ["cache", "result"], registry=r
        )
        self.rejections = Counter(
            "explorank_queue_rejections", "Requests refused: queue full", registry=r
        )
        self.deadline_drops = Counter(
            "explorank_deadline_drops", "Requests dropped: deadline passed", registry=r
        )
        self.rewards = Counter("explorank_rewards", "Rewards by outcome", ["outcome"], registry=r)
        self.ready = Gauge("explorank_ready", "1 when serving", registry=r)
        self.precision = Gauge(
            "explorank_encoder_precision",
            "1 for the encoder precision being served",
            ["precision"],
            registry=r,
        )
        self.int8_check = Gauge(
            "explorank_int8_check",
            "Load-time INT8 check on this CPU: passed (1/0), min_cosine, top10_overlap",
            ["measure"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "explorank_cache_entries", "Entries held by a cache", ["cache"], registry=r
        )
        self.cache_bytes = Gauge(
            "explorank_cache_bytes",
            "Bytes held by a cache (as its budget counts)",
            ["cache"],
            registry=r,
        )
        self.cache_budget = Gauge(
            "explorank_cache_budget_bytes", "Byte budget of a cache", ["cache"], registry=r
        )
        self.admission_factor = Gauge(
            "explorank_admission_wait_factor",
            "Measured / predicted encoder queue wait: the admission's calibration factor",
            registry=r,
        )
        self.encoder_cost = Gauge(
            "explorank_encoder_cost_seconds",
            "Fitted encoder batch cost: overhead per batch and per padded token (NaN before "
            "the first batches)",
            ["term"],
            registry=r,
        )
        self.burst_batches = Gauge(
            "explorank_encoder_burst_batches",
            "Encoder batches run on the burst session (serve --workers: the group's work "
            "serial) since the encoder was loaded",
            registry=r,
        )
        self.lane_batches = Gauge(
            "explorank_encoder_lane_batches",
            "Encoder batches run on a lane (side by side with another batch; backend.lanes) "
            "since the encoder was loaded",
            registry=r,
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. (soaks, dashboards)

    def watch_admission(self, get: Callable[[], Any]) -> None:
        """Report the calibration factor and the fitted cost model of the admission ``get()``
        returns (None, or no batch measured yet: NaN)."""
        self.admission_factor.set_function(
            lambda: float("nan") if (a := get()) is None else float(a.calibration.factor)
        )

        def term(name: str) -> Callable[[], float]:
            def read() -> float:
                a = get()
                if a is None or a.service.per_token is None:
                    return float("nan")
                return float(getattr(a.service, name))

            return read

        self.encoder_cost.labels("overhead").set_function(term("overhead"))
        self.encoder_cost.labels("per_token").set_function(term("per_token"))

    def watch_backend(self, get: Callable[[], Any]) -> None:
        """Report the counts of the encoder backend ``get()`` returns (looked up when scraped:
        a reload's new backend is followed)."""
        self.burst_batches.set_function(lambda: float(getattr(get(), "burst_batches", 0)))
        self.lane_batches.set_function(lambda: float(getattr(get(), "lane_batches", 0)))

    def watch_caches(self, caches: Mapping[str, Callable[[], Any]]) -> None:
        """Report each cache (an :class:`~explorank.engine.cache.LRUCache`, looked up when
        scraped: a reload's new caches are followed) under its name."""
        for name, get in caches.items():
            self.cache_entries.labels(name).set_function(_reader(get, lambda c: len(c)))
            self.cache_bytes.labels(name).set_function(_reader(get, lambda c: c.bytes))
            self.cache_budget.labels(name).set_function(
                _reader(get, lambda c: float("nan") if c.max_bytes is None else c.max_bytes)
            )

    # -- bridge for the dynamic batcher (BatcherMetrics protocol) -----------------------
    def observe_batch(
        self, size: int, real_tokens: int, padded_tokens: int, compute_s: float
    ) -> None:
        self.batch_size.observe(size)
        self.tokens_real.inc(real_tokens)
        self.tokens_computed.inc(padded_tokens)
        self.stage.labels("encode").observe(compute_s)

    def observe_queue_wait(self, seconds: float) -> None:
        self.stage.labels("queue").observe(seconds)

    def observe_dropped(self, reason: str, count: int = 1) -> None:
        """Batcher callback: ``reason`` is "overflow" (queue full) or "deadline"."""
        if reason == "overflow":
            self.rejections.inc(count)
        elif reason == "deadline":
            self.deadline_drops.inc(count)

    def observe_precision(self, served: str, check: Any = None) -> None:
        """The served precision and, when there was one, the load-time INT8 check
        (an :class:`explorank.engine.int8_check.Int8Check`)."""
        self.precision.labels(served).set(1)
        if check is not None:
            self.int8_check.labels("passed").set(1.0 if check.passed else 0.0)
            for name in ("min_cosine", "top10_overlap"):
                if name in check.metrics:
                    self.int8_check.labels(name).set(check.metrics[name])

    # -- summaries (GetInfo, benchmarks) ------------------------------------------------
    def serve_http(self, port: int, host: str = "127.0.0.1") -> Any:
        """Start the /metrics endpoint in a daemon thread; returns (server, thread)."""
        return start_http_server(port, addr=host, registry=self.registry)
