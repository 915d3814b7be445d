"""``explorank bench encoder|serve``: the latency benchmarks (docs/benchmarks.md).

Both write ``report.json``, ``report.md`` and PNG plots to ``--out`` and print the
headline ratios; ``--quick`` runs a short version (a few minutes on 2 cores, not
counting a first-time build of the default bundle).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from explorank.errors import InvalidArgumentError

_ENCODER_FLAGS = (
    "bundle",
    "model",
    "backends",
    "provider",
    "batch_sizes",
    "seq_lens",
    "repeats",
    "warmup",
    "threads",
    "shape_budget",
    "inputs",
    "out",
    "quick",
)
_SERVE_FLAGS = (
    "address",
    "bundle",
    "model",
    "metrics_url",
    "targets",
    "concurrency",
    "rate",
    "duration",
    "candidates",
    "max_requests",
    "connections",
    "triton_python",
    "timeout",
    "repeat_contexts",
    "reward_fraction",
    "threads",
    "scenario",
    "overload_factor",
    "deadline_s",
    "max_queue_wait_ms",
    "capacity",
    "soak_s",
    "soak_warmup_s",
    "greedy_texts",
    "api",
    "oip_model",
    "out",
    "quick",
)


def _list(text: str | None, flag: str, kind: type = int) -> list[Any] | None:
    if text is None:
        return None
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise InvalidArgumentError(
            flag, f"expected a comma-separated list of {kind.__name__}s, got {text!r}"
        ) from exc
    if not values:
        raise InvalidArgumentError(flag, "empty list")
    return values


def _names(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise InvalidArgumentError(flag, "empty list")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    enc = sub.add_parser(
        "encoder",
        help="encoder latency per backend x batch size x sequence length",
        description="Encoder latency per backend x batch x sequence length, with the matmul ceiling.",
    )
    enc.add_argument("--bundle", type=Path, help="bundle directory (default: the default bundle)")
    enc.add_argument(
        "--model",
        type=Path,
        help="Hugging Face model dir for the PyTorch baseline "
        "(default: the packaged MiniLM for the default bundle, else the manifest's source)",
    )
    enc.add_argument(
        "--backends",
        help="comma list from pytorch,ort-fp32,ort-int8,ort-int8:NAME,ort-int8:*,pytorch-cuda,"
        "pytorch-cuda-fp16,ort-cuda,ort-cuda-fp16,ort-cuda-fp16-nograph,ort-trt,tensorrt; "
        "ort-int8 is the bundle's first INT8 variant, ort-int8:NAME the variant NAME, "
        "ort-int8:* every variant "
        "(default: those of --provider, else all; unavailable ones are reported as skipped)",
    )
    enc.add_argument(
        "--provider",
        choices=["cpu", "cuda"],
        help="without --backends: cpu = pytorch,ort-fp32,ort-int8,ort-int8:*; cuda = the GPU backends "
        "(PyTorch eager on the GPU, the CUDA EP fp32/fp16 with and without CUDA graphs, "
        "TensorRT where installed)",
    )
    enc.add_argument("--batch-sizes", help="comma list (default 1,8,32,128; quick 1,32)")
    enc.add_argument("--seq-lens", help="comma list (default 16,32,64,128; quick 16,64)")
    enc.add_argument(
        "--repeats", type=int, help="timed repetitions per shape (default 50; quick 10)"
    )
    enc.add_argument("--warmup", type=int, help="untimed rounds per shape (default 3; quick 2)")
    enc.add_argument(
        "--threads",
        type=int,
        help="threads for every backend and the ceiling (default: CPUs available)",
    )
    enc.add_argument(
        "--shape-budget", type=float, help="seconds per shape that cap the repetitions (default 30)"
    )
    enc.add_argument(
        "--inputs",
        choices=["catalog", "random"],
        help="catalog token windows (default) or random ids",
    )
    enc.add_argument(
        "--out", type=Path, default=Path("explorank-bench/encoder"), help="report directory"
    )
    enc.add_argument(
        "--quick", action="store_true", help="few shapes, few repeats (about a minute on 2 cores)"
    )

    srv = sub.add_parser(
        "serve",
        help="end-to-end Rank latency/throughput: explorank vs batching off vs a torch peer",
        description="Load-test Rank over gRPC on loopback (closed and open loop).",
    )
    srv.add_argument(
        "--address",
        help="measure a running server at HOST:PORT (loopback only) instead of starting one",
    )
    srv.add_argument(
        "--bundle",
        type=Path,
        help="bundle to serve and draw request texts from (default: default bundle)",
    )
    srv.add_argument("--model", type=Path, help="Hugging Face model dir for the torch peer")
    srv.add_argument("--metrics-url", help="with --address: the server's /metrics URL (loopback)")
    srv.add_argument(
        "--targets",
        help="comma list from explorank,explorank-nobatch,torch-peer,explorank-history, "
        "triton-peer, explorank-1lane and explorank-wN (N worker processes, e.g. explorank-w2) "
        "(default: the first three; explorank-history: users as history ids, no encoder call; "
        "triton-peer: Triton's dynamic batcher via PyTriton, with --api oip; explorank-1lane: "
        "backend.lanes = 1)",
    )
    srv.add_argument(
        "--concurrency", help="closed-loop client counts (default 1,4,16,64; quick 1,4,16)"
    )
    srv.add_argument(
        "--rate",
        help="open-loop Poisson rates in req/s (default: 50%%,80%% of the first target's peak)",
    )
    srv.add_argument("--duration", type=float, help="seconds per load point (default 10; quick 3)")
    srv.add_argument("--candidates", type=int, help="catalog candidates per request (default 100)")
    srv.add_argument("--max-requests", type=int, help="request cap per load point (default 100000)")
    srv.add_argument("--timeout", type=float, help="per-request deadline in seconds (default 10)")
    srv.add_argument(
        "--triton-python",
        help="target triton-peer: the Python that runs it (needs nvidia-pytriton, numpy<2, "
        "onnxruntime, tokenizers; default: this one)",
    )
    srv.add_argument(
        "--connections",
        type=int,
        help="the sweep's client connections, the same number on each `serve --workers` process "
        "(asked with GetInfo; one connection reaches one worker) (default 8)",
    )
    srv.add_argument(
        "--repeat-contexts",
        action="store_true",
        help="draw contexts from a small pool (cache-friendly) instead of unique ones",
    )
    srv.add_argument(
        "--reward-fraction",
        type=float,
        help="send a Reward after this fraction of Rank calls (default 0)",
    )
    srv.add_argument("--threads", type=int, help="server encoder threads (default: CPUs available)")
    srv.add_argument(
        "--scenario",
        help="comma list from sweep (the closed/open-loop sweep over the targets), overload, "
        "soak, greedy (default: sweep; overload, soak and greedy run on the explorank target)",
    )
    srv.add_argument(
        "--greedy-texts",
        type=int,
        help="greedy: new candidate texts in each request of the greedy client (default 255 = "
        "limits.max_new_texts)",
    )
    srv.add_argument(
        "--overload-factor",
        type=float,
        help="overload: offered load as a multiple of the measured capacity (default 3)",
    )
    srv.add_argument(
        "--deadline-s",
        type=float,
        help="overload: client deadline of every request in the phases, seconds (default 1)",
    )
    srv.add_argument(
        "--max-queue-wait-ms",
        type=float,
        help="overload: start the server with batching.max_queue_wait_ms = this "
        "(reported as not supported when the server does not know the setting)",
    )
    srv.add_argument(
        "--capacity",
        type=float,
        help="overload/soak: use this capacity in req/s instead of measuring it",
    )
    srv.add_argument(
        "--soak-s",
        type=float,
        help="run the soak scenario: this many seconds at 50%% of capacity after a warm-up, "
        "sampling the server's RSS; growth is measured over them (default 600 when --scenario "
        "names soak; quick 10)",
    )
    srv.add_argument(
        "--soak-warmup-s",
        type=float,
        help="soak: warm-up before the measured part, seconds (default 300 — one user-cache "
        "TTL, after which the server's caches hold their steady size — for soaks of 5 minutes "
        "or more, else 10%% of --soak-s)",
    )
    srv.add_argument(
        "--api",
        choices=["ranker", "oip"],
        help="the sweep's API: explorank.v1.Ranker/Rank (default) or the Open Inference "
        "Protocol (KServe v2 ModelInfer), e.g. to compare with a Triton server via --address",
    )
    srv.add_argument(
        "--oip-model",
        choices=["rank", "encoder"],
        help="with --api oip: model rank (the same Rank; default) or encoder (the context "
        "text through the encoder alone)",
    )
    srv.add_argument(
        "--out", type=Path, default=Path("explorank-bench/serve"), help="report directory"
    )
    srv.add_argument(
        "--quick", action="store_true", help="short points (about 2-3 minutes on 2 cores)"
    )


def _command_line(args: argparse.Namespace, kind: str, flags: tuple[str, ...]) -> str:
    parts = ["explorank", "bench", kind]
    for name in flags:
        value = getattr(args, name, None)
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "shape_budget":
            flag = "--shape-budget"
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(parts)


def _run_encoder(args: argparse.Namespace) -> int:
    from explorank.benchmarks.latency.encoder_bench import (
        PROVIDER_BACKENDS,
        EncoderBenchConfig,
        run_encoder_bench,
    )
    from explorank.benchmarks.latency.report import write_encoder_report

    backends = _names(args.backends, "--backends")
    if backends is None and args.provider:
        backends = list(PROVIDER_BACKENDS[args.provider])
    given = dict(
        bundle=args.bundle,
        model_dir=args.model,
        backends=backends,
        batch_sizes=_list(args.batch_sizes, "--batch-sizes"),
        seq_lens=_list(args.seq_lens, "--seq-lens"),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        shape_budget_s=args.shape_budget,
        inputs=args.inputs,
    )
    if args.quick:
        config = EncoderBenchConfig.quick_defaults(**given)
    else:
        config = EncoderBenchConfig(**{k: v for k, v in given.items() if v is not None})
    report = run_encoder_bench(config)
    command = _command_line(args, "encoder", _ENCODER_FLAGS)
    paths = write_encoder_report(report, args.out, command)
    h = report["headline"]
    _say(
        f"ceiling {report['ceiling_gflops']:.1f} GFLOP/s; at batch 32 x seq 64: int8 vs pytorch "
        f"{_x(h['int8_vs_pytorch'])}, fp32 {_x(h['fp32_pct_of_ceiling'], '%')} of ceiling"
    )
    if h.get("cuda_fp16_vs_pytorch_cuda") is not None or h.get("cuda_graphs_vs_none") is not None:
        _say(
            f"GPU: cuda fp16 vs pytorch-cuda {_x(h['cuda_fp16_vs_pytorch_cuda'])}, vs cuda fp32 "
            f"{_x(h['cuda_fp16_vs_cuda_fp32'])}; CUDA graphs vs none {_x(h['cuda_graphs_vs_none'])} "
            f"({_x(h['cuda_graphs_vs_none_smallest_shape'])} at the smallest shape)"
        )
    _say("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from explorank.benchmarks.latency.report import write_serve_report
    from explorank.benchmarks.latency.serve_bench import ServeBenchConfig, run_serve_bench

    given = dict(
        address=args.address,
        bundle=args.bundle,
        model_dir=args.model,
        metrics_url=args.metrics_url,
        targets=_names(args.targets, "--targets"),
        concurrency=_list(args.concurrency, "--concurrency"),
        rates=_list(args.rate, "--rate", float),
        duration_s=args.duration,
        candidates=args.candidates,
        max_requests=args.max_requests,
        connections=args.connections,
        triton_python=args.triton_python,
        timeout_s=args.timeout,
        reward_fraction=args.reward_fraction,
        threads=args.threads,
        unique_contexts=False if args.repeat_contexts else None,
        scenarios=_scenarios(args),
        overload_factor=args.overload_factor,
        deadline_s=args.deadline_s,
        max_queue_wait_ms=args.max_queue_wait_ms,
        capacity_rps=args.capacity,
        soak_s=args.soak_s,
        soak_warmup_s=args.soak_warmup_s,
        greedy_texts=args.greedy_texts,
        api=args.api,
        oip_model=args.oip_model,
    )
    if args.quick:
        config = ServeBenchConfig.quick_defaults(**given)
    else:
        config = ServeBenchConfig(**{k: v for k, v in given.items() if v is not None})
    report = run_serve_bench(config, logs_dir=args.out / "logs")
    command = _command_line(args, "serve", _SERVE_FLAGS)
    paths = write_serve_report(report, args.out, command)
    h = report["headline"]
    if "sweep" in config.scenarios:
        _say(
            f"at concurrency {h['concurrency']}: explorank vs torch peer {_x(h['explorank_vs_peer_throughput'])}, "
            f"batching on vs off {_x(h['batching_on_vs_off'])}, padding efficiency {_x(h['padding_efficiency'], '')}"
        )
        if h.get("explorank_vs_triton_throughput") is not None:
            _say(
                f"explorank vs Triton peer {_x(h['explorank_vs_triton_throughput'])} throughput, "
                f"p99 {_x(h['explorank_p99_ms'], ' ms')} vs {_x(h['triton_p99_ms'], ' ms')}"
            )
    if report.get("overload"):
        g = report["overload"]["goals"]
        _say(
            f"overload: admitted p99 {_x(g['overload_admitted_p99_ms'], ' ms')} "
            f"(2 x single p99 + max_queue_wait: {_x(g['p99_bound_ms'], ' ms')}), goodput "
            f"{_x(g['goodput_pct_of_capacity'], '%')} of capacity, recovery p99 "
            f"{_x(g['recovery_p99_ms'], ' ms')}"
        )
    if report.get("greedy"):
        gr = report["greedy"]
        _say(
            f"greedy: small clients' p99 {_x(gr['alone']['p99_ms'], ' ms')} alone -> "
            f"{_x(gr['with_greedy']['p99_ms'], ' ms')} next to the greedy client "
            f"({_x(gr['p99_ratio'])})"
        )
    if report.get("soak"):
        r = report["soak"]["rss"]
        _say(
            f"soak: RSS {_x(r['rss_after_warmup_mb'], ' MB')} after warm-up -> "
            f"{_x(r['rss_end_mb'], ' MB')} at the end ({_x(r['growth_pct'], '%')})"
        )
    _say("wrote " + ", ".join(str(p) for p in paths))
    for f in report.get("failed", []):
        log = args.out / "logs" / (f["target"] + ".log")
        print(
            f"explorank bench serve: target {f['target']} failed: {f['reason']}"
            + (f" (log: {log})" if log.is_file() else ""),
            file=sys.stderr,
        )
    return 1 if report.get("failed") else 0


def _scenarios(args: argparse.Namespace) -> list[str] | None:
    """--scenario as a list; --soak-s alone means the soak, with --scenario it adds it."""
    names = _names(args.scenario, "--scenario")
    if args.soak_s is not None:
        names = (names or []) + ([] if names and "soak" in names else ["soak"])
    return names


def _x(v: float | None, unit: str = "x") -> str:
    return "n/a" if v is None else f"{v:.2f}{unit}"


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "bench_command", None)
    if command == "encoder":
        return _run_encoder(args)
    if command == "serve":
        return _run_serve(args)
    print(
        "explorank bench: choose a benchmark: `explorank bench encoder` or `explorank bench serve` "
        "(add --help for options)",
        file=sys.stderr,
    )
    return 2
