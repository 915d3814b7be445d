"""Hybrid neural-linear bandits: ``linucb_hybrid`` and ``lin_ts_hybrid``.

``linucb`` and ``lin_ts`` fit one linear model shared by every item on ``u ⊙ v``: they
cannot learn what makes one item better than another for everyone (its own bias), which
per-item counting policies learn directly. The hybrid model (Li et al. 2010, Algorithm 2)
adds a per-item part::

    reward ≈ w·t(score) + zᵀβ + xᵀθ_item

- ``t(score) = tanh(score / score_scale)``, with ``w = prior_weight``: the scorer is the
  prior mean, and ``z`` carries ``t(score)`` as a feature too, so the data decide how much
  to trust it;
- shared features ``z = [√d·Pᵀ(u ⊙ v), Qᵀv, t(score), 1]`` (D = dim + text_dim + 2): the
  user-item interaction and the item's own text, both through fixed seeded Gaussian
  projections (``dim = 0``: raw ``u ⊙ v``). Whatever β learns from the text carries over to
  items never shown: this is the encoder's contribution to cold start;
- per-item features ``x = [1, Rᵀu]`` (m = 1 + item_dim; ``item_dim = 0``: a bias per item):
  a new item starts at θ = 0, i.e. from the shared part, and learns its own as its
  rewards arrive.

The joint ridge posterior (ridge λ₀ = ``ridge`` on β, λ = ``item_ridge`` on each θ) is
computed at read time from additive statistics by block elimination
(:mod:`explorank.plugins.builtin.hybrid_posterior`), so replicas and the durable stores
merge deltas by addition as for every other policy: shared arrays ``A``, ``b``, ``yy``,
``n_total`` in ``StatsDelta.arrays``, one vector per item in ``StatsDelta.items``. The
reward noise σ is estimated from the same sums unless ``noise`` is set (never below
``noise_floor``: with (nearly) deterministic rewards the estimate would collapse, and with
it the prior uncertainty of items never shown, σ²/λ, so exploration would stop).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from pydantic import Field

from explorank.errors import InvalidArgumentError
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
    deterministic_ranking,
    greedy_topk,
    sample_pool,
    slate_from_samples,
    slate_size,
)
from explorank.plugins.builtin.hybrid_posterior import (
    HybridCache,
    HybridPosterior,
    Prediction,
    hybrid_posterior,
    pack,
)
from explorank.plugins.hookspecs import hookimpl

__all__ = ["HybridParams", "LinTSHybridPolicy", "LinUCBHybridPolicy"]


class HybridParams(PluginParams):
    """Parameters shared by ``linucb_hybrid`` and ``lin_ts_hybrid``."""

    ridge: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="ridge λ₀ of β (shared)")
    item_ridge: float = Field(
        4.0,
        gt=0.0,
        allow_inf_nan=False,
        description="ridge λ of each item's θ: rewards an item needs before its own part "
        "weighs as much as the shared prediction",
    )
    dim: int = Field(32, ge=0, le=4096, description="projected u⊙v size (0 = raw u⊙v)")
    text_dim: int = Field(16, ge=0, le=4096, description="projected item-text size in z")
    item_dim: int = Field(
        0, ge=0, le=64, description="per-item user features besides the bias (0 = bias only)"
    )
    prior_weight: float = Field(
        1.0, ge=0.0, allow_inf_nan=False, description="prior mean = w·tanh(score/score_scale)"
    )
    score_scale: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="see prior_weight")
    noise: float | None = Field(
        None, gt=0.0, allow_inf_nan=False, description="reward noise σ (None = estimated)"
    )
    noise_floor: float = Field(
        0.1, ge=0.0, allow_inf_nan=False, description="the estimated σ never goes below this"
    )
    projection_seed: int = Field(0, ge=0, description="seed of the fixed Gaussian projections")


class _HybridPolicy(Policy):
    """Features, statistics and posterior cache shared by the two hybrid policies."""

    stateful = True
    Params: type[HybridParams] = HybridParams  # type: ignore[assignment]

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        p = self.params
        self.ridge = float(p.ridge)
        self.item_ridge = float(p.item_ridge)
        self.dim = int(p.dim)
        self.text_dim = int(p.text_dim)
        self.item_dim = int(p.item_dim)
        self.prior_weight = float(p.prior_weight)
        self.score_scale = float(p.score_scale)
        self.noise = None if p.noise is None else float(p.noise)
        self.noise_floor = float(p.noise_floor)
        self.projection_seed = int(p.projection_seed)
        self._projections: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._cache = HybridCache()

    # ------------------------------------------------------------------ features
    @property
    def item_features(self) -> int:
        """m: the size of each item's own part."""
        return 1 + self.item_dim

    def shared_dim(self, d: int) -> int:
        """D: the size of the shared features for embeddings of size ``d``."""
        return (self.dim if self.dim > 0 else d) + self.text_dim + 2

    def _proj(self, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        proj = self._projections.get(d)
        if proj is None:
            rng = np.random.default_rng(self.projection_seed)

            def gauss(k: int) -> np.ndarray:
                return (rng.standard_normal((d, k)) / math.sqrt(max(k, 1))).astype(np.float32)

            proj = self._projections[d] = (
                gauss(self.dim),
                gauss(self.text_dim),
                gauss(self.item_dim),
            )
        return proj

    def features(
        self, user: np.ndarray, items: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shared features ``z`` (n, D), the user's per-item features ``x`` (m,) and the
        prior mean ``w·t(score)`` (n,) of every candidate (float64)."""
        items = np.asarray(items, dtype=np.float32)
        user = np.asarray(user, dtype=np.float32)
        if items.ndim != 2 or user.ndim != 1 or items.shape[1] != user.shape[0]:
            raise InvalidArgumentError(
                "item_embeddings",
                f"shape {items.shape} does not match user embedding shape {user.shape}",
            )
        n, d = items.shape
        if scores.shape[0] != n:
            raise InvalidArgumentError(
                "item_embeddings", f"{n} embeddings for {scores.shape[0]} scores"
            )
        p_uv, q_v, r_u = self._proj(d)
        uv = items * (user * np.float32(math.sqrt(d)))
        t = np.tanh(np.asarray(scores, dtype=np.float64) / self.score_scale)
        parts = [uv @ p_uv if self.dim > 0 else uv]
        if self.text_dim:
            parts.append(items @ q_v)
        parts += [t[:, None], np.ones((n, 1))]
        z = np.concatenate(parts, axis=1, dtype=np.float64)
        x = np.ones(self.item_features, dtype=np.float64)
        if self.item_dim:
            x[1:] = user @ r_u
        return z, x, self.prior_weight * t

    # ---------------------------------------------------------------- posterior
    def posterior(self, stats: PolicyStats, d: int) -> HybridPosterior:
        """The joint posterior for ``stats`` with shared feature dimension ``d`` (cached)."""
        return hybrid_posterior(
            self._cache,
            stats,
            m=self.item_features,
            d=d,
            ridge=self.ridge,
            item_ridge=self.item_ridge,
            noise=self.noise,
            noise_floor=self.noise_floor,
            name=self.name,
        )

    def _predict(self, ctx: RankContext) -> tuple[np.ndarray, Prediction, HybridPosterior, int]:
        scores = checked_scores(ctx)
        z, x, prior = self.features(ctx.user_embedding, ctx.item_embeddings, scores)
        post = self.posterior(ctx.stats, z.shape[1])
        pred = post.predict(z, x, *post.items(ctx.stats, ctx.item_ids))
        return prior + pred.mean, pred, post, slate_size(ctx, scores.shape[0])

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        item = np.asarray(reward.item_embedding, dtype=np.float32)[None, :]
        z, x, prior = self.features(reward.user_embedding, item, np.array([reward.score]))
        y = float(reward.value) - float(prior[0])
        zz = z[0]
        own = np.concatenate([[1.0], zz, [y]]) if self.item_dim == 0 else pack(x, zz, y)
        return StatsDelta(
            items={reward.item_id: own},
            arrays={
                "A": zz[:, None] * zz[None, :],
                "b": y * zz,
                "yy": np.array([y * y]),
                "n_total": np.array([1.0]),
            },
        )


class LinUCBHybridPolicy(_HybridPolicy):
    """Hybrid LinUCB: ``index = w·t(score) + E[zᵀβ + xᵀθ_a] + alpha·σ̂·sd``, with the joint
    posterior sd of Li et al. (2010, Alg. 2); deterministic greedy on the index (ties by
    candidate index), so every propensity is 1. ``explored[j]``: the item differs from the
    greedy ranking by the posterior mean."""

    name = "linucb_hybrid"
    description = "hybrid LinUCB: shared neural-linear model + a per-item part (Li et al. 2010)"

    class Params(HybridParams):
        alpha: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="confidence width")

    def rank(self, ctx: RankContext) -> Ranking:
        exploit, pred, post, k = self._predict(ctx)
        width = float(self.params.alpha) * math.sqrt(post.noise_var) * np.sqrt(pred.var)
        return deterministic_ranking(exploit + width, k, exploit)


class LinTSHybridPolicy(_HybridPolicy):
    """Hybrid linear Thompson sampling: each of ``samples`` draws takes β from its posterior
    and every candidate's θ_a from its posterior given β (the joint posterior, scaled by
    ``posterior_scale``·σ̂); the slate is built from the draws by the exact vote-mixture
    construction shared with ``thompson`` and ``lin_ts``, so each propensity is exact."""

    name = "lin_ts_hybrid"
    description = "hybrid linear Thompson sampling: shared neural-linear model + per-item part"

    class Params(HybridParams):
        posterior_scale: float = Field(
            1.0, gt=0.0, allow_inf_nan=False, description="scale v of the posterior covariance"
        )
        samples: int = Field(64, ge=1, le=100_000, description="posterior draws per Rank")
        gamma: float = Field(0.01, ge=0.0, le=1.0, description="uniform mixing per position")
        pool_size: int = Field(512, ge=1, description="most optimistic candidates sampled")

    def rank(self, ctx: RankContext) -> Ranking:
        p = self.params
        exploit, pred, post, k = self._predict(ctx)
        n = exploit.shape[0]
        sd = float(p.posterior_scale) * math.sqrt(post.noise_var)
        pool = sample_pool(exploit + 3.0 * sd * np.sqrt(pred.var), int(p.pool_size))
        m = int(p.samples)
        betas = post.beta + sd * (ctx.rng.standard_normal((m, post.d)) @ post.factor.T)
        own = sd * np.sqrt(pred.item_var[pool]) * ctx.rng.standard_normal((m, pool.shape[0]))
        base = (exploit - pred.mean + pred.item_mean)[pool]  # prior + xᵀA'⁻¹b_a
        draws = base + betas @ pred.w[pool].T + own
        order, props = slate_from_samples(draws, pool, n, k, float(p.gamma), ctx.rng)
        explored = order != greedy_topk(exploit, k)
        return Ranking(order=order, propensities=props, explored=explored)


@hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(LinUCBHybridPolicy)
    register(LinTSHybridPolicy)
