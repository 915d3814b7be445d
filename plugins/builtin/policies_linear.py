"""Neural-linear bandits: ``linucb`` and ``lin_ts`` on the encoder's embeddings.

A shared ridge-regression model predicts the reward of (user u, item v) from the
features ``x = [√d · Pᵀ(u ⊙ v), 1]`` — the elementwise product of the two BERT
embeddings (its sum is the cosine score), projected to ``dim`` dimensions by a fixed
seeded Gaussian matrix P (raw u ⊙ v when ``dim = 0``), scaled by √d so that ‖x‖ ≈ 1
for unit embeddings, plus a bias. The encoder supplies the representation; the linear
model supplies calibrated uncertainty, which is what drives exploration.

Statistics are additive: ``A = Σ x xᵀ`` and ``b = Σ r x`` (``StatsDelta.arrays``), so
replicas merge by addition; the ridge λ is added at read time (A + λI). The inverse
is cached per statistics snapshot and, when the new A differs from the cached one by
a single rank-one term (one reward), updated by Sherman–Morrison in O(D²) instead
of refactored (refactored anyway every ``REFACTOR_EVERY`` updates to bound drift).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
from explorank.plugins.errors import PluginError
from explorank.plugins.hookspecs import hookimpl

REFACTOR_EVERY = 256


@dataclass
class LinearPosterior:
    """The ridge posterior for one statistics snapshot."""

    a_ref: np.ndarray | None  # the stats' A array object this was computed from
    b_ref: np.ndarray | None
    version: int
    a_raw: np.ndarray  # copy of A (without ridge)
    a_inv: np.ndarray  # (A + λI)⁻¹
    theta: np.ndarray  # (A + λI)⁻¹ b
    factor: np.ndarray | None  # S with S Sᵀ = (A + λI)⁻¹ (for posterior sampling)
    rank_one_updates: int = 0

    def sqrt_factor(self) -> np.ndarray:
        if self.factor is None:
            self.factor = np.linalg.cholesky(0.5 * (self.a_inv + self.a_inv.T))
        return self.factor


class LinearParams(PluginParams):
    """Parameters shared by ``linucb`` and ``lin_ts``."""

    ridge: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="ridge λ (A + λI)")
    dim: int = Field(
        32, ge=0, le=4096, description="projected feature size (0 = the raw u⊙v features)"
    )
    prior_weight: float = Field(
        1.0, ge=0.0, allow_inf_nan=False, description="weight of the scorer's score"
    )
    projection_seed: int = Field(0, ge=0, description="seed of the fixed Gaussian projection")


class _LinearPolicy(Policy):
    """Shared features, statistics and posterior cache of ``linucb`` and ``lin_ts``."""

    stateful = True
    Params: type[LinearParams] = LinearParams  # type: ignore[assignment]

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        p = self.params
        self.ridge = float(p.ridge)
        self.dim = int(p.dim)
        self.prior_weight = float(p.prior_weight)
        self.projection_seed = int(p.projection_seed)
        self._projections: dict[int, np.ndarray] = {}
        self._cache: LinearPosterior | None = None

    # ------------------------------------------------------------------ features
    def feature_dim(self, d: int) -> int:
        return (self.dim if self.dim > 0 else d) + 1

    def features(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, D) float64 features ``[√d · Pᵀ(u ⊙ v), 1]`` for every candidate.

        Computed as ``V @ (√d · diag(u) P)`` in float32 — one (n, d) x (d, dim) product,
        without materialising u ⊙ v for every candidate."""
        items = np.asarray(items, dtype=np.float32)
        user = np.asarray(user, dtype=np.float32)
        if items.ndim != 2 or user.ndim != 1 or items.shape[1] != user.shape[0]:
            raise InvalidArgumentError(
                "item_embeddings",
                f"shape {items.shape} does not match user embedding shape {user.shape}",
            )
        n, d = items.shape
        scaled_user = user * np.float32(math.sqrt(d))
        out = np.empty((n, self.feature_dim(d)), dtype=np.float64)
        if self.dim > 0:
            proj = self._projections.get(d)
            if proj is None:
                rng = np.random.default_rng(self.projection_seed)
                proj = (rng.standard_normal((d, self.dim)) / math.sqrt(self.dim)).astype(np.float32)
                self._projections[d] = proj
            out[:, :-1] = items @ (scaled_user[:, None] * proj)
        else:
            out[:, :-1] = items * scaled_user
        out[:, -1] = 1.0
        return out

    # ---------------------------------------------------------------- posterior
    def posterior(self, stats: PolicyStats, dim: int) -> LinearPosterior:
        """The ridge posterior for ``stats`` with feature dimension ``dim`` (cached)."""
        a = stats.arrays.get("A")
        b = stats.arrays.get("b")
        cache = self._cache
        if (
            cache is not None
            and cache.a_ref is a
            and cache.b_ref is b
            and cache.version == stats.version
            and cache.a_raw.shape[0] == dim
        ):
            return cache
        a_new = np.zeros((dim, dim)) if a is None else np.asarray(a, dtype=np.float64)
        b_new = np.zeros(dim) if b is None else np.asarray(b, dtype=np.float64)
        if a_new.shape != (dim, dim) or b_new.shape != (dim,):
            raise PluginError(
                f"{self.name}: stored statistics have A {a_new.shape}, b {b_new.shape} but the "
                f"features have dimension {dim} (the embedding size or the 'dim' parameter "
                f"changed): reset this policy's state or restore the previous setting"
            )
        post = None
        if cache is not None and cache.a_raw.shape == (dim, dim):
            post = self._rank_one(cache, a_new, b_new)
        if post is None:
            post = self._factorize(a_new, b_new)
        post.a_ref, post.b_ref, post.version = a, b, stats.version
        self._cache = post
        return post

    def _factorize(self, a: np.ndarray, b: np.ndarray) -> LinearPosterior:
        dim = a.shape[0]
        try:
            chol = np.linalg.cholesky(a + self.ridge * np.eye(dim))
        except np.linalg.LinAlgError as exc:
            raise PluginError(
                f"{self.name}: A + ridge·I is not positive definite ({exc}); the statistics "
                f"are corrupt: reset this policy's state"
            ) from exc
        linv = np.linalg.inv(chol)
        a_inv = linv.T @ linv
        return LinearPosterior(None, None, 0, a.copy(), a_inv, a_inv @ b, linv.T)

    def _rank_one(
        self, cache: LinearPosterior, a: np.ndarray, b: np.ndarray
    ) -> LinearPosterior | None:
        """Sherman–Morrison update when ``a - cache.a_raw`` is exactly one x xᵀ term."""
        if cache.rank_one_updates >= REFACTOR_EVERY:
            return None
        diff = a - cache.a_raw
        diag = np.diag(diff)
        i = int(diag.argmax())
        if diag[i] <= 0.0:
            if np.any(diff):
                return None
            return LinearPosterior(
                None,
                None,
                0,
                cache.a_raw,
                cache.a_inv,
                cache.a_inv @ b,
                cache.factor,
                cache.rank_one_updates,
            )
        x = diff[:, i] / math.sqrt(diag[i])
        scale = max(1.0, float(np.abs(a).max()))
        if not np.allclose(diff, np.outer(x, x), rtol=1e-9, atol=1e-12 * scale):
            return None
        ax = cache.a_inv @ x
        a_inv = cache.a_inv - np.outer(ax, ax) / (1.0 + x @ ax)
        return LinearPosterior(
            None, None, 0, a.copy(), a_inv, a_inv @ b, None, cache.rank_one_updates + 1
        )

    # ------------------------------------------------------------------- shared
    def _prepare(self, ctx: RankContext) -> tuple[np.ndarray, np.ndarray, LinearPosterior, int]:
        scores = checked_scores(ctx)
        x = self.features(ctx.user_embedding, ctx.item_embeddings)
        if x.shape[0] != scores.shape[0]:
            raise InvalidArgumentError(
                "item_embeddings", f"{x.shape[0]} embeddings for {scores.shape[0]} scores"
            )
        post = self.posterior(ctx.stats, x.shape[1])
        return scores, x, post, slate_size(ctx, scores.shape[0])

    @staticmethod
    def _widths(x: np.ndarray, post: LinearPosterior) -> np.ndarray:
        """sqrt(xᵀ (A+λI)⁻¹ x) for every row of x."""
        return np.sqrt(np.maximum(np.einsum("ij,ij->i", x @ post.a_inv, x), 0.0))

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        x = self.features(reward.user_embedding, np.asarray(reward.item_embedding)[None, :])[0]
        return StatsDelta(
            arrays={"A": np.outer(x, x), "b": float(reward.value) * x, "n_total": np.array([1.0])}
        )


