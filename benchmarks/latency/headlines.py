"""The headline ratios of both benchmarks: what was measured, nothing else.

Each function takes report rows and returns the summary ratios, ``None`` where a needed
row was not measured (a skipped backend or target).
"""

from __future__ import annotations

from typing import Any

__all__ = ["HEADLINE_SHAPE", "encoder_headline", "serve_headline"]

#: (batch, seq) of the encoder headline.
HEADLINE_SHAPE = (32, 64)


def encoder_headline(rows: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
    """The ratios at batch 32 x seq 64 (None where not measured)."""
    b, s = HEADLINE_SHAPE
    at = {r["backend"]: r for r in rows if r["batch_size"] == b and r["seq_len"] == s}
    int8, fp32, torch_row = at.get("ort-int8"), at.get("ort-fp32"), at.get("pytorch")

    def ratio(x: dict[str, Any] | None, y: dict[str, Any] | None) -> float | None:
        return float(x["throughput_seq_s"] / y["throughput_seq_s"]) if (x and y) else None

    gate = (manifest.get("parity") or {}).get("int8")
    int8_rows = [r for name, r in at.items() if name == "ort-int8" or name.startswith("ort-int8:")]
    best = max(int8_rows, key=lambda r: r["throughput_seq_s"], default=None)
    # the GPU rows (None without a GPU): the fp16 encoder as served against PyTorch eager fp32
    # on the same GPU and against fp32 on the CUDA EP; CUDA graphs against none, at the
    # headline shape and at the smallest shape measured (where launch overhead dominates)
    fp16, nograph = at.get("ort-cuda-fp16"), at.get("ort-cuda-fp16-nograph")
    shapes = sorted({(r["batch_size"], r["seq_len"]) for r in rows})
    small = {
        r["backend"]: r for r in rows if shapes and (r["batch_size"], r["seq_len"]) == shapes[0]
    }
    return {
        "int8_best_backend": best["backend"] if best else None,
        "int8_best_vs_pytorch": ratio(best, torch_row),
        "cuda_fp16_vs_pytorch_cuda": ratio(fp16, at.get("pytorch-cuda")),
        "cuda_fp16_vs_pytorch_cuda_fp16": ratio(fp16, at.get("pytorch-cuda-fp16")),
        "cuda_fp16_vs_cuda_fp32": ratio(fp16, at.get("ort-cuda")),
        "cuda_graphs_vs_none": ratio(fp16, nograph),
        "cuda_graphs_vs_none_smallest_shape": ratio(
            small.get("ort-cuda-fp16"), small.get("ort-cuda-fp16-nograph")
        ),
        "smallest_shape": {"batch_size": shapes[0][0], "seq_len": shapes[0][1]} if shapes else None,
        "shape": {"batch_size": b, "seq_len": s},
        "int8_vs_pytorch": ratio(int8, torch_row),
        "fp32_vs_pytorch": ratio(fp32, torch_row),
        "int8_vs_fp32": ratio(int8, fp32),
        "fp32_pct_of_ceiling": fp32["pct_of_ceiling"] if fp32 else None,
        "int8_accuracy_gate_passed": gate.get("passed") if isinstance(gate, dict) else None,
    }


def serve_headline(
    rows: list[dict[str, Any]],
    concurrency: list[int],
    encoder_ms: float | None,
    encoder_seq: int | None,
) -> dict[str, Any]:
    c = 16 if 16 in concurrency else max(concurrency)
    at = {r["target"]: r for r in rows if r["mode"] == "closed" and r["concurrency"] == c}
    ex, nb, peer = at.get("explorank"), at.get("explorank-nobatch"), at.get("torch-peer")

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
        if a and b and b["throughput_rps"]:
            return float(a["throughput_rps"] / b["throughput_rps"])
        return None

    single = next(
        (
            r
            for r in rows
            if r["target"] == "explorank" and r["mode"] == "closed" and r["concurrency"] == 1
        ),
        None,
    )
    single_p50 = single["p50_ms"] if single else None
    hist1 = next(
        (
            r
            for r in rows
            if r["target"] == "explorank-history"
            and r["mode"] == "closed"
            and r["concurrency"] == 1
        ),
        None,
    )
    return {
        "history_p50_ms": hist1["p50_ms"] if hist1 else None,
        "history_vs_text_p50": (hist1["p50_ms"] / single_p50) if hist1 and single_p50 else None,
        "history_vs_text_throughput": ratio(at.get("explorank-history"), ex),
        "concurrency": c,
        "explorank_vs_peer_throughput": ratio(ex, peer),
        "explorank_p99_ms": ex["p99_ms"] if ex else None,
        "peer_p99_ms": peer["p99_ms"] if peer else None,
        "explorank_vs_triton_throughput": ratio(ex, at.get("triton-peer")),
        "triton_p99_ms": at["triton-peer"]["p99_ms"] if "triton-peer" in at else None,
        "batching_on_vs_off": ratio(ex, nb),
        "padding_efficiency": ex["padding_efficiency"] if ex else None,
        "single_client_p50_ms": single_p50,
        "encoder_batch1_p50_ms": encoder_ms,
        "encoder_seq_len": encoder_seq,
        "single_client_overhead_ms": (single_p50 - encoder_ms)
        if (single_p50 is not None and encoder_ms)
        else None,
    }
