"""``explorank bench encoder``: encoder latency per (backend, batch size, sequence length).

Method (docs/benchmarks.md explains the choices):

* **Inputs** are real catalog text: every catalog text is tokenized, the special tokens
  are stripped, the pieces are joined into one token stream, and each row of a batch is
  a window of ``seq - 2`` tokens from a random offset wrapped in ``[CLS] ... [SEP]``.
  Every row is exactly ``seq`` real tokens with a full attention mask, so the FLOP count
  is the work done and no backend profits from skipping padding. ``inputs="random"``
  draws uniform token ids instead. Tokenization is never timed.
* **Interleaving**: for one shape, every round runs each backend for a block of calls
  (``settle`` untimed, then ``block`` timed), and the starting backend rotates each
  round; thermal or neighbour drift therefore hits all backends alike. The untimed
  calls let the previous backend's spinning thread pools park before timing starts
  (interleaving single calls let them steal the cores: up to 2x on small shapes).
* **Repetitions**: ``warmup`` untimed rounds, then ``repeats`` timed rounds, capped so a
  shape takes about ``shape_budget_s`` (large shapes on small machines would otherwise
  run for many minutes), never fewer than ``min_repeats``. Each row records its count.
* **Throughput** is ``batch / mean latency``; ``speedup_vs_pytorch`` is the throughput
  ratio to PyTorch eager measured in the same run (on the GPU rows: to ``pytorch-cuda``,
  PyTorch eager fp32 on the same GPU, when it ran; the row's ``speedup_base`` names it); ``gflops`` uses :mod:`.flops`;
  ``pct_of_ceiling`` compares CPU backends with the measured sgemm rate (:mod:`.ceiling`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorank.benchmarks.latency.encoder_backends import (
    BenchBackend,
    open_backends,
    resolve_model_dir,
)
from explorank.benchmarks.latency.flops import EncoderArch, encoder_flops
from explorank.benchmarks.latency.headlines import encoder_headline
from explorank.errors import InvalidArgumentError

__all__ = [
    "BACKEND_CHOICES",
    "EncoderBenchConfig",
    "make_inputs",
    "percentiles",
    "run_encoder_bench",
    "time_shape",
]

log = logging.getLogger("explorank.bench")

BACKEND_CHOICES = (
    "pytorch",
    "ort-fp32",
    "ort-int8",
    "ort-int8:*",
    "pytorch-cuda",
    "pytorch-cuda-fp16",
    "ort-cuda",
    "ort-cuda-fp16",
    "ort-cuda-fp16-nograph",
    "ort-trt",
    "tensorrt",
)
#: ``--provider``: the backends run when ``--backends`` is not given.
PROVIDER_BACKENDS = {
    "cpu": ("pytorch", "ort-fp32", "ort-int8", "ort-int8:*"),
    "cuda": (
        "pytorch-cuda",
        "pytorch-cuda-fp16",
        "ort-cuda",
        "ort-cuda-fp16",
        "ort-cuda-fp16-nograph",
        "ort-trt",
        "tensorrt",
    ),
}
#: ``ort-int8:NAME`` benchmarks the bundle's INT8 variant NAME; ``ort-int8:*`` every variant
#: (those not already requested); ``ort-int8`` the bundle's first (what older engines serve).
INT8_VARIANT_PREFIX = "ort-int8:"
EncodeFn = Callable[[np.ndarray, np.ndarray], Any]


@dataclass
class EncoderBenchConfig:
    bundle: Path | None = None
    model_dir: Path | None = None
    backends: list[str] = field(default_factory=lambda: list(BACKEND_CHOICES))
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    seq_lens: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    repeats: int = 50
    min_repeats: int = 5
    warmup: int = 3
    threads: int | None = None
    shape_budget_s: float = 30.0
    inputs: str = "catalog"
    gap_ms: float = 2.0
    #: timed calls per backend per round, after ``settle`` untimed ones (see time_shape)
    block: int = 5
    settle: int = 2
    ceiling_n: int = 2048
    ceiling_repeats: int = 5
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> EncoderBenchConfig:
        """A few shapes (including the 32 x 64 headline) and few repeats: about a minute on 2 cores."""
        base: dict[str, Any] = dict(
            batch_sizes=[1, 32],
            seq_lens=[16, 64],
            repeats=10,
            min_repeats=3,
            warmup=2,
            shape_budget_s=12.0,
            ceiling_n=1536,
            ceiling_repeats=3,
            quick=True,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def validate(self) -> None:
        unknown = [
            b
            for b in self.backends
            if b not in BACKEND_CHOICES
            and not (b.startswith(INT8_VARIANT_PREFIX) and len(b) > len(INT8_VARIANT_PREFIX))
        ]
        if unknown or not self.backends:
            raise InvalidArgumentError(
                "--backends",
                f"unknown {unknown or 'empty list'}; choose from {','.join(BACKEND_CHOICES)}",
            )
        for name, values in (("--batch-sizes", self.batch_sizes), ("--seq-lens", self.seq_lens)):
            if not values or any(v < 1 for v in values):
                raise InvalidArgumentError(name, f"need positive integers, got {values}")
        if any(s < 2 for s in self.seq_lens):
            raise InvalidArgumentError(
                "--seq-lens", "a sequence needs at least 2 tokens ([CLS] and [SEP])"
            )
        if self.repeats < 1 or self.warmup < 0 or self.min_repeats < 1:
            raise InvalidArgumentError("--repeats/--warmup", "repeats must be >= 1 and warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise InvalidArgumentError("--threads", f"must be >= 1, got {self.threads}")
        if self.inputs not in ("catalog", "random"):
            raise InvalidArgumentError(
                "--inputs", f"must be catalog or random, got {self.inputs!r}"
            )


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    """Percentiles with linear interpolation between order statistics (numpy's default)."""
    if len(samples) == 0:
        raise InvalidArgumentError("samples", "no samples to summarise")
    return [float(v) for v in np.percentile(np.asarray(samples, dtype=np.float64), list(qs))]


def _progress(msg: str) -> None:
    print(f"[bench encoder] {msg}", file=sys.stderr, flush=True)


# --- inputs ---------------------------------------------------------------------------------


def catalog_token_stream(
    tokenizer: Any, texts: Sequence[str], limit: int = 2000
) -> tuple[np.ndarray, int, int]:
    """(token stream without specials, cls id, sep id) from up to ``limit`` catalog texts."""
    encoded = tokenizer.encode_batch([t for t in texts[:limit] if t.strip()])
    if not encoded:
        raise InvalidArgumentError(
            "catalog", "the bundle's catalog has no text to build inputs from"
        )
    cls_id, sep_id = int(encoded[0][0]), int(encoded[0][-1])
    pieces = [e[1:-1] for e in encoded if len(e) > 2]
    stream = np.concatenate(pieces) if pieces else np.array([cls_id], dtype=np.int64)
    return stream.astype(np.int64), cls_id, sep_id


def make_inputs(
    stream: np.ndarray,
    cls_id: int,
    sep_id: int,
    batch: int,
    seq: int,
    rng: np.random.Generator,
    *,
    random_ids: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``(batch, seq)`` batch of exactly ``seq`` real tokens per row (full attention mask).

    Rows are windows of the catalog token stream at random offsets (wrapping around), or
    uniform ids in ``[0, random_ids)`` when ``random_ids`` is given.
    """
    body = seq - 2
    ids = np.empty((batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = cls_id, sep_id
    if body > 0:
        if random_ids is not None:
            ids[:, 1:-1] = rng.integers(0, random_ids, size=(batch, body))
        else:
            starts = rng.integers(0, len(stream), size=batch)
            idx = (starts[:, None] + np.arange(body)[None, :]) % len(stream)
            ids[:, 1:-1] = stream[idx]
    return ids, np.ones_like(ids)


# --- timing ---------------------------------------------------------------------------------


def time_shape(
    backends: Sequence[tuple[str, EncodeFn]],
    ids: np.ndarray,
    mask: np.ndarray,
    *,
    repeats: int,
    warmup: int,
    min_repeats: int = 1,
    budget_s: float | None = None,
    gap_s: float = 0.0,
    block: int = 1,
    settle: int = 0,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every backend on one input, interleaved; returns (seconds per call by backend, outputs).

    Interleaving is by blocks: each round runs every backend (the first one rotating) for
    ``settle`` untimed calls then ``block`` timed calls. The untimed calls absorb the
    previous backend's spinning thread pool (ONNX Runtime and OpenMP threads spin for a
    while after each run and would otherwise steal the cores from the next backend —
    measured here: up to 2x on small shapes). Warm-up rounds are timed too (untimed for
    the result) to size the repetitions against ``budget_s``. ``outputs`` holds each
    backend's first result (for a parity check).
    """
    block = max(1, int(block))
    settle = max(0, int(settle))
    k = len(backends)
    estimates: dict[str, float] = {name: 0.0 for name, _ in backends}
    outputs: dict[str, Any] = {}
    for _ in range(warmup):
        for name, fn in backends:
            t0 = timer()
            out = fn(ids, mask)
            estimates[name] = timer() - t0
            outputs.setdefault(name, out)
    n = repeats
    if budget_s is not None and warmup > 0:
        per_call = sum(estimates.values()) + k * gap_s
        per_timed = per_call * (block + settle) / block
        if per_timed > 0:
            n = max(min(min_repeats, repeats), min(repeats, int(budget_s / per_timed)))
    samples: dict[str, list[float]] = {name: [] for name, _ in backends}
    rounds = -(-n // block)
    for r in range(rounds):
        timed = min(block, n - r * block)
        for j in range(k):
            name, fn = backends[(r + j) % k]
            for _ in range(settle):
                fn(ids, mask)
            for _ in range(timed):
                if gap_s > 0:
                    sleep(gap_s)
                t0 = timer()
                out = fn(ids, mask)
                samples[name].append(timer() - t0)
                outputs.setdefault(name, out)
    return samples, outputs


def summarise(
    backend: BenchBackend,
    times_s: Sequence[float],
    batch: int,
    seq: int,
    flops: int,
    ceiling_gflops: float | None,
) -> dict[str, Any]:
    ms = [t * 1000.0 for t in times_s]
    p50, p95, p99 = percentiles(ms)
    mean_s = float(np.mean(times_s))
    gflops = flops / mean_s / 1e9 if mean_s > 0 else 0.0
    pct = 100.0 * gflops / ceiling_gflops if (ceiling_gflops and backend.device == "cpu") else None
    return {
        "backend": backend.name,
        "batch_size": batch,
        "seq_len": seq,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "mean_ms": mean_s * 1000.0,
        "throughput_seq_s": batch / mean_s if mean_s > 0 else 0.0,
        "device": backend.device,
        "speedup_vs_pytorch": None,
        "speedup_base": None,
        "gflops": gflops,
        "pct_of_ceiling": pct,
        "repeats": len(times_s),
        "flops": flops,
    }


def _cosine_min(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    num = (x * y).sum(axis=1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12
    return float((num / den).min())


def int8_variant_summary(bundle: Any, backends: Sequence[BenchBackend]) -> list[dict[str, Any]]:
    """Each INT8 variant of the bundle with the backend name that measured it and its gate
    figures from the manifest (catalog, held-out catalog, held-out generic texts)."""
    measured = {b.describe.get("int8_variant"): b.name for b in backends}
    out = []
    for v in bundle.int8_variants():
        entry = v.get("parity") or (bundle.manifest.get("parity") or {}).get("int8") or {}
        held = entry.get("held_out") or {}
        out.append(
            {
                "name": v["name"],
                "kind": v.get("kind", "dynamic"),
                "backend": measured.get(f"{v.get('kind', 'dynamic')}:{v['name']}"),
                "portable": v.get("portable"),
                "description": v.get("description"),
                "catalog": {k: entry.get(k) for k in ("min_cosine", "top10_overlap")},
                **{
                    name: {k: m.get(k) for k in ("min_cosine", "top10_overlap")}
                    for name, m in held.items()
                },
            }
        )
    return out


def run_encoder_bench(
    config: EncoderBenchConfig,
    *,
    progress: Callable[[str], None] = _progress,
    timer: Callable[[], float] = time.perf_counter,
    backend_opener: Callable[..., tuple[list[BenchBackend], list[dict[str, str]]]] = open_backends,
) -> dict[str, Any]:
    """Run the grid and return the report dict (see docs/benchmarks.md for its schema)."""
    from explorank.benchmarks.latency.ceiling import measure_matmul_ceiling
    from explorank.benchmarks.machine import machine_info
    from explorank.engine.bundle import load_bundle
    from explorank.engine.cpu import available_cpus
    from explorank.engine.default_bundle import ensure_default_bundle
    from explorank.engine.tokenizer import Tokenizer

    config.validate()
    t_start = time.perf_counter()
    is_default = config.bundle is None
    if is_default:
        progress(
            "no --bundle: using the default bundle (building it first if missing; that is not bench time)"
        )
    bundle_path = config.bundle or ensure_default_bundle()
    bundle = load_bundle(bundle_path)
    too_long = [s for s in config.seq_lens if s > bundle.max_seq_length]
    if too_long:
        raise InvalidArgumentError(
            "--seq-lens", f"{too_long} exceed the bundle's max_seq_length {bundle.max_seq_length}"
        )
    arch = EncoderArch.from_mapping(bundle.manifest["encoder"].get("architecture") or {})
    threads = config.threads or available_cpus()
    model_dir, model_note = resolve_model_dir(bundle, config.model_dir, is_default=is_default)

    from explorank.engine.backends.cuda_graphs import GraphPlan

    sizes = tuple(sorted(set(config.batch_sizes)))
    lengths = tuple(sorted(set(config.seq_lens)))
    backends, skipped = backend_opener(
        bundle,
        config.backends,
        model_dir=model_dir,
        model_note=model_note,
        threads=threads,
        max_batch_size=max(config.batch_sizes),
        graph_plan=GraphPlan(lengths, tuple(sizes for _ in lengths)),
    )
    for s in skipped:
        progress(f"skipping {s['backend']}: {s['reason']}")
    if not backends:
        raise InvalidArgumentError(
            "--backends", "none of the requested backends can run here (see the reasons above)"
        )
    progress(
        "backends: "
        + ", ".join(f"{b.name} ({b.describe.get('provider', b.device)})" for b in backends)
    )

    progress(f"measuring the float32 matmul ceiling (n={config.ceiling_n}, {threads} threads)")
    machine = machine_info()
    ceiling = measure_matmul_ceiling(
        threads,
        n=config.ceiling_n,
        repeats=config.ceiling_repeats,
        with_torch=any(b.name == "pytorch" for b in backends),
        with_ort=True,
    )
    torch_note = f", torch {ceiling.torch_gflops:.1f}" if ceiling.torch_gflops else ""
    if ceiling.ort_gflops:
        torch_note += f", onnxruntime {ceiling.ort_gflops:.1f}"
    progress(
        f"ceiling: {ceiling.gflops:.1f} GFLOP/s (numpy/{ceiling.blas[0].get('library') if ceiling.blas else '?'} "
        f"{ceiling.numpy_gflops:.1f}{torch_note})"
    )

    tokenizer = Tokenizer.from_bundle(bundle)
    stream, cls_id, sep_id = catalog_token_stream(tokenizer, [it.text for it in bundle.items])
    rng = np.random.default_rng(config.seed)
    rows: list[dict[str, Any]] = []
    parity: float | None = None
    shapes = [(b, s) for s in config.seq_lens for b in config.batch_sizes]
    try:
        for i, (batch, seq) in enumerate(shapes, 1):
            ids, mask = make_inputs(
                stream,
                cls_id,
                sep_id,
                batch,
                seq,
                rng,
                random_ids=tokenizer.vocab_size if config.inputs == "random" else None,
            )
            samples, outputs = time_shape(
                [(b.name, b.encode) for b in backends],
                ids,
                mask,
                repeats=config.repeats,
                warmup=config.warmup,
                min_repeats=config.min_repeats,
                budget_s=config.shape_budget_s,
                gap_s=config.gap_ms / 1000.0,
                block=config.block,
                settle=config.settle,
                timer=timer,
            )
            if parity is None and "pytorch" in outputs and "ort-fp32" in outputs:
                parity = _cosine_min(outputs["pytorch"], outputs["ort-fp32"])
            flops = encoder_flops(arch, batch, seq)
            shape_rows = [
                summarise(b, samples[b.name], batch, seq, flops, ceiling.gflops) for b in backends
            ]
            bases = {
                r["backend"]: r for r in shape_rows if r["backend"] in ("pytorch", "pytorch-cuda")
            }
            for r in shape_rows:
                base = bases.get("pytorch-cuda") if r["device"] == "gpu" else None
                base = base or bases.get("pytorch")
                if base is not None and base["throughput_seq_s"] > 0:
                    r["speedup_vs_pytorch"] = r["throughput_seq_s"] / base["throughput_seq_s"]
                    r["speedup_base"] = base["backend"]
            rows.extend(shape_rows)
            n = shape_rows[0]["repeats"]
            progress(
                f"[{i}/{len(shapes)}] batch {batch} x seq {seq} ({n} reps): "
                + " | ".join(f"{r['backend']} p50 {r['p50_ms']:.2f} ms" for r in shape_rows)
            )
    finally:
        for b in backends:
            b.close()

    if parity is not None and parity < 0.99:
        log.warning(
            "pytorch and ort-fp32 embeddings disagree (min cosine %.4f): is --model the bundle's source?",
            parity,
        )
    return {
        "kind": "encoder",
        "machine": machine,
        "ceiling_gflops": ceiling.gflops,
        "ceiling": ceiling.to_dict(),
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "bundle": str(bundle.path),
            "model_name": bundle.model_name,
            "model_dir": str(Path(model_dir).resolve()) if model_dir else None,
            "threads": threads,
            "architecture": asdict(arch),
            "flops_convention": "2 per multiply-add; matmuls only (QKV, out proj, scores, context, FFN); "
            "embeddings, norms, softmax, GELU, pooling excluded",
            "pytorch_vs_ort_fp32_min_cosine": parity,
        },
        "backends": [{"backend": b.name, **b.describe} for b in backends],
        "skipped": skipped,
        "rows": rows,
        "headline": encoder_headline(rows, bundle.manifest),
        "int8_variants": int8_variant_summary(bundle, backends),
        "elapsed_s": time.perf_counter() - t_start,
    }
