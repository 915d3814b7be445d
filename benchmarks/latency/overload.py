"""``bench serve --scenario overload``: offered load at a multiple of the measured capacity,
then back to a normal load: what is admitted, what is refused, how fast, and the recovery.

On one explorank server (started by the bench, or ``--address``):

1. warm up, then the *single-client* reference: 1 client, closed loop (its p99 is in the
   goal's bound);
2. the *capacity*: closed-loop saturation throughput with ``capacity_clients`` clients
   (or ``--capacity``);
3. three open-loop Poisson phases back to back, without a pause (:mod:`.phased_load`),
   ``--duration`` seconds each, every request with a ``--deadline-s`` client deadline:
   ``before`` at ``recovery_factor`` × capacity, ``overload`` at ``--overload-factor`` ×
   capacity, ``recovery`` at ``recovery_factor`` × capacity again.

Per phase: offered, admitted (answered OK: the goodput), rejected (RESOURCE_EXHAUSTED) and
DEADLINE_EXCEEDED rates, other errors, admitted p50/p99 (from the scheduled arrival),
rejection p50/p99 (round trip from the send: a rejection should come back at once) and the
client's lag (how late it sent requests: the check that the client was not the limit).

``batching.max_queue_wait_ms`` (admission by predicted queue wait) is given to the server
through a config file when ``--max-queue-wait-ms`` is set; a server whose configuration
does not know the setting refuses to start, and is then started without it and reported as
"not supported by this server". The effective value is read from ``GetInfo`` when the
server exposes it there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorank.benchmarks.latency.phased_load import (
    Phase,
    closed_point,
    phase_summary,
    phased_open_loop,
    recovered_after_s,
    timeline,
)
from explorank.benchmarks.latency.serve_load import RequestFactory
from explorank.benchmarks.latency.serve_procs import ManagedServer, explorank_server
from explorank.benchmarks.latency.soak import RssSampler, rss_from_proc
from explorank.errors import ExplorankError

if TYPE_CHECKING:
    from explorank.benchmarks.latency.serve_bench import ServeBenchConfig

__all__ = ["MQW_SETTING", "goal_statements", "mqw_from_info", "run_overload"]

MQW_SETTING = "max_queue_wait_ms"
NOT_SUPPORTED = "not supported by this server"
PHASES = ("before", "overload", "recovery")


def mqw_from_info(info: Any) -> float | None:
    """``batching.max_queue_wait_ms`` from a GetInfo answer, None when the protocol has no
    such field (a server from before admission by time)."""
    fields = info.batching.DESCRIPTOR.fields_by_name
    return float(getattr(info.batching, MQW_SETTING)) if MQW_SETTING in fields else None


def _engine_default_mqw() -> float | None:
    """The engine's default for the setting, when this installation's engine has it (a
    bench-started server runs the same installation)."""
    from explorank.engine.config import BatchingConfig

    f = BatchingConfig.model_fields.get(MQW_SETTING)
    return None if f is None or f.default is None else float(f.default)


def goal_statements(section: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals against the measured figures (plain comparisons, no verdict
    beyond "met"/"not met"): admitted p99 at overload ≤ 2 × single-client p99 +
    max_queue_wait_ms; goodput at overload ≥ 90 % of capacity (the goal assumes 1 s
    client deadlines); recovery (p99 of the recovery phase vs the single-client p99)."""
    phases = {p["phase"]: p for p in section["phases"]}
    over, rec = phases.get("overload", {}), phases.get("recovery", {})
    single = section["single_client"]["p99_ms"]
    mqw = section["max_queue_wait"]["ms"]
    bound = 2.0 * single + (mqw or 0.0) if single is not None else None
    cap = section["capacity"]["throughput_rps"]
    p99 = over.get("admitted_p99_ms")
    pct = over["goodput_rps"] / cap * 100.0 if (over and cap) else None
    rp99 = rec.get("admitted_p99_ms")
    return {
        "p99_bound_ms": bound,
        "p99_bound_formula": f"2 × single-client p99 + max_queue_wait_ms ({mqw:g})"
        if mqw is not None
        else "2 × single-client p99 (max_queue_wait_ms: "
        + section["max_queue_wait"]["source"]
        + ")",
        "overload_admitted_p99_ms": p99,
        "p99_within_bound": (p99 <= bound) if (p99 is not None and bound is not None) else None,
        "goodput_pct_of_capacity": pct,
        "goodput_at_least_90pct": pct >= 90.0 if pct is not None else None,
        "deadline_s": section["deadline_s"],
        "recovery_p99_ms": rp99,
        "recovery_p99_vs_single": rp99 / single if (rp99 is not None and single) else None,
        "recovered_after_s": section.get("recovered_after_s"),
    }


