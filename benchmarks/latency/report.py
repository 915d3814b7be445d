"""Writing benchmark reports: ``report.json`` (for scripts), ``report.md`` (for people),
PNG plots (matplotlib with the non-interactive Agg backend, imported only here)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["encoder_markdown", "serve_markdown", "write_encoder_report", "write_serve_report"]


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.{digits}f}"
    return str(v)


def _pair(m: dict[str, Any] | None) -> str:
    if not m or m.get("min_cosine") is None:
        return "—"
    return f"{m['min_cosine']:.4f} / {m['top10_overlap']:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_lines(m: dict[str, Any]) -> list[str]:
    gpus = ", ".join(g["name"] for g in m.get("gpus", [])) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items())
    return [
        f"- date: {m.get('date')}",
        f"- CPU: {m.get('cpu_model')} ({m.get('cores_available')} cores available of "
        f"{m.get('cores_logical')}; flags {' '.join(m.get('cpu_flags', [])) or '—'})",
        f"- GPU: {gpus}",
        f"- libraries: {libs}",
    ]


def _write_json(report: dict[str, Any], out: Path) -> Path:
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- encoder --------------------------------------------------------------------------------


def encoder_markdown(report: dict[str, Any], command: str = "") -> str:
    h = report.get("headline", {})
    cfg = report.get("config", {})
    ceil = report.get("ceiling", {})
    blas = (ceil.get("blas") or [{}])[0]
    lines = ["# explorank bench encoder", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += _machine_lines(report.get("machine", {}))
    lines += [
        f"- model: {cfg.get('model_name')} ({cfg.get('architecture')}), threads {cfg.get('threads')}, "
        f"inputs {cfg.get('inputs')}",
        f"- matmul ceiling: **{_fmt(report.get('ceiling_gflops'), 1)} GFLOP/s** (best float32 {ceil.get('n')}² "
        f"matmul, {ceil.get('threads')} threads{'' if ceil.get('threads_enforced') else ' (not enforced)'}: "
        f"numpy with {blas.get('library')} {blas.get('version') or ''} ({blas.get('architecture') or 'kernels ?'}) "
        f"{_fmt(ceil.get('numpy_gflops'), 1)}, torch {_fmt(ceil.get('torch_gflops'), 1)}, "
        f"onnxruntime MLAS {_fmt(ceil.get('ort_gflops'), 1)})",
        "",
        f"## Headline (batch {h.get('shape', {}).get('batch_size')} × seq {h.get('shape', {}).get('seq_len')})",
        "",
        f"- ONNX Runtime INT8 vs PyTorch eager throughput: **{_fmt(h.get('int8_vs_pytorch'))}×** "
        f"(INT8 accuracy gate passed: {_fmt(h.get('int8_accuracy_gate_passed'))})",
        f"- fastest INT8 variant: {_fmt(h.get('int8_best_backend'))}, "
        f"{_fmt(h.get('int8_best_vs_pytorch'))}× PyTorch eager",
        f"- ONNX Runtime fp32 vs PyTorch eager: {_fmt(h.get('fp32_vs_pytorch'))}×; INT8 vs fp32: "
        f"{_fmt(h.get('int8_vs_fp32'))}×",
        f"- ONNX Runtime fp32 at **{_fmt(h.get('fp32_pct_of_ceiling'), 1)}%** of the matmul ceiling",
    ]
    if h.get("cuda_fp16_vs_pytorch_cuda") is not None or h.get("cuda_graphs_vs_none") is not None:
        small = h.get("smallest_shape") or {}
        lines += [
            f"- GPU: ONNX Runtime CUDA EP fp16 (CUDA graphs) vs PyTorch eager fp32 on the GPU: "
            f"**{_fmt(h.get('cuda_fp16_vs_pytorch_cuda'))}×**, vs PyTorch fp16: "
            f"{_fmt(h.get('cuda_fp16_vs_pytorch_cuda_fp16'))}×, vs CUDA EP fp32: "
            f"{_fmt(h.get('cuda_fp16_vs_cuda_fp32'))}×",
            f"- GPU: CUDA graphs vs none (fp16): {_fmt(h.get('cuda_graphs_vs_none'))}× here, "
            f"{_fmt(h.get('cuda_graphs_vs_none_smallest_shape'))}× at batch "
            f"{small.get('batch_size')} × seq {small.get('seq_len')}",
        ]
    lines += [
        "",
        "## Results",
        "",
    ]
    rows = sorted(
        report.get("rows", []), key=lambda r: (r["seq_len"], r["batch_size"], r["backend"])
    )
    lines.append(
        _table(
            [
                "backend",
                "batch",
                "seq",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "seq/s",
                "× pytorch",
                "GFLOP/s",
                "% ceiling",
                "reps",
            ],
            [
                [
                    r["backend"],
                    r["batch_size"],
                    r["seq_len"],
                    r["p50_ms"],
                    r["p95_ms"],
                    r["p99_ms"],
                    r["throughput_seq_s"],
                    r["speedup_vs_pytorch"],
                    r["gflops"],
                    r["pct_of_ceiling"],
                    r.get("repeats"),
                ]
                for r in rows
            ],
        )
    )
    variants = report.get("int8_variants") or []
    if variants:
        lines += ["", "## INT8 variants of the bundle (accuracy from its manifest)", ""]
        lines.append(
            _table(
                [
                    "variant",
                    "kind",
                    "backend",
                    "catalog min cos / top-10",
                    "held-out catalog",
                    "held-out generic",
                ],
                [
                    [
                        v["name"],
                        v["kind"],
                        v.get("backend"),
                        _pair(v.get("catalog")),
                        _pair(v.get("held_out_catalog")),
                        _pair(v.get("held_out_generic")),
                    ]
                    for v in variants
                ],
            )
        )
    if report.get("skipped"):
        lines += ["", "## Skipped backends", ""]
        lines += [f"- `{s['backend']}`: {s['reason']}" for s in report["skipped"]]
    lines += [
        "",
        "INT8 GFLOP/s count the same (float) FLOPs; integer kernels can exceed the fp32 ceiling.",
        "On the GPU rows, × pytorch is against `pytorch-cuda` (PyTorch eager fp32 on the same "
        "GPU) when it ran; % ceiling is for CPU rows only.",
        "",
    ]
    return "\n".join(lines)


def _encoder_plots(report: dict[str, Any], out: Path) -> list[Path]:
    plt = _plt()
    rows = report.get("rows", [])
    seqs = sorted({r["seq_len"] for r in rows})
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    paths = []
    for key, ylabel, fname in (
        ("p50_ms", "p50 latency (ms)", "latency_vs_batch.png"),
        ("throughput_seq_s", "throughput (sequences/s)", "throughput_vs_batch.png"),
    ):
        fig, axes = plt.subplots(
            1, max(1, len(seqs)), figsize=(4.2 * max(1, len(seqs)), 3.8), squeeze=False
        )
        for ax, seq in zip(axes[0], seqs, strict=False):
            for be in backends:
                pts = sorted(
                    (r["batch_size"], r[key])
                    for r in rows
                    if r["backend"] == be and r["seq_len"] == seq
                )
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=be)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"seq {seq}")
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"explorank bench encoder — {report.get('config', {}).get('model_name', '')}")
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_encoder_report(report: dict[str, Any], out: Path, command: str = "") -> list[Path]:
    """Write report.json, report.md and the PNGs into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "command": command}
    paths = [_write_json(report, out)]
    md = out / "report.md"
    md.write_text(encoder_markdown(report, command))
    paths.append(md)
    paths += _encoder_plots(report, out)
    return paths


