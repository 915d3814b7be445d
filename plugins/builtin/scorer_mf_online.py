"""``mf_online``: matrix factorization that starts from the text and learns from rewards.

    score(u, i) = base(u, i) + x_uᵀ w_i

- ``base`` is the ``mf`` scorer's score (the bundle's MF head, cosine without one): the
  item's factor comes from its text embedding, so a new item is ranked from its text alone
  (cold start from text);
- ``x_u = [Pᵀu, 1]`` is the user's factor (``P`` a fixed seeded Gaussian projection of the
  embedding to ``dim`` dimensions, plus a constant for a per-item bias);
- ``w_i`` is the item's learned offset: the ridge solution of the residuals of its rewards,
  ``w_i = (A_i + λI)⁻¹ b_i`` with ``A_i = Σ x_u x_uᵀ`` and ``b_i = Σ (r − base) x_u``.

The statistics are per item (``A_i`` and ``b_i``, ``D² + D`` numbers with ``D = dim + 1``)
and additive, so the state store persists them and Redis replicas merge them exactly as a
policy's. The scorer learns from every reward, whichever policy served it. Solutions are
cached per item and recomputed only when that item's statistics change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field

from explorank.plugins.api import (
    PluginParams,
    PolicyStats,
    RewardContext,
    ScoreContext,
    Scorer,
    ScorerContext,
    StatsDelta,
)
from explorank.plugins.builtin.scorers import MFScorer
from explorank.plugins.hookspecs import hookimpl

#: Solutions kept in the per-item cache before it is cleared.
_CACHE_LIMIT = 200_000


class OnlineMFScorer(Scorer):
    """Text-initialised matrix factorization with per-item factors learned from rewards."""

    name = "mf_online"
    description = "MF from text embeddings (cold start) plus per-item factors learned from rewards"
    stateful = True

    class Params(PluginParams):
        dim: int = Field(16, ge=1, le=128, description="user factor size (projected embedding)")
        ridge: float = Field(
            1.0, gt=0.0, allow_inf_nan=False, description="ridge λ on each item's offset"
        )
        projection_seed: int = Field(0, ge=0, description="seed of the fixed projection P")

    def __init__(self, context: ScorerContext, **params: Any) -> None:
        super().__init__(context, **params)
        self.base = MFScorer(context)
        d, k = int(context.embedding_dim), int(self.params.dim)
        rng = np.random.default_rng(int(self.params.projection_seed))
        self.projection = (rng.standard_normal((d, k)) / math.sqrt(k)).astype(np.float32)
        self.size = k + 1  # D
        self.ridge_eye = float(self.params.ridge) * np.eye(self.size)
        self._solved: dict[str, tuple[float, np.ndarray]] = {}

    # -------------------------------------------------------------- features
    def user_factor(self, user: np.ndarray) -> np.ndarray:
        """x_u = [Pᵀu, 1], float64 (D,)."""
        out = np.empty(self.size, dtype=np.float64)
        out[:-1] = np.asarray(user, dtype=np.float32) @ self.projection
        out[-1] = 1.0
        return out

    def _offsets(self, stats: PolicyStats, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(positions, w) of the candidates that have statistics; w is (m, D)."""
        size = self.size
        count_at = size * size - 1  # A[D-1, D-1] counts this item's rewards
        pos: list[int] = []
        solved: list[np.ndarray | None] = []
        todo: list[int] = []
        get = stats.items.get
        for j, item_id in enumerate(item_ids):
            vec = get(item_id)
            if vec is None:
                continue
            hit = self._solved.get(item_id)
            if hit is not None and hit[0] == vec[count_at]:
                solved.append(hit[1])
            else:
                solved.append(None)
                todo.append(len(pos))
            pos.append(j)
        if todo:
            vecs = np.stack([get(item_ids[pos[t]]) for t in todo])  # type: ignore[misc]
            a = vecs[:, : size * size].reshape(-1, size, size) + self.ridge_eye
            b = vecs[:, size * size :]
            w = np.linalg.solve(a, b[..., None])[..., 0]
            if len(self._solved) > _CACHE_LIMIT:
                self._solved.clear()
            for t, row in zip(todo, w, strict=True):
                item_id = item_ids[pos[t]]
                solved[t] = row
                self._solved[item_id] = (float(get(item_id)[count_at]), row)  # type: ignore[index]
        w_all = np.stack(solved) if solved else np.zeros((0, size))  # type: ignore[arg-type]
        return np.asarray(pos, dtype=np.int64), w_all

    # ------------------------------------------------------------------ API
    def score(self, ctx: ScoreContext) -> np.ndarray:
        scores = self.base.score_arrays(ctx.user_embedding, ctx.item_embeddings)
        if not ctx.stats.items:
            return scores
        pos, w = self._offsets(ctx.stats, list(ctx.item_ids))
        if pos.size:
            scores = scores.copy()
            scores[pos] += (w @ self.user_factor(ctx.user_embedding)).astype(np.float32)
        return scores

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        x = self.user_factor(reward.user_embedding)
        base = float(
            self.base.score_arrays(reward.user_embedding, np.asarray(reward.item_embedding)[None])[
                0
            ]
        )
        residual = float(reward.value) - base
        vec = np.concatenate([np.outer(x, x).ravel(), residual * x])
        return StatsDelta(items={reward.item_id: vec})


@hookimpl
def register_scorers(register: Callable[[type], None]) -> None:
    register(OnlineMFScorer)
