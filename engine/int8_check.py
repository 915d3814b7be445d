"""The INT8 encoder, checked on the CPU that serves it, before it serves.

A bundle's INT8 encoder passed the accuracy gate on the machine that exported it. ONNX
Runtime's int8 kernels compute differently on CPUs with and without VNNI (see
:mod:`explorank.engine.cpu`), and bundles move between machines, so at start-up the engine
encodes a fixed sample of catalog texts (the same evenly spaced sample the export gated on)
with the INT8 encoder and compares the result with the bundle's fp32 catalog embeddings,
using the export's own metrics and tolerances (min cosine >= 0.99, top-10 overlap >= 0.9 by
default).

- ``precision = "auto"``: a miss serves fp32 instead; the log, ``GetInfo`` and the
  ``explorank_int8_check_*`` metrics say so and why.
- ``precision = "int8"``: a miss fails start-up with the measured numbers (an explicit
  accuracy decision is never overridden silently).

``backend.int8_check_texts`` sets the sample size (0 skips the check and trusts the export
gate).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from explorank.engine.cpu import int8_kernels
from explorank.engine.parity import DEFAULT_TOLERANCES, embedding_metrics, misses
from explorank.engine.tokenizer import pad_batch
from explorank.errors import ConfigError

if TYPE_CHECKING:
    from explorank.engine.backends import Backend
    from explorank.engine.bundle import Bundle
    from explorank.engine.config import BackendConfig
    from explorank.engine.tokenizer import Tokenizer

__all__ = ["Int8Check", "PrecisionChoice", "check_int8", "choose_encoder", "sample_indices"]

log = logging.getLogger("explorank.engine")

BackendFactory = Callable[..., "Backend"]


def sample_indices(n: int, size: int) -> np.ndarray:
    """Evenly spaced row indices (the export's validation sample for the same ``size``)."""
    if n <= 0 or size <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(n, size)).round().astype(np.int64))


@dataclass(frozen=True)
class Int8Check:
    """The outcome of one load-time check."""

    passed: bool
    metrics: dict[str, float]
    tolerances: dict[str, float]
    texts: int
    kernels: str
    config: str
    seconds: float
    missed: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = []
        for metric, tol in self.tolerances.items():
            parts.append(f"{metric.replace('_', ' ')} {self.metrics[metric]:.4f} (gate {tol:g})")
        return (
            f"{', '.join(parts)} on {self.texts} catalog texts, {self.kernels} int8 kernels, "
            f"config {self.config}"
        )

    def as_info(self) -> dict[str, Any]:
        """Fields of the ``Int8Gate`` message of GetInfo."""
        return {
            "passed": self.passed,
            "min_cosine": float(self.metrics.get("min_cosine", 0.0)),
            "top10_overlap": float(self.metrics.get("top10_overlap", 0.0)),
            "min_cosine_required": float(self.tolerances.get("min_cosine", 0.0)),
            "top10_overlap_required": float(self.tolerances.get("top10_overlap", 0.0)),
            "texts": self.texts,
            "cpu_int8_kernels": self.kernels,
            "int8_config": self.config,
        }


@dataclass
class PrecisionChoice:
    """Which precision serves, why, and the INT8 check behind the decision (if any)."""

    requested: str
    served: str
    reason: str
    check: Int8Check | None = field(default=None)


def _tolerances(bundle: Bundle) -> dict[str, float]:
    entry = bundle.manifest.get("parity", {}).get("int8") or {}
    tol = entry.get("tolerances") if isinstance(entry, dict) else None
    return {k: float(v) for k, v in (tol or DEFAULT_TOLERANCES["int8"]).items()}


