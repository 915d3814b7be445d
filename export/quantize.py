"""INT8 dynamic quantization of the fused encoder, behind an accuracy gate.

Plain ``quantize_dynamic`` (per-tensor weights) loses too much on MiniLM: 0.902 min cosine to
the fp32 embeddings. Measured on all-MiniLM-L6-v2 (fused graph, 512 default-catalog texts;
top-10 overlap = mean neighbour overlap, self excluded) on two CPUs — a 2-core AMD EPYC with
AVX-512 VNNI (first landing, 2026-11-29) and a 2-core AMD EPYC with AVX2 and FMA but no
AVX-512 (2026-12-01):

=====================================================  =================  =================
configuration (weights per channel)                    VNNI min cos/top10  AVX2 min cos/top10
=====================================================  =================  =================
everything int8                                        0.9842 / 0.960     0.9666 / 0.878
FFN-output MatMuls + embeddings fp32                   0.9939 / 0.966     0.9884 / 0.916
all FFN MatMuls + embeddings fp32                      0.9971 / 0.980     0.9896 / 0.937
7-bit weights (reduce_range), FFN-output fp32          —                  0.9896 / 0.933
7-bit weights, all FFN MatMuls fp32                    —                  0.9975 / 0.961
7-bit weights, only the fused QKV attention int8       —                  0.9979 / 0.965
uint8 weights, FFN-output fp32                         —                  0.9941 / 0.933
=====================================================  =================  =================

Why the CPUs differ: ONNX Runtime multiplies uint8 activations by int8 weights; without VNNI
the x86 kernel sums pairs of products in saturating 16-bit registers, so large activations
clip (on a tiny random BERT the min cosine falls to 0.22). 7-bit weights (``reduce_range``)
or uint8 weights cannot saturate: those models compute the same on every x86 CPU and are
called *portable* here (:attr:`Int8Config.portable`). See :mod:`explorank.engine.cpu`.

The search: :func:`search_list` gives the configurations tried, in order. On CPUs whose int8
kernels do not saturate (VNNI, ARM) the fastest full-range configuration comes first, then the
portable ones; on AVX2-only CPUs only the portable ones are tried (the full-range ones would
be gated on numbers this CPU computes differently from a VNNI CPU, and vice versa).
``int8_search="portable"`` forces the AVX2 list anywhere (export on a new CPU for a fleet of
old ones); ``EXPLORANK_CPU_FEATURES`` injects the CPU flags. The first configuration that
passes is kept; its name, settings, whether it is portable, the CPU it was gated on and every
attempt's numbers go into the manifest (``encoder.int8_config``). A bundle still moves between
machines, so the engine re-checks the INT8 encoder on the serving CPU at start-up
(:mod:`explorank.engine.int8_check`) and serves fp32 when it misses there.

Nodes are selected by *role*, found structurally in the fused graph (not by name), so the same
configurations apply to any BERT-family checkpoint exported by :mod:`explorank.export`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError, ParityError
from explorank.export import parity

log = logging.getLogger(__name__)

ROLES = ("embedding", "attention", "attention_out", "ffn_in", "ffn_out")
_GELU_OPS = frozenset({"BiasGelu", "FastGelu", "Gelu"})


SEARCH_MODES = ("auto", "all", "portable")


@dataclass(frozen=True)
class Int8Config:
    """One dynamic-quantization configuration. ``keep_fp32`` lists node roles left in fp32;
    ``weight_type`` is ``"int8"`` or ``"uint8"``."""

    name: str
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: str = "int8"
    keep_fp32: tuple[str, ...] = ()
    description: str = ""

    @property
    def portable(self) -> bool:
        """True when no x86 int8 kernel can saturate on it (7-bit or uint8 weights): it
        computes the same embeddings on VNNI and on AVX2-only CPUs."""
        return self.reduce_range or self.weight_type == "uint8"


#: Full-range int8 weights: fastest and most accurate where int8 sums do not saturate.
FULL_RANGE: tuple[Int8Config, ...] = (
    Int8Config(
        "per_channel_ffn_out_fp32",
        keep_fp32=("embedding", "ffn_out"),
        description="per-channel int8 weights; FFN output projections and embeddings fp32",
    ),
)
#: 7-bit weights: no saturation on any x86 CPU.
PORTABLE: tuple[Int8Config, ...] = (
    Int8Config(
        "portable_ffn_out_fp32",
        reduce_range=True,
        keep_fp32=("embedding", "ffn_out"),
        description="per-channel 7-bit weights; FFN output projections and embeddings fp32",
    ),
    Int8Config(
        "portable_ffn_fp32",
        reduce_range=True,
        keep_fp32=("embedding", "ffn_in", "ffn_out"),
        description="per-channel 7-bit weights for attention only; all FFN MatMuls fp32",
    ),
    Int8Config(
        "portable_qkv_only",
        reduce_range=True,
        keep_fp32=("embedding", "attention_out", "ffn_in", "ffn_out"),
        description="7-bit weights; only the fused QKV attention is int8",
    ),
)


def search_list(mode: str = "auto", kernels: str | None = None) -> tuple[Int8Config, ...]:
    """The configurations to try, in order (see the module docstring).

    ``mode``: ``"auto"`` (by this CPU's int8 kernels), ``"all"`` (full-range first, then
    portable) or ``"portable"`` (portable only). ``kernels`` overrides the detected family."""
    if mode not in SEARCH_MODES:
        raise InvalidArgumentError(
            "int8_search", f"{mode!r} is not one of {', '.join(SEARCH_MODES)}"
        )
    if mode == "auto":
        from explorank.engine.cpu import int8_kernels

        mode = "portable" if (kernels or int8_kernels()) == "avx2" else "all"
    return PORTABLE if mode == "portable" else FULL_RANGE + PORTABLE


def nodes_by_role(model_path: Path) -> dict[str, list[str]]:
    """Names of the quantizable nodes of a fused BERT graph, grouped by :data:`ROLES`."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def feeds_gelu(tensor: str, depth: int = 2) -> bool:
        for c in consumers.get(tensor, []):
            if c.op_type in _GELU_OPS:
                return True
            if depth > 0 and c.op_type == "Add" and feeds_gelu(c.output[0], depth - 1):
                return True  # unfused MatMul -> Add(bias) -> Gelu
        return False

    roles: dict[str, list[str]] = {r: [] for r in ROLES}
    for node in graph.node:
        if node.op_type in ("EmbedLayerNormalization",):
            roles["embedding"].append(node.name)
        elif node.op_type == "Attention":
            roles["attention"].append(node.name)
        elif node.op_type == "MatMul":
            src = producer.get(node.input[0])
            if src is not None and src.op_type in _GELU_OPS:
                roles["ffn_out"].append(node.name)
            elif src is not None and src.op_type in ("Attention", "MultiHeadAttention"):
                roles["attention_out"].append(node.name)
            elif feeds_gelu(node.output[0]):
                roles["ffn_in"].append(node.name)
    return roles


