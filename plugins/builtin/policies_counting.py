"""Per-item counting bandits: ``ucb1`` and ``thompson`` (Beta–Bernoulli).

Both keep, per item id, the additive statistics vector ``[count, reward_sum]`` (in
``StatsDelta.items``) plus a global ``n_total`` counter (in ``StatsDelta.arrays``), so
deltas from several replicas merge by addition. Both blend the scorer's score in as a
prior, so a new item starts where the encoder puts it and moves with its rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from explorank.plugins.api import (
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
    param,
    reject_unknown,
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

    def __init__(self, **params: Any) -> None:
        p = dict(params)
        self.c: float = param(self.name, p, "c", 1.0, lambda v: v >= 0.0, ">= 0")
        self.prior_weight: float = param(
            self.name, p, "prior_weight", 1.0, lambda v: v >= 0.0, ">= 0"
        )
        self.prior_scale: float = param(self.name, p, "prior_scale", 1.0, lambda v: v > 0.0, "> 0")
        reject_unknown(self.name, p, ("c", "prior_weight", "prior_scale"))
        super().__init__(**params)

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

    def __init__(self, **params: Any) -> None:
        p = dict(params)
        self.prior_strength: float = param(
            self.name, p, "prior_strength", 4.0, lambda v: v > 0.0, "> 0"
        )
        self.prior_temperature: float = param(
            self.name, p, "prior_temperature", 0.25, lambda v: v > 0.0, "> 0"
        )
        self.samples: int = param(
            self.name,
            p,
            "samples",
            64,
            lambda v: 1 <= v <= 100_000,
            "in [1, 100000]",
            integer=True,
        )
        self.gamma: float = param(
            self.name, p, "gamma", 0.01, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"
        )
        self.pool_size: int = param(
            self.name, p, "pool_size", 512, lambda v: v >= 1, ">= 1", integer=True
        )
        reject_unknown(
            self.name, p, ("prior_strength", "prior_temperature", "samples", "gamma", "pool_size")
        )
        super().__init__(**params)

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
