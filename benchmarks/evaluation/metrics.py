"""Metrics of one simulated policy run: the slates are recorded step by step, the metrics
computed at the end, vectorized over the steps.

Reward metrics measure exploitation (what the users got); coverage, novelty, diversity and
the Gini of exposure measure what exploration does to the catalog (how much of it users
see, how far from the head of the popularity curve). Regret is measured in *expected*
clicks against the ground-truth oracle, so it does not carry the noise of the click draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def gini(exposure: np.ndarray) -> float:
    """Gini coefficient of a non-negative exposure vector: 0 = every item shown equally
    often, → 1 = all exposure on one item. 0 for an all-zero vector."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    n = x.shape[0]
    total = float(x.sum())
    if n == 0 or total == 0.0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float((2.0 * np.dot(ranks, x)) / (n * total) - (n + 1.0) / n)


def coverage(exposure: np.ndarray) -> float:
    """Fraction of the catalog shown at least once."""
    x = np.asarray(exposure)
    return float(np.count_nonzero(x) / x.shape[0]) if x.shape[0] else 0.0


def popularity_probs(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed popularity of every item (so never-seen items have a finite novelty)."""
    c = np.asarray(counts, dtype=np.float64) + 1.0
    return c / c.sum()


def novelty(shown: np.ndarray, pop_probs: np.ndarray) -> float:
    """Mean self-information ``-log2 p(item)`` of the shown items: higher = more long tail."""
    idx = np.asarray(shown, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        return 0.0
    return float(np.mean(-np.log2(pop_probs[idx])))


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise ``1 - cosine`` within one slate of (k, r) item vectors (0 for k < 2)."""
    v = np.asarray(vectors, dtype=np.float64)
    k = v.shape[0]
    if k < 2:
        return 0.0
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms == 0.0, 1.0, norms)
    g = v @ v.T
    mean_cos = (float(g.sum()) - float(np.trace(g))) / (k * (k - 1))
    return 1.0 - mean_cos


@dataclass
class RunMetrics:
    """Accumulates one run; :meth:`summary` gives the numbers that go into report.json.

    :meth:`record` only stores each step's slate; every metric is computed once, vectorized
    over the steps, by :meth:`summary`."""

    n_items: int
    steps: int
    pop_probs: np.ndarray
    cold: np.ndarray  # (n_items,) bool
    diversity_vectors: np.ndarray  # (n_items, r) L2-normalised ground-truth item vectors
    n_points: int = 200
    _shown: list[np.ndarray] = field(default_factory=list)
    _clicks: list[np.ndarray] = field(default_factory=list)
    _expected: list[float] = field(default_factory=list)
    _oracle: list[float] = field(default_factory=list)

    @property
    def step(self) -> int:
        return len(self._shown)

    def record(self, shown: np.ndarray, clicks: np.ndarray, expected: float, oracle: float) -> None:
        """One step: the shown item indices (in order), their 0/1 clicks, the expected
        clicks of this slate and of the oracle's slate."""
        self._shown.append(np.asarray(shown, dtype=np.int64))
        self._clicks.append(np.asarray(clicks, dtype=np.float64))
        self._expected.append(expected)
        self._oracle.append(oracle)

    def _checkpoints(self, n: int) -> np.ndarray:
        every = max(1, self.steps // self.n_points)
        marks = set(range(every, self.steps + 1, every)) | {self.steps}
        return np.array(sorted(m for m in marks if 1 <= m <= n), dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        n = self.step
        sizes = np.array([s.shape[0] for s in self._shown], dtype=np.int64)
        shown = np.concatenate(self._shown) if n else np.zeros(0, dtype=np.int64)
        clicks = np.concatenate(self._clicks) if n else np.zeros(0)
        expected = np.asarray(self._expected, dtype=np.float64)
        regret = np.asarray(self._oracle, dtype=np.float64) - expected
        step_of = np.repeat(np.arange(n), sizes)
        total_clicks = float(clicks.sum())
        impressions = int(shown.shape[0])
        exposure = np.bincount(shown, minlength=self.n_items)
        cold = self.cold[shown]
        cold_imp, cold_clicks = int(cold.sum()), float(clicks[cold].sum())
        novelty_sum = float((-np.log2(self.pop_probs))[shown].sum())
        ild_sum = 0.0
        if n and impressions:
            v = self.diversity_vectors[shown]
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            ok = sizes > 1
            if ok.any():
                total = np.add.reduceat(v, starts, axis=0)[ok]
                sq = np.add.reduceat(np.einsum("ij,ij->i", v, v), starts)[ok]
                k = sizes[ok].astype(np.float64)
                ild_sum = float(
                    np.sum(1.0 - (np.einsum("ij,ij->i", total, total) - sq) / (k * (k - 1)))
                )
        marks = self._checkpoints(n)
        reward_curve = np.cumsum(np.bincount(step_of, weights=clicks, minlength=n))
        first = np.full(self.n_items, np.iinfo(np.int64).max)
        np.minimum.at(first, shown, step_of)
        first_sorted = np.sort(first[first < np.iinfo(np.int64).max])
        steps = max(n, 1)
        imp = max(impressions, 1)
        return {
            "steps": n,
            "cumulative_reward": total_clicks,
            "ctr": total_clicks / imp,
            "expected_reward": float(expected.sum()),
            "cumulative_regret": float(regret.sum()),
            "regret_per_step": float(regret.sum()) / steps,
            "coverage": coverage(exposure),
            "novelty": novelty_sum / imp,
            "intra_list_diversity": ild_sum / steps,
            "gini_exposure": gini(exposure),
            "cold_impressions": cold_imp,
            "cold_ctr": (cold_clicks / cold_imp) if cold_imp else math.nan,
            "cold_impression_share": cold_imp / imp,
            "warm_ctr": (total_clicks - cold_clicks) / (impressions - cold_imp)
            if impressions > cold_imp
            else math.nan,
            "curves": {
                "step": marks.tolist(),
                "cumulative_regret": np.cumsum(regret)[marks - 1].tolist(),
                "cumulative_reward": reward_curve[marks - 1].tolist(),
                "coverage": (
                    np.searchsorted(first_sorted, marks - 1, side="right") / self.n_items
                ).tolist(),
            },
        }
