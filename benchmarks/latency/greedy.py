"""``bench serve --scenario greedy``: what one greedy client does to everyone else.

On one explorank server (started by the bench, or ``--address``), after a warm-up:

1. ``alone``: ``greedy_small_clients`` clients (default 4) send small Rank requests (the
   sweep's requests: catalog candidates, a unique context) in a closed loop for
   ``--duration`` seconds;
2. ``with_greedy``: the same small clients again, while one more client sends, back to
   back, the largest request the server accepts by default — ``--greedy-texts`` candidates
   given with their text (default 255 = ``limits.max_new_texts``), each text new, so every
   one of them must be encoded.

The section gives the small clients' p50/p99 and throughput in both windows, their ratio,
and what the greedy client got (answers, refusals by status, latency). Fair serving keeps
the small clients' p99 near its ``alone`` value: the large request enters the encoder
queue one batch at a time, and admission refuses what would wait too long.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorank.benchmarks.latency.phased_load import closed_point
from explorank.benchmarks.latency.serve_load import RequestFactory
from explorank.benchmarks.latency.serve_procs import explorank_server
from explorank.errors import ExplorankError

if TYPE_CHECKING:
    from explorank.benchmarks.latency.serve_bench import ServeBenchConfig

__all__ = ["greedy_request", "run_greedy"]


def greedy_request(factory: RequestFactory, texts: int, i: int) -> Any:
    """Request ``i`` of the greedy client: ``texts`` candidates with new text (not in the
    catalog, never repeated, so nothing is cached)."""
    from explorank.v1 import ranker_pb2

    rng = random.Random(f"greedy:{i}")
    user_id, context = factory.context("greedy", i)
    cands = [
        ranker_pb2.Candidate(
            item_id=f"greedy-{i}-{j}",
            text=f"{rng.choice(factory.texts)} (offer {i}-{j})",
        )
        for j in range(texts)
    ]
    return ranker_pb2.RankRequest(user_id=user_id, context_text=context, candidates=cands, top_k=10)


async def _measure(
    address: str,
    factory: RequestFactory,
    cfg: ServeBenchConfig,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    import grpc

    from explorank.v1 import ranker_pb2_grpc

    drain = cfg.timeout_s + 2
    async with (
        grpc.aio.insecure_channel(address) as small_channel,
        grpc.aio.insecure_channel(address) as greedy_channel,
    ):
        small = ranker_pb2_grpc.RankerStub(small_channel)
        greedy = ranker_pb2_grpc.RankerStub(greedy_channel)

        def send_small(req: Any) -> Any:
            return small.Rank(req, timeout=cfg.timeout_s)

        def send_greedy(req: Any) -> Any:
            return greedy.Rank(req, timeout=cfg.timeout_s)

        n = cfg.greedy_small_clients
        await closed_point(
            lambda i: factory.make("greedy-warm", i),
            send_small,
            concurrency=n,
            duration_s=cfg.warmup_s,
            drain_s=drain,
        )
        # one greedy request first: its cost, alone
        one = await closed_point(
            lambda i: greedy_request(factory, cfg.greedy_texts, 10**6 + i),
            send_greedy,
            concurrency=1,
            duration_s=0.01,
            drain_s=drain,
        )
        alone = await closed_point(
            lambda i: factory.make("greedy-alone", i),
            send_small,
            concurrency=n,
            duration_s=cfg.duration_s,
            drain_s=drain,
        )
        progress(
            f"greedy: {n} small clients alone: p50 {alone['p50_ms']:.1f} p99 "
            f"{alone['p99_ms']:.1f} ms, {alone['throughput_rps']:.1f} req/s"
        )
        with_small, with_greedy = await asyncio.gather(
            closed_point(
                lambda i: factory.make("greedy-with", i),
                send_small,
                concurrency=n,
                duration_s=cfg.duration_s,
                drain_s=drain,
            ),
            closed_point(
                lambda i: greedy_request(factory, cfg.greedy_texts, i),
                send_greedy,
                concurrency=1,
                duration_s=cfg.duration_s,
                drain_s=drain,
            ),
        )
    progress(
        f"greedy: with one client sending {cfg.greedy_texts} new texts per request: small p50 "
        f"{_ms(with_small['p50_ms'])} p99 {_ms(with_small['p99_ms'])} ms, "
        f"{with_small['throughput_rps']:.1f} req/s; greedy {with_greedy['completed']} answered "
        f"(p50 {_ms(with_greedy['p50_ms'])} ms), errors {with_greedy['errors']}"
    )

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {
        "small_clients": n,
        "greedy_texts": cfg.greedy_texts,
        "duration_s": cfg.duration_s,
        "deadline_s": cfg.timeout_s,
        "greedy_alone": one,
        "alone": alone,
        "with_greedy": with_small,
        "greedy": with_greedy,
        "p50_ratio": ratio(with_small["p50_ms"], alone["p50_ms"]),
        "p99_ratio": ratio(with_small["p99_ms"], alone["p99_ms"]),
    }


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def run_greedy(
    cfg: ServeBenchConfig,
    bundle_path: Path,
    factory: RequestFactory,
    work: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The ``greedy`` section of the report (raises :class:`ExplorankError` on failure)."""
    if cfg.greedy_texts < 1:
        raise ExplorankError(f"--greedy-texts must be >= 1, got {cfg.greedy_texts}")
    if cfg.address:
        return asyncio.run(_measure(cfg.address, factory, cfg, progress))
    server = explorank_server(
        bundle_path, work, "explorank-greedy", threads=cfg.threads, extra=list(cfg.server_args)
    )
    progress("greedy: starting explorank ...")
    with server:
        address = server.start(cfg.startup_timeout_s)
        return asyncio.run(_measure(address, factory, cfg, progress))


def greedy_markdown(sec: dict[str, Any]) -> list[str]:
    """The report's section for the scenario."""
    a, w, g = sec["alone"], sec["with_greedy"], sec["greedy"]
    rows = [
        "## One greedy client",
        "",
        f"{sec['small_clients']} clients send small Rank requests in a closed loop for "
        f"{sec['duration_s']:g} s, alone and then while one more client sends requests of "
        f"{sec['greedy_texts']} new candidate texts back to back (deadline {sec['deadline_s']:g} s).",
        "",
        "| window | small p50 ms | small p99 ms | small req/s | small errors |",
        "|---|---|---|---|---|",
        f"| alone | {_ms(a['p50_ms'])} | {_ms(a['p99_ms'])} | {a['throughput_rps']:.1f} | {a['errors'] or 0} |",
        f"| with the greedy client | {_ms(w['p50_ms'])} | {_ms(w['p99_ms'])} | {w['throughput_rps']:.1f} | {w['errors'] or 0} |",
        "",
        f"- small clients' p99 with / without: **{_ratio(sec['p99_ratio'])}**, p50: "
        f"{_ratio(sec['p50_ratio'])}",
        f"- the greedy client: {g['completed']} answered (p50 {_ms(g['p50_ms'])} ms, p99 "
        f"{_ms(g['p99_ms'])} ms), errors {g['errors'] or 'none'}; one such request alone: "
        f"{_ms(sec['greedy_alone']['p50_ms'])} ms",
        "",
    ]
    return rows


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"
