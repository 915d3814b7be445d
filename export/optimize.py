"""Graph fusion with the ONNX Runtime transformer optimizer.

The exported graph spells attention out as ~20 primitive ops per layer; the optimizer rewrites
them into ORT's fused contrib ops (``Attention``, ``SkipLayerNormalization``, ``BiasGelu``,
``EmbedLayerNormalization``), which is where most of the CPU speed-up of ONNX Runtime over
PyTorch comes from. ``opt_level=1`` (basic ORT graph optimizations, then the Python fusions)
keeps the result device-neutral: the same ``encoder.onnx`` runs on the CPU and CUDA providers.

The fused ``Attention`` uses the default mask format (``MaskIndexEnd``: the attention mask is
reduced to a per-row length), which requires **right padding**; BERT's absolute position
embeddings require right padding anyway, so this costs nothing and is recorded in the manifest
(``encoder.padding = "right"``).

The fused-operator counts are returned so that the manifest (and the tests) can show that the
fusions really happened: an unrecognised pattern fails silently in the optimizer, so a count of
0 Attention on a BERT model is the only symptom of a broken export.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

from explorank.errors import ExportError

log = logging.getLogger(__name__)

#: Operators whose presence shows that a fusion applied (plus the unfused ops they replace, so a
#: partial fusion is visible too).
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
)


def op_counts(model_path: Path) -> dict[str, int]:
    """Histogram of op types in an ONNX file (all nodes of the main graph)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return dict(collections.Counter(node.op_type for node in model.graph.node))


def fused_operator_counts(model_path: Path) -> dict[str, int]:
    """Counts of the fusion-relevant ops (zeros included, so the absence of a fusion shows)."""
    counts = op_counts(model_path)
    return {op: int(counts.get(op, 0)) for op in FUSED_OPS}


def optimize_encoder(
    src: Path,
    dst: Path,
    *,
    num_heads: int,
    hidden_size: int,
    multi_head_attention: bool = False,
) -> dict[str, int]:
    """Fuse ``src`` into ``dst`` and return :func:`fused_operator_counts` of ``dst``.

    ``multi_head_attention``: fuse attention into ``MultiHeadAttention`` and keep the Q, K and
    V projections as MatMuls (the graph static INT8 quantizes, see
    :mod:`explorank.export.static_int8`) instead of one ``Attention`` op with its weights.

    Raises :class:`ExportError` when the optimizer fails or no Attention node fused (the latter
    means the export did not produce the eager attention pattern; serving it would be slow).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = multi_head_attention

    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # the optimizer logs each fusion step; we log the counts below
    try:
        optimized = optimize_model(
            str(src),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1,
            use_gpu=False,
            optimization_options=options,
        )
        optimized.save_model_to_file(str(dst), use_external_data_format=False)
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime transformer optimizer failed on {src.name}: {exc}"
        ) from exc
    finally:
        logging.disable(previous)
    counts = fused_operator_counts(dst)
    log.info("fused operators: %s", {k: v for k, v in counts.items() if v})
    if counts["Attention"] + counts["MultiHeadAttention"] == 0:
        raise ExportError(
            f"no Attention fusion applied to {src.name} (num_heads={num_heads}, "
            f"hidden_size={hidden_size}); the encoder must be exported with eager attention"
        )
    return counts
