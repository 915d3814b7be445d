"""Metrics of one simulated policy run, accumulated step by step without per-item loops.

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
    """Accumulates one run; :meth:`summary` gives the numbers that go into report.json."""

    n_items: int
    steps: int
    pop_probs: np.ndarray
    cold: np.ndarray  # (n_items,) bool
    diversity_vectors: np.ndarray  # (n_items, r) L2-normalised ground-truth item vectors
    n_points: int = 200
    clicks: float = 0.0
    impressions: int = 0
    expected: float = 0.0
    regret: float = 0.0
    cold_clicks: float = 0.0
    cold_impressions: int = 0
    novelty_sum: float = 0.0
    ild_sum: float = 0.0
    step: int = 0
    exposure: np.ndarray = field(init=False)
    curve_steps: list[int] = field(default_factory=list)
    curve_regret: list[float] = field(default_factory=list)
    curve_reward: list[float] = field(default_factory=list)
    curve_coverage: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.exposure = np.zeros(self.n_items, dtype=np.int64)
        every = max(1, self.steps // self.n_points)
        self._checkpoints = set(range(every, self.steps + 1, every)) | {self.steps}
        self._info = -np.log2(self.pop_probs)

    def record(self, shown: np.ndarray, clicks: np.ndarray, expected: float, oracle: float) -> None:
        """One step: the shown item indices (in order), their 0/1 clicks, the expected
        clicks of this slate and of the oracle's slate."""
        k = shown.shape[0]
        n_clicks = float(clicks.sum())
        self.clicks += n_clicks
        self.impressions += k
        self.expected += expected
        self.regret += oracle - expected
        self.exposure[shown] += 1
        cold = self.cold[shown]
        if cold.any():
            self.cold_impressions += int(cold.sum())
            self.cold_clicks += float(clicks[cold].sum())
        self.novelty_sum += float(self._info[shown].sum())
        if k > 1:
            v = self.diversity_vectors[shown]
            g = v @ v.T
            self.ild_sum += 1.0 - (float(g.sum()) - float(np.trace(g))) / (k * (k - 1))
        self.step += 1
        if self.step in self._checkpoints:
            self.curve_steps.append(self.step)
            self.curve_regret.append(self.regret)
            self.curve_reward.append(self.clicks)
            self.curve_coverage.append(coverage(self.exposure))

    def summary(self) -> dict[str, Any]:
        steps = max(self.step, 1)
        imp = max(self.impressions, 1)
        return {
            "steps": self.step,
            "cumulative_reward": self.clicks,
            "ctr": self.clicks / imp,
            "expected_reward": self.expected,
            "cumulative_regret": self.regret,
            "regret_per_step": self.regret / steps,
            "coverage": coverage(self.exposure),
            "novelty": self.novelty_sum / imp,
            "intra_list_diversity": self.ild_sum / steps,
            "gini_exposure": gini(self.exposure),
            "cold_impressions": self.cold_impressions,
            "cold_ctr": (self.cold_clicks / self.cold_impressions)
            if self.cold_impressions
            else math.nan,
            "cold_impression_share": self.cold_impressions / imp,
            "curves": {
                "step": self.curve_steps,
                "cumulative_regret": self.curve_regret,
                "cumulative_reward": self.curve_reward,
                "coverage": self.curve_coverage,
            },
        }