def quantize(src: Path, dst: Path, config: Int8Config) -> list[str]:
    """Write ``dst`` = ``src`` quantized per ``config``; return the node names kept fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    roles = nodes_by_role(src)
    excluded = sorted({name for role in config.keep_fp32 for name in roles[role]})
    # The quantizer logs one INFO line per tensor and a generic "consider pre-processing" warning
    # on the root logger; keep the export log readable (errors still surface as exceptions).
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QUInt8 if config.weight_type == "uint8" else QuantType.QInt8,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            nodes_to_exclude=excluded,
            extra_options={
                "MatMulConstBOnly": True,
                # Contrib ops (Attention, SkipLayerNormalization) defeat ONNX shape inference; their
                # outputs are float, which is what the quantizer needs to know.
                "DefaultTensorType": onnx.TensorProto.FLOAT,
            },
        )
    finally:
        logging.disable(previous)
    return excluded


def quantize_with_gate(
    src: Path,
    dst: Path,
    *,
    reference: np.ndarray,
    embed: Callable[[Path], np.ndarray],
    tolerances: Mapping[str, float],
    workdir: Path,
    configs: Sequence[Int8Config] | None = None,
    search: str = "auto",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Try ``configs`` (default: :func:`search_list` for ``search``) in order; keep the first
    whose embeddings pass ``tolerances``.

    ``reference`` holds the fp32 embeddings of the validation texts and ``embed(path)`` encodes
    the same texts with the ONNX model at ``path``. Returns ``(int8_config, parity_entry)`` for
    the manifest; raises :class:`Int8GateError` (a :class:`ParityError` carrying every attempt)
    when no configuration passes.
    """
    from explorank.engine.cpu import cpu_description

    cpu = cpu_description()
    if configs is None:
        configs = search_list(search, str(cpu["int8_kernels"]))
    attempts: list[dict[str, Any]] = []
    for config in configs:
        candidate = Path(workdir) / f"int8_{config.name}.onnx"
        t0 = time.perf_counter()
        excluded = quantize(src, candidate, config)
        metrics = parity.embedding_metrics(reference, embed(candidate))
        missed = parity.misses(metrics, tolerances)
        attempts.append(
            {
                "name": config.name,
                "portable": config.portable,
                "min_cosine": metrics["min_cosine"],
                "mean_cosine": metrics["mean_cosine"],
                "top10_overlap": metrics["top10_overlap"],
                "passed": not missed,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        log.info(
            "int8 %s: min cosine %.4f, top-10 overlap %.3f -> %s",
            config.name,
            metrics["min_cosine"],
            metrics["top10_overlap"],
            "pass" if not missed else "miss (" + "; ".join(missed) + ")",
        )
        if not missed:
            shutil.move(str(candidate), str(dst))
            chosen = {**asdict(config), "keep_fp32": list(config.keep_fp32)}
            chosen.update(
                {
                    "portable": config.portable,
                    "activations": "dynamic uint8",
                    "nodes_kept_fp32": excluded,
                    "search": search,
                    "gated_on": cpu,
                    "attempts": attempts,
                }
            )
            return chosen, parity.gate("int8", metrics, tolerances)
        candidate.unlink(missing_ok=True)
    detail = "; ".join(
        f"{a['name']}: min_cosine {a['min_cosine']:.4f}, top10_overlap {a['top10_overlap']:.3f}"
        for a in attempts
    )
    raise Int8GateError(
        f"parity gate failed for int8: no quantization configuration reached min_cosine >= "
        f"{tolerances.get('min_cosine')} and top10_overlap >= {tolerances.get('top10_overlap')} "
        f"on this CPU ({cpu['int8_kernels']} int8 kernels) ({detail}); export with "
        f"--precision fp32 to skip int8",
        attempts,
        cpu,
    )


class Int8GateError(ParityError):
    """No INT8 configuration passed the gate; ``attempts`` holds each one's numbers."""

    def __init__(self, message: str, attempts: list[dict[str, Any]], cpu: dict[str, Any]):
        super().__init__(message)
        self.attempts = attempts
        self.cpu = cpu