# --- serve ----------------------------------------------------------------------------------


def serve_markdown(report: dict[str, Any], command: str = "") -> str:
    h = report.get("headline", {})
    load = report.get("load", {})
    lines = ["# explorank bench serve", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += _machine_lines(report.get("machine", {}))
    tl = load.get("context_tokens", {})
    lines += [
        f"- load: {load.get('candidates')} candidates per request, context = 1-4 catalog texts "
        f"(tokens p50 {_fmt(tl.get('p50'), 0)}, p90 {_fmt(tl.get('p90'), 0)}, max {_fmt(tl.get('max'), 0)}), "
        f"{'unique contexts (user cache defeated)' if load.get('unique_contexts') else 'repeated contexts (cache-friendly)'}",
        f"- duration per point {load.get('duration_s')} s, request cap {load.get('max_requests')}",
        "",
    ]
    if "sweep" not in report.get("config", {}).get("scenarios", ["sweep"]):
        return "\n".join(lines + _scenario_sections(report))
    lines += [
        "## Headline",
        "",
        f"- explorank vs torch peer throughput at concurrency {h.get('concurrency')}: "
        f"**{_fmt(h.get('explorank_vs_peer_throughput'))}×**; p99 "
        f"{_fmt(h.get('explorank_p99_ms'), 1)} ms vs {_fmt(h.get('peer_p99_ms'), 1)} ms",
        f"- batching on vs off throughput at concurrency {h.get('concurrency')}: "
        f"**{_fmt(h.get('batching_on_vs_off'))}×**",
        f"- padding efficiency (explorank, concurrency {h.get('concurrency')}): "
        f"**{_fmt(h.get('padding_efficiency'))}**",
        f"- single-client Rank p50 {_fmt(h.get('single_client_p50_ms'))} ms − encoder batch-1 p50 "
        f"{_fmt(h.get('encoder_batch1_p50_ms'))} ms at seq {h.get('encoder_seq_len')} = "
        f"**{_fmt(h.get('single_client_overhead_ms'))} ms**",
    ]
    if h.get("explorank_vs_triton_throughput") is not None:
        lines.append(
            f"- explorank vs Triton peer (dynamic batching, same INT8 encoder) throughput at "
            f"concurrency {h.get('concurrency')}: **{_fmt(h.get('explorank_vs_triton_throughput'))}×**; "
            f"p99 {_fmt(h.get('explorank_p99_ms'), 1)} ms vs {_fmt(h.get('triton_p99_ms'), 1)} ms"
        )
    if h.get("history_p50_ms") is not None:
        lines.append(
            f"- users as history ids (explorank-history, no encoder call) vs as text: "
            f"single-client p50 {_fmt(h.get('history_p50_ms'))} ms vs "
            f"{_fmt(h.get('single_client_p50_ms'))} ms (**{_fmt(h.get('history_vs_text_p50'))}×**); "
            f"throughput at concurrency {h.get('concurrency')} "
            f"**{_fmt(h.get('history_vs_text_throughput'))}×**"
        )
    lines += [
        "",
        "## Results",
        "",
    ]
    lines.append(
        _table(
            [
                "target",
                "mode",
                "load",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "req/s",
                "ok",
                "errors",
                "avg batch",
                "padding eff.",
            ],
            [
                [
                    r["target"],
                    r["mode"],
                    r.get("concurrency")
                    if r["mode"] == "closed"
                    else f"{_fmt(r.get('rate'), 1)}/s",
                    r["p50_ms"],
                    r["p90_ms"],
                    r["p99_ms"],
                    r["throughput_rps"],
                    r.get("completed"),
                    r["errors"],
                    r["avg_batch_size"],
                    r["padding_efficiency"],
                ]
                for r in report.get("rows", [])
            ],
        )
    )
    lines.append("")
    return "\n".join(lines + _scenario_sections(report))


def _scenario_sections(report: dict[str, Any]) -> list[str]:
    """The overload and soak sections, then failed and skipped targets."""
    from explorank.benchmarks.latency.report_load import overload_markdown, soak_markdown

    lines: list[str] = []
    if report.get("overload"):
        lines += overload_markdown(report["overload"])
    if report.get("soak"):
        lines += soak_markdown(report["soak"])
    if report.get("greedy"):
        from explorank.benchmarks.latency.greedy import greedy_markdown

        lines += greedy_markdown(report["greedy"])
    if report.get("failed"):
        lines += ["## Failed targets", ""]
        lines += [f"- `{s['target']}`: {s['reason']}" for s in report["failed"]] + [""]
    if report.get("skipped"):
        lines += ["## Skipped targets", ""]
        lines += [f"- `{s['target']}`: {s['reason']}" for s in report["skipped"]] + [""]
    return lines


def _serve_plots(report: dict[str, Any], out: Path) -> list[Path]:
    from explorank.benchmarks.latency.report_load import overload_plot, soak_plot

    extra = [overload_plot(report["overload"], out)] if report.get("overload") else []
    extra += [soak_plot(report["soak"], out)] if report.get("soak") else []
    if "sweep" not in report.get("config", {}).get("scenarios", ["sweep"]):
        return extra
    return _sweep_plots(report, out) + extra


def _sweep_plots(report: dict[str, Any], out: Path) -> list[Path]:
    plt = _plt()
    rows = report.get("rows", [])
    targets = list(dict.fromkeys(r["target"] for r in rows))
    paths = []
    # latency percentiles vs load: closed (x = concurrency) and open (x = offered rate)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, mode, xkey, xlabel in (
        (axes[0][0], "closed", "concurrency", "concurrent clients"),
        (axes[0][1], "open", "rate", "offered load (req/s, Poisson)"),
    ):
        for i, t in enumerate(targets):
            pts = sorted(
                (r[xkey], r["p50_ms"], r["p99_ms"])
                for r in rows
                if r["target"] == t and r["mode"] == mode and r["p50_ms"] is not None
            )
            if not pts:
                continue
            color = f"C{i}"
            ax.plot(
                [p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=f"{t} p50"
            )
            ax.plot(
                [p[0] for p in pts],
                [p[2] for p in pts],
                marker="^",
                ls="--",
                color=color,
                label=f"{t} p99",
            )
        ax.set_yscale("log")
        if mode == "closed":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{mode} loop")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "latency_vs_load.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    for t in targets:
        thr = sorted(
            (r["concurrency"], r["throughput_rps"])
            for r in rows
            if r["target"] == t and r["mode"] == "closed"
        )
        if thr:
            ax.plot([p[0] for p in thr], [p[1] for p in thr], marker="o", label=t)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("throughput (req/s)")
    ax.set_title("explorank bench serve — closed loop")
    ax.grid(True, which="both", alpha=0.3)
    if targets:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "throughput_vs_concurrency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def write_serve_report(report: dict[str, Any], out: Path, command: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "command": command}
    paths = [_write_json(report, out)]
    md = out / "report.md"
    md.write_text(serve_markdown(report, command))
    paths.append(md)
    paths += _serve_plots(report, out)
    return paths
