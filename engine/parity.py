"""How close are two sets of embeddings? The metrics every accuracy gate uses.

Used by the export's parity gates (:mod:`explorank.export.parity`) and by the engine's
load-time INT8 check on the serving CPU, so both measure exactly the same thing. numpy only.

*Top-10 overlap*: every text is used as a query against the other texts; the reference's
10 nearest neighbours and the candidate's 10 nearest neighbours are intersected; the overlap
is the mean of ``|intersection| / 10`` over queries (the minimum is reported too).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from explorank.errors import ParityError

#: metric -> (tolerance, "max" if the metric must be <= tolerance else "min")
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-4, "min_cosine": 0.9999},
    "int8": {"min_cosine": 0.99, "top10_overlap": 0.9},
    "fp16": {"min_cosine": 0.995},
    "head": {"max_rel_diff": 1e-4},
}

#: Metrics that must stay *below* their tolerance; every other metric must stay above.
UPPER_BOUND_METRICS = frozenset({"max_abs_diff", "max_rel_diff"})


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_rows(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays (float64)."""
    if reference.shape != candidate.shape:
        raise ParityError(
            f"shape mismatch: reference {reference.shape} vs candidate {candidate.shape}"
        )
    return np.sum(_unit(reference) * _unit(candidate), axis=-1)


def topk_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Mean and min top-``k`` neighbour overlap of the rankings two embedding sets induce.

    Each row is a query against all *other* rows (self-matches excluded: they would rank first in
    both and inflate the overlap). With fewer than ``k + 1`` rows ``k`` shrinks to ``n - 1``.
    """
    n = reference.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return 1.0, 1.0
    ref, cand = _unit(reference), _unit(candidate)
    overlaps = np.empty(n)
    # Blocks keep the n x n similarity matrices small for large validation sets.
    for start in range(0, n, 1024):
        stop = min(n, start + 1024)
        s_ref = ref[start:stop] @ ref.T
        s_cand = cand[start:stop] @ cand.T
        rows = np.arange(stop - start)
        s_ref[rows, rows + start] = -np.inf
        s_cand[rows, rows + start] = -np.inf
        top_ref = np.argpartition(-s_ref, k - 1, axis=1)[:, :k]
        top_cand = np.argpartition(-s_cand, k - 1, axis=1)[:, :k]
        for i in range(stop - start):
            overlaps[start + i] = (
                len(np.intersect1d(top_ref[i], top_cand[i], assume_unique=True)) / k
            )
    return float(overlaps.mean()), float(overlaps.min())


def embedding_metrics(
    reference: np.ndarray, candidate: np.ndarray, *, k: int = 10
) -> dict[str, float]:
    """All embedding metrics the gates use (and a few more for the manifest)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    cos = cosine_rows(reference, candidate)
    overlap_mean, overlap_min = topk_overlap(reference, candidate, k=k)
    return {
        "n": int(reference.shape[0]),
        "max_abs_diff": float(np.max(np.abs(reference - candidate))),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        f"top{k}_overlap": overlap_mean,
        f"top{k}_overlap_min": overlap_min,
    }


def misses(metrics: Mapping[str, float], tolerances: Mapping[str, float]) -> list[str]:
    """Human-readable list of the tolerances ``metrics`` misses (empty when it passes)."""
    out = []
    for metric, tol in tolerances.items():
        value = float(metrics[metric])
        if metric in UPPER_BOUND_METRICS:
            if not value <= tol:  # also catches NaN
                out.append(f"{metric} {value:.3g} > {tol:.3g} (over by {value - tol:.3g})")
        elif not value >= tol:
            out.append(f"{metric} {value:.6f} < {tol:.6f} (short by {tol - value:.6f})")
    return out