class LinUCBPolicy(_LinearPolicy):
    """LinUCB on the neural-linear features, with the scorer as prior.

    ``index = prior_weight·score + θ̂ᵀx + alpha·sqrt(xᵀ(A+λI)⁻¹x)``; deterministic
    greedy on the index (ties by candidate index), so every propensity is 1.
    ``explored[j]``: the item differs from the greedy ranking by ``prior_weight·score + θ̂ᵀx``.
    """

    name = "linucb"
    description = "LinUCB on projected u⊙v embedding features (neural-linear); propensity 1"

    class Params(LinearParams):
        alpha: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="confidence width")

    @property
    def alpha(self) -> float:
        return float(self.params.alpha)

    def rank(self, ctx: RankContext) -> Ranking:
        scores, x, post, k = self._prepare(ctx)
        exploit = self.prior_weight * scores + x @ post.theta
        index = exploit + self.alpha * self._widths(x, post)
        return deterministic_ranking(index, k, exploit)


class LinTSPolicy(_LinearPolicy):
    """Linear Thompson sampling on the neural-linear features, with the scorer as prior.

    Draws ``samples`` parameter vectors θ ~ N(θ̂, v²(A+λI)⁻¹) (v = ``posterior_scale``),
    scores the candidates (``pool_size`` most optimistic ones when there are more) with
    ``prior_weight·score + θᵀx`` per draw, and builds the slate by the exact
    vote-mixture construction shared with ``thompson`` (see
    ``_sampling.slate_from_samples``), so each propensity is the true step probability.
    """

    name = "lin_ts"
    description = "linear Thompson sampling on projected u⊙v embedding features (neural-linear)"

    class Params(LinearParams):
        posterior_scale: float = Field(
            1.0, gt=0.0, allow_inf_nan=False, description="scale v of the posterior covariance"
        )
        samples: int = Field(64, ge=1, le=100_000, description="posterior draws per Rank")
        gamma: float = Field(0.01, ge=0.0, le=1.0, description="uniform mixing per position")
        pool_size: int = Field(512, ge=1, description="most optimistic candidates sampled")

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        p = self.params
        self.posterior_scale = float(p.posterior_scale)
        self.samples = int(p.samples)
        self.gamma = float(p.gamma)
        self.pool_size = int(p.pool_size)

    def rank(self, ctx: RankContext) -> Ranking:
        scores, x, post, k = self._prepare(ctx)
        n = scores.shape[0]
        exploit = self.prior_weight * scores + x @ post.theta
        optimistic = exploit + 3.0 * self.posterior_scale * self._widths(x, post)
        pool = sample_pool(optimistic, self.pool_size)
        z = ctx.rng.standard_normal((self.samples, x.shape[1]))
        thetas = post.theta + self.posterior_scale * (z @ post.sqrt_factor().T)  # (M, D)
        draws = self.prior_weight * scores[pool] + thetas @ x[pool].T  # (M, P)
        order, props = slate_from_samples(draws, pool, n, k, self.gamma, ctx.rng)
        explored = order != greedy_topk(exploit, k)
        return Ranking(order=order, propensities=props, explored=explored)


@hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(LinUCBPolicy)
    register(LinTSPolicy)