def check_int8(
    backend: Backend,
    tokenizer: Tokenizer,
    bundle: Bundle,
    *,
    texts: int = 512,
    batch_size: int | None = None,
) -> Int8Check:
    """Encode the sample with ``backend`` and compare it with the bundle's fp32 embeddings.

    Batches are length-sorted and ``batch_size`` long (default: the export's validation batch
    size from the manifest): dynamic INT8 scales activations per batch, so the check groups
    the texts exactly as the export's gate did."""
    t0 = time.perf_counter()
    if batch_size is None:
        batch_size = int(bundle.manifest.get("validation", {}).get("batch_size", 64))
    idx = sample_indices(len(bundle.items), texts)
    rows = tokenizer.encode_batch([bundle.items[i].text for i in idx.tolist()])
    out = np.empty((len(rows), bundle.embedding_dim), dtype=np.float32)
    order = np.argsort([len(r) for r in rows], kind="stable")  # similar lengths pad little
    for start in range(0, len(order), batch_size):
        sel = order[start : start + batch_size]
        ids, mask = pad_batch([rows[i] for i in sel.tolist()], pad_id=tokenizer.pad_id)
        out[sel] = backend.encode(ids, mask)
    tolerances = _tolerances(bundle)
    metrics = embedding_metrics(bundle.item_embeddings[idx], out)
    missed = misses(metrics, tolerances)
    config = (bundle.manifest["encoder"].get("int8_config") or {}).get("name", "unknown")
    return Int8Check(
        passed=not missed,
        metrics={k: float(v) for k, v in metrics.items()},
        tolerances=tolerances,
        texts=int(idx.shape[0]),
        kernels=int8_kernels(),
        config=str(config),
        seconds=round(time.perf_counter() - t0, 3),
        missed=tuple(missed),
    )


def choose_encoder(
    bundle: Bundle,
    tokenizer: Tokenizer,
    bc: BackendConfig,
    *,
    max_batch_size: int,
    create: BackendFactory | None = None,
) -> tuple[Backend, PrecisionChoice]:
    """Create the encoder backend ``bc`` asks for; check an INT8 encoder on this CPU.

    Returns the backend and the :class:`PrecisionChoice`; raises :class:`ConfigError` when
    ``precision = "int8"`` was set explicitly and the check misses."""
    if create is None:
        from explorank.engine.backends import create_backend

        create = create_backend

    def build(precision: str) -> Backend:
        return create(
            bundle,
            backend=bc.backend,
            precision=precision,
            provider=bc.provider,
            intra_op_threads=bc.intra_op_threads,
            max_batch_size=max_batch_size,
        )

    backend = build(bc.precision)
    served = backend.precision
    if served != "int8":
        why = "the bundle has no INT8 encoder" if "int8" not in bundle.precisions else ""
        reason = f"{bc.precision}: serving {served}" + (f" ({why})" if why else "")
        return backend, PrecisionChoice(bc.precision, served, reason)
    if bc.int8_check_texts == 0 or not bundle.items:
        reason = f"{bc.precision}: int8, not checked on this CPU (backend.int8_check_texts = 0)"
        if not bundle.items:
            reason = f"{bc.precision}: int8, not checked on this CPU (the catalog is empty)"
        return backend, PrecisionChoice(bc.precision, "int8", reason)
    try:
        check = check_int8(backend, tokenizer, bundle, texts=bc.int8_check_texts)
    except BaseException:
        backend.close()
        raise
    if check.passed:
        log.info("INT8 encoder passed the load-time check: %s", check.summary())
        reason = f"{bc.precision}: int8 passed the load-time check on this CPU"
        return backend, PrecisionChoice(bc.precision, "int8", reason, check)
    backend.close()
    if bc.precision == "int8":
        raise ConfigError(
            "precision=int8: the bundle's INT8 encoder misses the accuracy gate on this CPU ("
            + "; ".join(check.missed)
            + f"; {check.summary()}). Serve precision=auto or fp32, or re-export the bundle "
            "on this machine or with `explorank export --int8-search portable`"
        )
    log.warning(
        "INT8 encoder missed the load-time check on this CPU (%s; %s); serving fp32 instead",
        "; ".join(check.missed),
        check.summary(),
    )
    reason = (
        f"{bc.precision}: int8 missed the load-time check on this CPU "
        f"({'; '.join(check.missed)}); serving fp32"
    )
    return build("fp32"), PrecisionChoice(bc.precision, "fp32", reason, check)