async def _measure(
    address: str,
    factory: RequestFactory,
    cfg: ServeBenchConfig,
    mqw: dict[str, Any],
    read_rss: Callable[[], int | None] | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from explorank.v1 import ranker_pb2, ranker_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        info = await stub.GetInfo(ranker_pb2.GetInfoRequest(), timeout=cfg.timeout_s)
        from_info = mqw_from_info(info)
        if from_info is not None:
            mqw = {"ms": from_info, "source": "GetInfo", "supported": True}
        drain = cfg.timeout_s + 2

        def send(req: Any) -> Any:
            return stub.Rank(req, timeout=cfg.timeout_s)

        def send_deadline(req: Any) -> Any:
            return stub.Rank(req, timeout=cfg.deadline_s)

        await closed_point(
            lambda i: factory.make("ovl-warm", i),
            send,
            concurrency=cfg.capacity_clients,
            duration_s=cfg.warmup_s,
            drain_s=drain,
        )
        single = await closed_point(
            lambda i: factory.make("ovl-single", i),
            send,
            concurrency=1,
            duration_s=cfg.single_s,
            drain_s=drain,
        )
        progress(
            f"overload: single client p50 {single['p50_ms']:.1f} p99 {single['p99_ms']:.1f} ms"
        )
        capacity: dict[str, Any] = {"measured": False, "throughput_rps": cfg.capacity_rps}
        if cfg.capacity_rps is None:
            capacity = {"measured": True}
            capacity |= await closed_point(
                lambda i: factory.make("ovl-cap", i),
                send,
                concurrency=cfg.capacity_clients,
                duration_s=cfg.capacity_s,
                drain_s=drain,
            )
        cap = float(capacity["throughput_rps"] or 0.0)
        if not cap > 0:
            raise ExplorankError(f"capacity measurement got no answers ({capacity['errors']})")
        factors = (cfg.recovery_factor, cfg.overload_factor, cfg.recovery_factor)
        phases = [Phase(n, f * cap, cfg.duration_s) for n, f in zip(PHASES, factors, strict=True)]
        progress(
            f"overload: capacity {cap:.1f} req/s; phases "
            + ", ".join(f"{p.name} {p.rate:.1f} req/s" for p in phases)
            + f" x {cfg.duration_s:g} s, client deadline {cfg.deadline_s:g} s"
        )
        await asyncio.sleep(0.3)
        sampler = RssSampler(read_rss, 1.0) if read_rss is not None else None
        stop = asyncio.Event()
        sampling = asyncio.ensure_future(sampler.run(stop)) if sampler else None
        try:
            run = await phased_open_loop(
                lambda i: factory.make("ovl", i),
                send_deadline,
                phases,
                seed=cfg.seed,
                max_in_flight=max(
                    1024, int(max(p.rate for p in phases) * (cfg.deadline_s + 1) * 2)
                ),
                drain_s=cfg.deadline_s + 2,
                prebuild=True,
            )
        finally:
            stop.set()
            if sampling is not None:
                await sampling
    bin_s = max(0.25, min(1.0, cfg.duration_s / 10.0))
    section: dict[str, Any] = {
        "server_batching": MessageToDict(info.batching, preserving_proto_field_name=True),
        "max_queue_wait": mqw,
        "deadline_s": cfg.deadline_s,
        "overload_factor": cfg.overload_factor,
        "recovery_factor": cfg.recovery_factor,
        "single_client": single,
        "capacity": capacity,
        "phases": [phase_summary(run, k) for k in range(len(phases))],
        "bin_s": bin_s,
        "timeline": timeline(run, bin_s),
        "elapsed_s": run.elapsed_s,
    }
    if sampler is not None and sampler.samples:
        values = [v for _, v in sampler.samples]
        section["rss_mb"] = {
            "start": values[0] / 2**20,
            "peak": max(values) / 2**20,
            "end": values[-1] / 2**20,
        }
    bound = 2.0 * single["p99_ms"] + (mqw["ms"] or 0.0) if single["p99_ms"] is not None else None
    section["recovered_after_s"] = (
        recovered_after_s(run, 2, bound, bin_s) if bound is not None else None
    )
    section["goals"] = goal_statements(section)
    for p in section["phases"]:
        progress(
            f"overload {p['phase']}: offered {p['offered_rps']:.1f}/s, admitted {p['goodput_rps']:.1f}/s "
            f"(p50 {_ms(p['admitted_p50_ms'])} p99 {_ms(p['admitted_p99_ms'])} ms), rejected "
            f"{p['rejected_rps']:.1f}/s (p99 {_ms(p['rejection_p99_ms'])} ms), deadline exceeded "
            f"{p['deadline_exceeded_rps']:.1f}/s, client lag p99 {_ms(p['client_lag_p99_ms'])} ms, client CPU {_ms(p['client_cpu_pct'])} %"
        )
    return section


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _start(server: ManagedServer, cfg: ServeBenchConfig, progress: Callable[[str], None]) -> str:
    t0 = time.perf_counter()
    address = server.start(cfg.startup_timeout_s)
    progress(f"overload: serving on {address} (started in {time.perf_counter() - t0:.1f} s)")
    return address


def run_overload(
    cfg: ServeBenchConfig,
    bundle_path: Path,
    factory: RequestFactory,
    work: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The ``overload`` section of the report (raises :class:`ExplorankError` on failure)."""
    if cfg.address:
        mqw: dict[str, Any] = {
            "ms": None,
            "source": "not exposed by the server's GetInfo",
            "supported": None,
        }
        return asyncio.run(_measure(cfg.address, factory, cfg, mqw, None, progress))
    name = "explorank-overload"
    extra = list(cfg.server_args)
    if cfg.max_queue_wait_ms is None:
        default = _engine_default_mqw()
        mqw = (
            {"ms": default, "source": "the server's default", "supported": True}
            if default is not None
            else {"ms": None, "source": NOT_SUPPORTED, "supported": False}
        )
    else:
        toml = work / f"{name}.toml"
        toml.write_text(f"[batching]\n{MQW_SETTING} = {float(cfg.max_queue_wait_ms)!r}\n")
        server = explorank_server(
            bundle_path, work, name, threads=cfg.threads, extra=["--config", str(toml), *extra]
        )
        progress(
            f"overload: starting explorank with batching.{MQW_SETTING} = {cfg.max_queue_wait_ms:g} ..."
        )
        try:
            with server:
                address = _start(server, cfg, progress)
                mqw = {
                    "ms": cfg.max_queue_wait_ms,
                    "source": "--max-queue-wait-ms",
                    "supported": True,
                }
                return asyncio.run(_measure(address, factory, cfg, mqw, _rss(server), progress))
        except ExplorankError as exc:
            if f"{MQW_SETTING}: unknown setting" not in str(exc) or server.port:
                raise
            progress(f"overload: the server refused batching.{MQW_SETTING}: {NOT_SUPPORTED}")
            mqw = {
                "ms": None,
                "source": NOT_SUPPORTED,
                "supported": False,
                "requested_ms": cfg.max_queue_wait_ms,
            }
            name = "explorank-overload-baseline"
    server = explorank_server(bundle_path, work, name, threads=cfg.threads, extra=extra)
    progress("overload: starting explorank ...")
    with server:
        address = _start(server, cfg, progress)
        return asyncio.run(_measure(address, factory, cfg, mqw, _rss(server), progress))


def _rss(server: ManagedServer) -> Callable[[], int | None] | None:
    pid = server.pid
    return (lambda: rss_from_proc(pid)) if pid is not None else None
