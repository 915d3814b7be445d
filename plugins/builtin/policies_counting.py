"""Per-item counting bandits: ``ucb1`` and ``thompson`` (Beta–Bernoulli).

Both keep, per item id, the additive statistics vector ``[count, reward_sum]`` (in
``StatsDelta.items``) plus a global ``n_total`` counter (in ``StatsDelta.arrays``), so
deltas from several replicas merge by addition. Both blend the scorer's score in as a
prior, so a new item starts where the encoder puts it and moves with its rewards.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from explorank.plugins.api import (
    PluginParams,
    Policy,
    PolicyStats,
    RankContext,
    Ranking,
    RewardContext,
    StatsDelta,
)
from explorank.plugins.builtin._sampling import (
    checked_scores,
    greedy_topk,
    sample_pool,
    slate_from_samples,
    slate_size,
)
from explorank.plugins.hookspecs import hookimpl

#: Size of each item's statistics vector: [count, reward_sum].
ITEM_STATS = 2


def item_delta(reward: RewardContext) -> StatsDelta:
    """One observation of ``reward.item_id``: count +1, reward_sum += value."""
    return StatsDelta(
        items={reward.item_id: np.array([1.0, float(reward.value)])},
        arrays={"n_total": np.array([1.0])},
    )


def _counts(ctx: RankContext) -> tuple[np.ndarray, np.ndarray, float]:
    stats = ctx.stats.item_matrix(ctx.item_ids, ITEM_STATS)
    total = ctx.stats.arrays.get("n_total")
    n_total = float(total[0]) if total is not None and total.size else float(stats[:, 0].sum())
    return np.maximum(stats[:, 0], 0.0), stats[:, 1], max(n_total, 0.0)


class UCB1Policy(Policy):
    """UCB1 with the scorer as a prior; deterministic, so every propensity is 1.

    ``mean_i = (w·m0_i + reward_sum_i) / (w + n_i)`` with the prior mean
    ``m0 = tanh(score / prior_scale)`` (rewards live in [-1, 1]) counted as ``w =
    prior_weight`` pseudo-observations; ``index_i = mean_i + c·sqrt(2 ln(1 + N) / (n_i + w))``
    with N the total number of rewards. Candidates are ordered by the index (ties by
    mean, then by candidate index); with ``prior_weight = 0`` unseen items come first,
    as in classic UCB1. ``explored[j]``: the item differs from the greedy ranking by mean.
    """

    name = "ucb1"
    description = "UCB1 on per-item reward statistics with the score as prior; propensity 1"
    stateful = True

    class Params(PluginParams):
        c: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="exploration bonus scale")
        prior_weight: float = Field(
            1.0, ge=0.0, allow_inf_nan=False, description="pseudo-observations of the prior"
        )
        prior_scale: float = Field(
            1.0, gt=0.0, allow_inf_nan=False, description="prior mean = tanh(score / prior_scale)"
        )

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.c = float(self.params.c)
        self.prior_weight = float(self.params.prior_weight)
        self.prior_scale = float(self.params.prior_scale)

    def estimates(self, ctx: RankContext) -> tuple[np.ndarray, np.ndarray]:
        """(mean, index) of every candidate."""
        scores = checked_scores(ctx)
        counts, sums, n_total = _counts(ctx)
        prior = np.tanh(scores / self.prior_scale)
        denom = counts + self.prior_weight
        seen = denom > 0
        safe = np.where(seen, denom, 1.0)
        mean = np.where(seen, (self.prior_weight * prior + sums) / safe, prior)
        bonus = self.c * np.sqrt(2.0 * np.log1p(n_total) / safe)
        index = np.where(seen, mean + bonus, np.inf if self.c > 0 else mean)
        return mean, index

    def rank(self, ctx: RankContext) -> Ranking:
        mean, index = self.estimates(ctx)
        n = mean.shape[0]
        k = slate_size(ctx, n)
        if np.isinf(index).any():
            order = np.lexsort((np.arange(n), -mean, -index))[:k].astype(np.int64)
        else:
            order = greedy_topk(index, k)
        explored = order != greedy_topk(mean, k)
        return Ranking(order=order, propensities=np.ones(k), explored=explored)

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        return item_delta(reward)


class ThompsonPolicy(Policy):
    """Beta–Bernoulli Thompson sampling with the scorer as prior, for whole slates.

    A reward r in [-1, 1] counts as (r+1)/2 of a success. Prior: ``p0 =
    sigmoid(score / prior_temperature)``, ``alpha0 = prior_strength·p0 + 0.5``,
    ``beta0 = prior_strength·(1-p0) + 0.5``.

    Exact propensities: ``samples`` posterior draws are taken for all candidates at
    once (for the ``pool_size`` most optimistic ones when there are more); at each
    position every draw votes for its best remaining candidate, and the item is drawn
    from ``(1-gamma)·votes/M + gamma/remaining`` — the logged propensity is exactly the
    probability of that step (see ``_sampling.slate_from_samples``).
    """

    name = "thompson"
    description = "Beta-Bernoulli Thompson sampling per item with the score as prior"
    stateful = True

    class Params(PluginParams):
        prior_strength: float = Field(
            4.0, gt=0.0, allow_inf_nan=False, description="pseudo-observations of the prior"
        )
        prior_temperature: float = Field(
            0.25, gt=0.0, allow_inf_nan=False, description="p0 = sigmoid(score / temperature)"
        )
        samples: int = Field(64, ge=1, le=100_000, description="posterior draws per Rank")
        gamma: float = Field(0.01, ge=0.0, le=1.0, description="uniform mixing per position")
        pool_size: int = Field(512, ge=1, description="most optimistic candidates sampled")

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        p = self.params
        self.prior_strength = float(p.prior_strength)
        self.prior_temperature = float(p.prior_temperature)
        self.samples = int(p.samples)
        self.gamma = float(p.gamma)
        self.pool_size = int(p.pool_size)

    def posterior(self, ctx: RankContext) -> tuple[np.ndarray, np.ndarray]:
        """Beta posterior (alpha, beta) of every candidate."""
        scores = checked_scores(ctx)
        counts, sums, _ = _counts(ctx)
        successes = np.clip((sums + counts) / 2.0, 0.0, counts)
        prior = 0.5 * (1.0 + np.tanh(scores / (2.0 * self.prior_temperature)))  # sigmoid
        alpha = self.prior_strength * prior + 0.5 + successes
        beta = self.prior_strength * (1.0 - prior) + 0.5 + (counts - successes)
        return alpha, beta

    def rank(self, ctx: RankContext) -> Ranking:
        alpha, beta = self.posterior(ctx)
        n = alpha.shape[0]
        k = slate_size(ctx, n)
        total = alpha + beta
        mean = alpha / total
        sd = np.sqrt(alpha * beta / (total * total * (total + 1.0)))
        pool = sample_pool(mean + 3.0 * sd, self.pool_size)
        draws = ctx.rng.beta(alpha[pool], beta[pool], size=(self.samples, pool.shape[0]))
        order, props = slate_from_samples(draws, pool, n, k, self.gamma, ctx.rng)
        explored = order != greedy_topk(mean, k)
        return Ranking(order=order, propensities=props, explored=explored)

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        return item_delta(reward)


@hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(UCB1Policy)
    register(ThompsonPolicy)
