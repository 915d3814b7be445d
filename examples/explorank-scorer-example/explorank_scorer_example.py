"""An example explorank plugin: the ``item_bias`` scorer, which learns from rewards.

It shows what a learning scorer needs (plugin API 2): a :class:`~explorank.plugins.api.Scorer`
subclass with a unique ``name``, ``stateful = True``, parameters as a pydantic ``Params`` model,
a vectorized ``score(ctx)`` that reads the candidates' ids and this scorer's own statistics,
and an ``update(reward, stats)`` that returns an additive :class:`StatsDelta` — which the
engine makes durable in the state store and replicates through Redis like a policy's.

The score is the cosine of the user and item embeddings plus a learned per-item bias: the
mean of the item's reward residuals (reward minus cosine), shrunk towards 0 with ``prior``
pseudo-observations. Statistics per item: ``[count, residual_sum]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from explorank import hookimpl
from explorank.plugins.api import (
    PluginParams,
    PolicyStats,
    RewardContext,
    ScoreContext,
    Scorer,
    StatsDelta,
)

__version__ = "0.1.0"


class ItemBiasScorer(Scorer):
    """Cosine similarity plus a per-item bias learned from reward residuals."""

    name = "item_bias"
    description = "cosine + a per-item bias learned from rewards (example plugin)"
    stateful = True

    class Params(PluginParams):
        prior: float = Field(5.0, gt=0.0, description="pseudo-observations shrinking the bias")

    def score(self, ctx: ScoreContext) -> np.ndarray:
        items = np.asarray(ctx.item_embeddings, dtype=np.float32)
        cosine = items @ np.asarray(ctx.user_embedding, dtype=np.float32)
        stats = ctx.stats.item_matrix(ctx.item_ids, 2)  # [count, residual_sum], zeros if unseen
        bias = stats[:, 1] / (stats[:, 0] + self.params.prior)
        return (cosine + bias).astype(np.float32)

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        cosine = float(np.dot(reward.user_embedding, reward.item_embedding))
        residual = float(reward.value) - cosine
        return StatsDelta(items={reward.item_id: np.array([1.0, residual])})


@hookimpl
def register_scorers(register: Callable[[type], None]) -> None:
    register(ItemBiasScorer)
