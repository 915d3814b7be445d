"""INT8 dynamic quantization of the fused encoder, behind an accuracy gate.

Plain ``quantize_dynamic`` (per-tensor weights) loses too much on MiniLM: 0.902 min cosine to
the fp32 embeddings. Measured on all-MiniLM-L6-v2 (fused graph, 300 catalog-like texts, top-10
overlap = mean neighbour overlap, self excluded; see the export report for the command):

=====================================================  ==========  ===========  ===========
configuration                                          min cosine  mean cosine  top-10 ovl.
=====================================================  ==========  ===========  ===========
per-tensor, everything int8 (plain)                    0.9021      0.9639       0.905
per-channel                                            0.9842      0.9928       0.960
per-channel + reduce_range                             0.9792      0.9918       0.954
per-channel + MatMulConstBOnly                         0.9842      0.9928       0.960
per-channel, attention-output MatMuls fp32             0.9864      0.9930       0.958
per-channel, layers 0-1 fp32                           0.9928      0.9957       0.970
per-channel, FFN-output MatMuls fp32                   0.9929      0.9961       0.969
**per-channel, FFN-output MatMuls + embeddings fp32**  **0.9939**  **0.9964**   **0.966**
per-channel, all FFN MatMuls fp32                      0.9971      0.9982       0.980
=====================================================  ==========  ===========  ===========

Single-node sensitivity (quantize all but one node) showed no single culprit: error builds up
over the layers, and the FFN *output* projections, whose inputs are the post-GELU activations
with the widest dynamic range (worst for uint8 dynamic activation quantization), carry the most
of it. Keeping those 6 MatMuls (and the embedding table, which costs nothing in speed) in fp32
passes the gate with margin while QAttention, the QKV and FFN-input projections stay int8.

:data:`INT8_SEARCH` lists the configurations tried, in order: the MiniLM winner first (so the
default export quantizes once), then progressively more conservative ones. The first that
passes is kept; its name, settings, excluded nodes and every attempt's numbers go into the
manifest (``encoder.int8_config``). If none passes, the export fails with a
:class:`~explorank.errors.ParityError` listing each attempt's misses.

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

from explorank.errors import ParityError
from explorank.export import parity

log = logging.getLogger(__name__)

ROLES = ("embedding", "attention", "attention_out", "ffn_in", "ffn_out")
_GELU_OPS = frozenset({"BiasGelu", "FastGelu", "Gelu"})


@dataclass(frozen=True)
class Int8Config:
    """One dynamic-quantization configuration. ``keep_fp32`` lists node roles left in fp32."""

    name: str
    per_channel: bool = True
    reduce_range: bool = False
    keep_fp32: tuple[str, ...] = ()
    description: str = ""


INT8_SEARCH: tuple[Int8Config, ...] = (
    Int8Config(
        "per_channel_ffn_out_fp32",
        keep_fp32=("embedding", "ffn_out"),
        description="per-channel int8 weights; FFN output projections and embeddings fp32",
    ),
    Int8Config(
        "per_channel_ffn_fp32",
        keep_fp32=("embedding", "ffn_in", "ffn_out"),
        description="per-channel int8 weights for attention only; all FFN MatMuls fp32",
    ),
    Int8Config(
        "per_channel_qkv_only",
        keep_fp32=("embedding", "attention_out", "ffn_in", "ffn_out"),
        description="only the fused QKV attention is int8",
    ),
)


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
            weight_type=QuantType.QInt8,
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
    configs: Sequence[Int8Config] = INT8_SEARCH,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Try ``configs`` in order; keep the first whose embeddings pass ``tolerances``.

    ``reference`` holds the fp32 embeddings of the validation texts and ``embed(path)`` encodes
    the same texts with the ONNX model at ``path``. Returns ``(int8_config, parity_entry)`` for
    the manifest; raises :class:`ParityError` when no configuration passes.
    """
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
                    "weight_type": "QInt8",
                    "activations": "dynamic uint8",
                    "nodes_kept_fp32": excluded,
                    "attempts": attempts,
                }
            )
            return chosen, parity.gate("int8", metrics, tolerances)
        candidate.unlink(missing_ok=True)
    detail = "; ".join(
        f"{a['name']}: min_cosine {a['min_cosine']:.4f}, top10_overlap {a['top10_overlap']:.3f}"
        for a in attempts
    )
    raise ParityError(
        f"parity gate failed for int8: no quantization configuration reached min_cosine >= "
        f"{tolerances.get('min_cosine')} and top10_overlap >= {tolerances.get('top10_overlap')} "
        f"({detail}); export with --precision fp32 to skip int8"
    )
