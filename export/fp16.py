"""The fp16 encoder for ONNX Runtime's CUDA execution provider.

``encoder.fp16.onnx`` is converted from the fused fp32 graph (``encoder.onnx``) with ONNX
Runtime's own converter (:meth:`onnxruntime.transformers.onnx_model.OnnxModel.
convert_float_to_float16`, the one its transformer optimizer uses for ``--float16``):

- ``keep_io_types=True``: the graph still takes int64 ``input_ids``/``attention_mask`` and
  returns a float32 ``embedding``, so the engine feeds and reads it exactly like the fp32
  encoder (a Cast at the output is the only change at the boundary);
- weights and activations of the encoder are fp16; the fused ``Attention``,
  ``SkipLayerNormalization`` and ``EmbedLayerNormalization`` kernels of the CUDA EP
  accumulate their softmax and layer-norm statistics in fp32 internally, which is why ORT's
  BERT recipe keeps them in fp16;
- ops that are numerically sensitive when *not* fused stay fp32 (:data:`OP_BLOCK_LIST`:
  ORT's default block list plus unfused ``LayerNormalization``/``Softmax``, which a fully
  fused BERT graph does not contain);
- the pooling head (masked mean over up to ``max_seq_length`` tokens, then the L2 norm:
  sums that fp16 would round or overflow) stays fp32: it is found structurally as the
  nodes that lead to the output without feeding any encoder node (:func:`pooling_head`).

The parity gate (min cosine >= 0.995 against the fp32 encoder, export/parity.py) is measured
where the graph runs: on the CUDA EP when ONNX Runtime has it and a GPU is present, else on
the CPU EP. The CPU EP runs this graph, but computes every op that lacks an fp16 CPU kernel
in fp32 (ORT inserts Casts around it), so a CPU figure covers the fp16 weights and the fp16
tensors between ops, not fp16 arithmetic inside the kernels; the engine therefore checks the
fp16 encoder again on the GPU that serves it (:mod:`explorank.engine.fp16_check`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorank.errors import ExportError

__all__ = [
    "ENCODER_OPS",
    "OP_BLOCK_LIST",
    "convert_encoder_fp16",
    "drop_duplicate_nodes",
    "fp16_gate",
    "gate_device",
    "pooling_head",
]

log = logging.getLogger(__name__)

#: Operators that make up the encoder proper (the pooling head is what follows them).
ENCODER_OPS = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "EmbedLayerNormalization",
        "LayerNormalization",
        "SimplifiedLayerNormalization",
        "BiasGelu",
        "FastGelu",
        "Gelu",
        "MatMul",
        "Gemm",
        "Softmax",
    }
)

#: Unfused ops kept in fp32 on top of ORT's default list (numerically sensitive in fp16:
#: variance and softmax sums). Fused forms (SkipLayerNormalization, Attention) compute those
#: sums in fp32 inside the CUDA kernels and are converted.
EXTRA_BLOCKED_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "Softmax")


def _default_block_list() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return [*DEFAULT_OP_BLOCK_LIST, *EXTRA_BLOCKED_OPS]


#: Documented for readers; :func:`convert_encoder_fp16` builds it from ORT at call time.
OP_BLOCK_LIST = "onnxruntime.transformers.float16.DEFAULT_OP_BLOCK_LIST + " + ", ".join(
    EXTRA_BLOCKED_OPS
)


def pooling_head(model: Any, encoder_ops: Iterable[str] = ENCODER_OPS) -> list[str]:
    """Names of the nodes that compute the graph outputs from the encoder's last hidden state
    and the attention mask: the ancestors of an output that feed no encoder op.

    Nodes without a name are given one (``pool_<index>``) so that ORT's converter can be told
    to keep them in fp32 (its ``node_block_list`` is by name)."""
    graph = model.graph
    encoder_ops = frozenset(encoder_ops)
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            producer[out] = i

    def ancestors(starts: Iterable[int]) -> set[int]:
        seen: set[int] = set()
        stack = list(starts)
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(producer[x] for x in graph.node[i].input if x in producer)
        return seen

    outputs = [producer[o.name] for o in graph.output if o.name in producer]
    feeding_encoder = ancestors(
        i for i, node in enumerate(graph.node) if node.op_type in encoder_ops
    )
    head = sorted(ancestors(outputs) - feeding_encoder)
    names = []
    for i in head:
        node = graph.node[i]
        if node.op_type in encoder_ops:
            continue  # an encoder op on the way to the output is the encoder's, not the head's
        if not node.name:
            node.name = f"pool_{i}"
        names.append(node.name)
    return names


def convert_encoder_fp16(
    src: Path,
    dst: Path,
    *,
    op_block_list: Sequence[str] | None = None,
    keep_pooling_fp32: bool = True,
) -> dict[str, Any]:
    """Convert the fused fp32 encoder ``src`` into ``dst`` (see the module docstring).

    Returns what the manifest records: the settings, the op counts and how many
    initializers are fp16. Raises :class:`ExportError` when the conversion fails or leaves
    the graph's inputs or outputs with other types than the fp32 graph's.
    """
    import onnx
    from onnx import TensorProto
    from onnxruntime.transformers.onnx_model import OnnxModel

    blocked_ops = list(op_block_list) if op_block_list is not None else _default_block_list()
    model = onnx.load(str(src))
    io_types = _io_types(model)
    head = pooling_head(model) if keep_pooling_fp32 else []
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the converter warns per blocked node; we report counts
    try:
        wrapped = OnnxModel(model)
        wrapped.convert_float_to_float16(
            use_symbolic_shape_infer=True,
            keep_io_types=True,
            op_block_list=blocked_ops,
            node_block_list=head,
        )
        converted = wrapped.model
    except Exception as exc:
        raise ExportError(f"fp16 conversion of {Path(src).name} failed: {exc}") from exc
    finally:
        logging.disable(previous)
    duplicates = drop_duplicate_nodes(converted)
    if _io_types(converted) != io_types:
        raise ExportError(
            f"fp16 conversion changed the encoder's input/output types {io_types} -> "
            f"{_io_types(converted)}; keep_io_types must keep them"
        )
    onnx.save(converted, str(dst))
    inits = collections.Counter(
        TensorProto.DataType.Name(t.data_type) for t in converted.graph.initializer
    )
    ops = collections.Counter(n.op_type for n in converted.graph.node)
    return {
        "path": Path(dst).name,
        "converter": "onnxruntime.transformers OnnxModel.convert_float_to_float16",
        "keep_io_types": True,
        "op_block_list": OP_BLOCK_LIST if op_block_list is None else list(blocked_ops),
        "blocked_ops_in_graph": sorted(set(blocked_ops) & set(ops)),
        "fp32_nodes": head,
        "initializers": dict(sorted(inits.items())),
        "casts": int(ops.get("Cast", 0)),
        "duplicate_nodes_dropped": duplicates,
        "onnxruntime": _ort_version(),
    }


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def drop_duplicate_nodes(model: Any) -> int:
    """Remove nodes that repeat an earlier node exactly (same name, op, inputs, outputs and
    attributes); returns how many. ONNX Runtime's converter up to 1.31 inserts one Cast per
    blocked consumer of an fp16 tensor, all with the same name and output (fixed in 1.32),
    which ONNX Runtime then refuses to load ("two nodes with same node name")."""
    seen: set[bytes] = set()
    keep = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            continue
        seen.add(key)
        keep.append(node)
    dropped = len(model.graph.node) - len(keep)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        names: set[str] = set()
        infos = []
        for vi in model.graph.value_info:
            if vi.name not in names:
                names.add(vi.name)
                infos.append(vi)
        del model.graph.value_info[:]
        model.graph.value_info.extend(infos)
    return dropped


def _io_types(model: Any) -> dict[str, int]:
    return {
        v.name: int(v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)
    }


def gate_device() -> tuple[str, str]:
    """(ONNX Runtime provider the fp16 gate runs on, a note for the manifest)."""
    import onnxruntime as ort

    from explorank.engine.backends.base import cuda_device_count

    if "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count() > 0:
        return "CUDAExecutionProvider", "measured on the GPU, with the CUDA EP's fp16 kernels"
    return "CPUExecutionProvider", (
        "measured on the CPU EP: fp16 weights and fp16 tensors between ops, but ops without "
        "an fp16 CPU kernel compute in fp32 (ONNX Runtime inserts Casts); the fp16 arithmetic "
        "of the CUDA EP is checked at load, on the GPU that serves it"
    )


def fp16_gate(
    model: Path,
    *,
    reference: np.ndarray,
    embed: Callable[[Path, str], np.ndarray],
    tolerances: Mapping[str, float],
) -> dict[str, Any]:
    """The manifest's ``parity.fp16_onnx`` entry: ``embed(model, provider)`` against the fp32
    encoder's ``reference`` embeddings; raises :class:`ParityError` on a miss."""
    from explorank.export import parity

    provider, note = gate_device()
    entry = parity.gate(
        "fp16 (encoder.fp16.onnx)",
        parity.embedding_metrics(reference, embed(model, provider)),
        tolerances,
    )
    entry.update({"reference": "fp32 onnx", "measured_on": provider, "note": note})
    return entry
