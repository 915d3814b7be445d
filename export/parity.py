"""Parity checks: does an exported artefact compute what its reference computes?

Every artefact in a bundle is compared with a reference on real catalog texts before the bundle
is written, with tolerances chosen per precision:

==========  ====================================================================================
precision   gate
==========  ====================================================================================
``fp32``    max abs diff <= 1e-4 and min cosine >= 0.9999 against PyTorch (same math, different
            kernels: anything larger is a bug, not rounding)
``int8``    min cosine >= 0.99 and top-10 overlap >= 0.9 against the fp32 encoder (quantization
            error is expected; what matters is that embeddings and the rankings they induce
            survive it)
``fp16``    min cosine >= 0.995 against the fp32 encoder (TensorRT FP16)
``head``    max abs diff <= 1e-4 * max(1, max |reference|) against a numpy reference
==========  ====================================================================================

*Top-10 overlap*: every validation text is used as a query against the other validation texts;
the reference's 10 nearest neighbours and the candidate's 10 nearest neighbours are intersected;
the overlap is the mean of ``|intersection| / 10`` over queries (the minimum is reported too).
A miss raises :class:`~explorank.errors.ParityError` naming the precision, the metric, the
measured value, the tolerance and the gap; there is no warn-and-continue.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from explorank.engine.parity import (
    DEFAULT_TOLERANCES,
    UPPER_BOUND_METRICS,
    cosine_rows,
    embedding_metrics,
    misses,
    topk_overlap,
)
from explorank.errors import InvalidArgumentError, ParityError

__all__ = [
    "DEFAULT_TOLERANCES",
    "UPPER_BOUND_METRICS",
    "cosine_rows",
    "embedding_metrics",
    "gate",
    "misses",
    "resolve_tolerances",
    "score_metrics",
    "topk_overlap",
]


def resolve_tolerances(
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Defaults updated with ``overrides`` (``{"int8": {"min_cosine": 0.95}}``), validated."""
    tol = copy.deepcopy(DEFAULT_TOLERANCES)
    for precision, metrics in (overrides or {}).items():
        if precision not in tol:
            raise InvalidArgumentError(
                "parity_overrides", f"unknown precision {precision!r}; use one of {sorted(tol)}"
            )
        for metric, value in metrics.items():
            if metric not in tol[precision]:
                raise InvalidArgumentError(
                    "parity_overrides",
                    f"{precision} has no metric {metric!r}; it has {sorted(tol[precision])}",
                )
            tol[precision][metric] = float(value)
    return tol


def score_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Metrics for scalar outputs (heads): absolute and scale-relative max difference."""
    reference = np.asarray(reference, dtype=np.float64).ravel()
    candidate = np.asarray(candidate, dtype=np.float64).ravel()
    if reference.shape != candidate.shape:
        raise ParityError(
            f"shape mismatch: reference {reference.shape} vs candidate {candidate.shape}"
        )
    diff = float(np.max(np.abs(reference - candidate))) if reference.size else 0.0
    scale = max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0
    return {"n": int(reference.size), "max_abs_diff": diff, "max_rel_diff": diff / scale}


def gate(name: str, metrics: Mapping[str, Any], tolerances: Mapping[str, float]) -> dict[str, Any]:
    """Return the manifest parity entry for ``name``; raise :class:`ParityError` on a miss."""
    missed = misses(metrics, tolerances)
    entry = {**metrics, "tolerances": dict(tolerances), "passed": not missed}
    if missed:
        raise ParityError(f"parity gate failed for {name}: " + "; ".join(missed))
    return entry
