"""The encoder on the GPU, once it is created: the load-time fp16 check and CUDA graphs.

**Unverified on hardware in this repository's CI** (no GPU was available when this was
written): the decision logic runs in CI with stand-in backends; ``scripts/gpu-check.sh``
runs the real thing on a machine with an NVIDIA GPU.

fp16 check. A bundle's fp16 encoder passed its parity gate at export, but that gate may have
run on the CPU (which computes most fp16 ops in fp32, see :mod:`explorank.export.fp16`), and
every GPU rounds its own way. So, like the INT8 check on the CPU
(:mod:`explorank.engine.int8_check`), an fp16 backend encodes the same evenly spaced sample of
catalog texts the export gated on and is compared with the bundle's fp32 catalog embeddings,
with the fp16 tolerance (min cosine >= 0.995 by default) before it serves:

- ``precision = "auto"``: a miss serves fp32 instead; the log and ``GetInfo``'s
  ``precision_reason`` say so, with the numbers;
- ``precision = "fp16"``: a miss fails start-up (an explicit accuracy decision is never
  overridden silently).

``backend.gpu.fp16_check_texts`` sets the sample size (0 trusts the export gate).

CUDA graphs. On the CUDA execution provider the backend then gets the CUDA-graph plan for this
batcher's shapes (:func:`~explorank.engine.backends.cuda_graphs.plan_cuda_graphs`), per
``backend.gpu.cuda_graphs``; the batcher's warm-up runs every planned shape, which captures
each graph before the first request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from explorank.engine.int8_check import PrecisionChoice, sample_indices
from explorank.engine.parity import DEFAULT_TOLERANCES, embedding_metrics, misses
from explorank.engine.tokenizer import pad_batch
from explorank.errors import ConfigError

if TYPE_CHECKING:
    from explorank.engine.backends import Backend
    from explorank.engine.bundle import Bundle
    from explorank.engine.config import Config
    from explorank.engine.tokenizer import Tokenizer

__all__ = ["Fp16Check", "check_fp16", "finish_gpu_encoder", "graph_plan"]

log = logging.getLogger("explorank.engine")

CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Fp16Check:
    """The outcome of one load-time fp16 check."""

    passed: bool
    metrics: dict[str, float]
    tolerances: dict[str, float]
    texts: int
    device: str
    seconds: float
    missed: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [
            f"{metric.replace('_', ' ')} {self.metrics[metric]:.4f} (gate {tol:g})"
            for metric, tol in self.tolerances.items()
        ]
        return f"{', '.join(parts)} on {self.texts} catalog texts, on {self.device}"


def _tolerances(bundle: Bundle, backend: Backend) -> dict[str, float]:
    """The tolerances of the fp16 artefact this backend serves (the plan's gate for the
    TensorRT paths, the fp16 ONNX encoder's for the CUDA EP), else the default."""
    key = "fp16_onnx" if getattr(backend, "provider", "") == CUDA_EP else "fp16"
    entry = (bundle.manifest.get("parity") or {}).get(key) or {}
    tol = entry.get("tolerances") if isinstance(entry, dict) else None
    return {k: float(v) for k, v in (tol or DEFAULT_TOLERANCES["fp16"]).items()}


def check_fp16(
    backend: Backend,
    tokenizer: Tokenizer,
    bundle: Bundle,
    *,
    texts: int = 512,
    batch_size: int | None = None,
    device: str | None = None,
) -> Fp16Check:
    """Encode the export's validation sample with ``backend`` and compare it with the
    bundle's fp32 catalog embeddings (length-sorted batches, as the export's gate)."""
    t0 = time.perf_counter()
    if batch_size is None:
        batch_size = int((bundle.manifest.get("validation") or {}).get("batch_size", 64))
    idx = sample_indices(len(bundle.items), texts)
    rows = tokenizer.encode_batch([bundle.items[i].text for i in idx.tolist()])
    out = np.empty((len(rows), bundle.embedding_dim), dtype=np.float32)
    order = np.argsort([len(r) for r in rows], kind="stable")
    for start in range(0, len(order), batch_size):
        sel = order[start : start + batch_size]
        ids, mask = pad_batch([rows[i] for i in sel.tolist()], pad_id=tokenizer.pad_id)
        out[sel] = backend.encode(ids, mask)
    tolerances = _tolerances(bundle, backend)
    metrics = embedding_metrics(bundle.item_embeddings[idx], out)
    missed = misses(metrics, tolerances)
    return Fp16Check(
        passed=not missed,
        metrics={k: float(v) for k, v in metrics.items()},
        tolerances=tolerances,
        texts=int(idx.shape[0]),
        device=device or str(getattr(backend, "provider", "the GPU")),
        seconds=round(time.perf_counter() - t0, 3),
        missed=tuple(missed),
    )


def graph_plan(config: Config, bundle: Bundle) -> Any:
    """The CUDA-graph shapes for this configuration's batcher and this bundle."""
    from explorank.engine.backends.cuda_graphs import plan_cuda_graphs

    bc = config.batching
    return plan_cuda_graphs(
        bc.length_buckets,
        max_seq_length=bundle.max_seq_length,
        max_batch_size=bc.max_batch_size,
        max_batch_tokens=bc.max_batch_tokens,
        batch_sizes=config.backend.gpu.graph_batch_sizes,
    )


def finish_gpu_encoder(
    backend: Backend,
    choice: PrecisionChoice,
    bundle: Bundle,
    tokenizer: Tokenizer,
    config: Config,
    *,
    create: Callable[..., Backend] | None = None,
) -> tuple[Backend, PrecisionChoice]:
    """The fp16 check and CUDA graphs for a freshly created encoder (see the module
    docstring); a CPU backend is returned unchanged. Raises :class:`ConfigError` when
    ``precision = "fp16"`` misses the check or ``cuda_graphs = "on"`` cannot be honoured."""
    bc, gc = config.backend, config.backend.gpu
    reason = choice.reason
    if backend.precision == "fp16" and gc.fp16_check_texts > 0 and bundle.items:
        try:
            check = check_fp16(backend, tokenizer, bundle, texts=gc.fp16_check_texts)
        except BaseException:
            backend.close()
            raise
        if check.passed:
            log.info("fp16 encoder passed the load-time check: %s", check.summary())
            reason = (
                f"{bc.precision}: fp16 passed the load-time check on this GPU ({check.summary()})"
            )
        else:
            backend.close()
            if bc.precision == "fp16":
                raise ConfigError(
                    "precision=fp16: the bundle's fp16 encoder misses the accuracy gate on this "
                    f"GPU ({'; '.join(check.missed)}; {check.summary()}); serve precision=auto or "
                    "fp32"
                )
            log.warning(
                "fp16 encoder missed the load-time check on this GPU (%s; %s); serving fp32",
                "; ".join(check.missed),
                check.summary(),
            )
            if create is None:
                from explorank.engine.backends import create_backend

                create = create_backend
            backend = create(
                bundle,
                backend=bc.backend,
                precision="fp32",
                provider=bc.provider,
                intra_op_threads=bc.intra_op_threads,
                allow_spinning=bc.allow_spinning,
                max_batch_size=config.batching.max_batch_size,
            )
            reason = (
                f"{bc.precision}: fp16 missed the load-time check on this GPU "
                f"({'; '.join(check.missed)}); serving fp32"
            )
    elif backend.precision == "fp16":
        why = "backend.gpu.fp16_check_texts = 0" if bundle.items else "the catalog is empty"
        reason = f"{bc.precision}: fp16, not checked on this GPU ({why})"
    enable = getattr(backend, "enable_cuda_graphs", None)
    if enable is not None and getattr(backend, "provider", "") == CUDA_EP:
        status = enable(graph_plan(config, bundle), gc.cuda_graphs)
        reason = f"{reason}; CUDA graphs {status}"
    elif gc.cuda_graphs == "on":
        backend.close()
        raise ConfigError(
            "backend.gpu.cuda_graphs = on, but the encoder does not run on ONNX Runtime's CUDA "
            f"execution provider (it runs {backend!r}); set it to auto or off"
        )
    return backend, PrecisionChoice(choice.requested, backend.precision, reason, choice.check)
