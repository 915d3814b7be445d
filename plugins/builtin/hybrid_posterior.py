"""The joint posterior of the hybrid linear model (Li et al. 2010, LinUCB Algorithm 2),
computed at read time from additive statistics.

Model: ``y = zᵀβ + xᵀθ_a + noise`` — β shared by every item (features ``z``, D of them),
θ_a one item's own part (features ``x``, m of them; m = 1 is a bias per item), with ridge
λ₀ on β and λ on every θ_a. Additive sufficient statistics (what replicas sum):

- shared: ``A₀ = Σ z zᵀ`` (D×D), ``b₀ = Σ y z`` (D), ``yy = Σ y²``, ``n_total``;
- per item: ``A_a = Σ x xᵀ`` (m×m), ``B_a = Σ x zᵀ`` (m×D), ``b_a = Σ y x`` (m), flattened
  into one vector (:func:`pack`).

Algorithm 2 keeps A₀ and b₀ *net* of the per-item terms by subtracting ``B_aᵀA_a⁻¹B_a``
with the item's current inverse, which is not additive. The same quantities follow from
the raw sums by block elimination (the Schur complement over the items present)::

    S  = A₀ + λ₀I − Σ_a B_aᵀ A'_a⁻¹ B_a            A'_a = A_a + λI
    β̂  = S⁻¹ (b₀ − Σ_a B_aᵀ A'_a⁻¹ b_a)
    θ̂_a = A'_a⁻¹ (b_a − B_a β̂)
    Var(zᵀβ + xᵀθ_a) = wᵀ S⁻¹ w + xᵀ A'_a⁻¹ x,     w = z − B_aᵀ A'_a⁻¹ x

which equal Algorithm 2's A₀, b₀, β̂, θ̂_a and its confidence width exactly. The item sums
(``C = Σ B_aᵀA'_a⁻¹B_a``, ``c = Σ B_aᵀA'_a⁻¹b_a``, ``q = Σ b_aᵀA'_a⁻¹b_a``) are cached and
kept up to date per statistics version by folding in only the items whose vectors changed
(:meth:`PolicyStats.items_changed_since`), with a full recomputation every
``REFRESH_EVERY`` incremental folds (and whenever the statistics object is replaced, e.g.
reloaded from a store) to bound rounding drift.

Noise: σ² is estimated from the same sums, ``σ̂² = (ν₀ + RSS) / (ν₀ + n)`` with the ridge
identity ``RSS ≤ yy − β̂ᵀb₀ − Σ θ̂_aᵀb_a = yy − β̂ᵀ(b₀ − c) − q`` (ν₀ = 1 pseudo-observation of
σ² = 1, the largest variance of a reward in [-1, 1]), floored at ``noise_floor``²; so
exploration widths shrink to the actual reward noise instead of assuming σ = 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from explorank.plugins.api import PolicyStats
from explorank.plugins.errors import PluginError

#: incremental folds between two full recomputations of the item sums
REFRESH_EVERY = 512
#: prior pseudo-observations of the noise variance (at σ² = 1)
NOISE_PRIOR_N = 1.0


def item_size(m: int, d: int) -> int:
    """Length of one item's statistics vector: m² + m·D + m."""
    return m * m + m * d + m


def pack(x: np.ndarray, z: np.ndarray, y: float) -> np.ndarray:
    """One observation's per-item statistics ``[x xᵀ, x zᵀ, y x]`` as a flat vector."""
    return np.concatenate([np.outer(x, x).ravel(), np.outer(x, z).ravel(), y * x])


def unpack(rows: np.ndarray, m: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, size) item vectors -> A (N, m, m), B (N, m, D), b (N, m)."""
    n = rows.shape[0]
    a = rows[:, : m * m].reshape(n, m, m)
    b_mat = rows[:, m * m : m * m + m * d].reshape(n, m, d)
    b_vec = rows[:, m * m + m * d : m * m + m * d + m]
    return a, b_mat, b_vec


def item_inverse(a: np.ndarray, ridge: float) -> np.ndarray:
    """(N, m, m) inverses of ``A_a + λI`` (closed form for m = 1)."""
    m = a.shape[1]
    if m == 1:
        return 1.0 / (a + ridge)
    return np.linalg.inv(a + ridge * np.eye(m))  # type: ignore[no-any-return]


@dataclass
class ItemSums:
    """``C``, ``c``, ``q`` over a set of items (see the module docstring)."""

    c_mat: np.ndarray
    c_vec: np.ndarray
    q: float = 0.0

    @classmethod
    def zeros(cls, d: int) -> ItemSums:
        return cls(np.zeros((d, d)), np.zeros(d), 0.0)

    def add(
        self, rows: np.ndarray, m: int, d: int, ridge: float, sign: np.ndarray | float = 1.0
    ) -> None:
        """Add (sign 1) or remove (sign -1; one sign per row, or one for all) the
        contributions of the item vectors ``rows``."""
        if rows.shape[0] == 0:
            return
        signs = np.broadcast_to(np.asarray(sign, dtype=np.float64), (rows.shape[0],))
        if m == 1:  # a bias per item: scalar inverses, plain matrix products
            w = signs / (rows[:, 0] + ridge)
            b_mat, b_vec = rows[:, 1 : 1 + d], rows[:, 1 + d]
            wb = b_mat * w[:, None]
            self.c_mat += wb.T @ b_mat
            self.c_vec += wb.T @ b_vec
            self.q += float(np.dot(w * b_vec, b_vec))
            return
        a, b_mat, b_vec = unpack(rows, m, d)
        inv = item_inverse(a, ridge) * signs[:, None, None]
        inv_b = inv @ b_mat  # (N, m, D)
        self.c_mat += np.einsum("nmi,nmj->ij", b_mat, inv_b)
        self.c_vec += np.einsum("nmi,nm->i", inv_b, b_vec)
        self.q += float(np.einsum("nm,nmk,nk->", b_vec, inv, b_vec))


@dataclass
class HybridPosterior:
    """β̂, S⁻¹ and σ̂² for one statistics snapshot, and what is needed to score items."""

    m: int
    d: int
    item_ridge: float
    beta: np.ndarray  # (D,)
    s_inv: np.ndarray  # (D, D)
    factor: np.ndarray  # (D, D): F Fᵀ = S⁻¹
    noise_var: float
    n_total: float

    def items(
        self, stats: PolicyStats, item_ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A'⁻¹ (n, m, m), B (n, m, D), b (n, m) of the given items (zeros when unseen)."""
        rows = stats.item_matrix(item_ids, item_size(self.m, self.d))
        a, b_mat, b_vec = unpack(rows, self.m, self.d)
        return item_inverse(a, self.item_ridge), b_mat, b_vec

    def predict(
        self, z: np.ndarray, x: np.ndarray, inv: np.ndarray, b_mat: np.ndarray, b_vec: np.ndarray
    ) -> Prediction:
        """The posterior of ``zᵀβ + xᵀθ_a`` for candidates with shared features ``z``
        (n, D), given the user's per-item features ``x`` (m,) and the candidates' item
        statistics (:meth:`items`)."""
        h = inv @ x  # (n, m): A'⁻¹ x
        w = z - np.einsum("nmd,nm->nd", b_mat, h)
        item_mean = np.einsum("nm,nm->n", h, b_vec)
        item_var = np.maximum(h @ x, 0.0)
        mean = item_mean + w @ self.beta
        var = np.maximum(np.einsum("ij,ij->i", w @ self.s_inv, w), 0.0) + item_var
        return Prediction(mean, var, item_mean, item_var, w)


@dataclass
class Prediction:
    """Per-candidate posterior pieces (variances are in units of σ²)."""

    mean: np.ndarray  # (n,) E[zᵀβ + xᵀθ_a]
    var: np.ndarray  # (n,) Var[zᵀβ + xᵀθ_a] / σ²
    item_mean: np.ndarray  # (n,) xᵀA'⁻¹b_a
    item_var: np.ndarray  # (n,) xᵀA'⁻¹x = Var[xᵀθ_a | β] / σ²
    w: np.ndarray  # (n, D) z − B_aᵀA'⁻¹x: zᵀβ + xᵀθ_a = item_mean + wᵀβ + (own noise)


@dataclass
class HybridCache:
    """Per-policy cache: the item sums folded so far and the posterior of the last version."""

    stats: PolicyStats | None = None
    version: int = -1
    refs: dict[str, np.ndarray] = field(default_factory=dict)
    sums: ItemSums | None = None
    folds: int = 0
    posterior: HybridPosterior | None = None


def _stack(items: Mapping[str, np.ndarray], keys: list[str], size: int) -> np.ndarray:
    """The item vectors of ``keys`` as one (N, size) matrix, checking their length."""
    rows = [items[k] for k in keys]
    for key, vec in zip(keys, rows, strict=True):
        if vec.shape != (size,):
            raise PluginError(
                f"stored statistics of item {key!r} have {vec.size} values but the features "
                f"need {size} (the embedding size or the dim parameters changed): reset this "
                f"policy's state or restore the previous setting"
            )
    return np.stack(rows) if rows else np.zeros((0, size))


def _refresh_sums(cache: HybridCache, stats: PolicyStats, m: int, d: int, ridge: float) -> ItemSums:
    """Bring the cached item sums up to ``stats`` (incrementally when possible)."""
    items = stats.items
    size = item_size(m, d)
    refs = cache.refs
    changed: list[str] = []
    incremental = cache.sums is not None and cache.stats is stats and cache.folds < REFRESH_EVERY
    if incremental:
        since = stats.items_changed_since(cache.version)
        if since is None:
            incremental = False
        else:
            changed = sorted(k for k in since if refs.get(k) is not items.get(k))
            if any(k not in items for k in changed):  # an item vanished: start over
                incremental = False
    if not incremental or cache.sums is None:
        cache.refs = dict(items)
        cache.folds = 0
        cache.sums = ItemSums.zeros(d)
        cache.sums.add(_stack(items, list(items), size), m, d, ridge)
        return cache.sums
    if changed:
        old = [k for k in changed if k in refs]
        rows = np.concatenate([_stack(refs, old, size), _stack(items, changed, size)])
        signs = np.concatenate([-np.ones(len(old)), np.ones(len(changed))])
        cache.sums.add(rows, m, d, ridge, sign=signs)
        for k in changed:
            refs[k] = items[k]
        cache.folds += 1
    return cache.sums


def hybrid_posterior(
    cache: HybridCache,
    stats: PolicyStats,
    *,
    m: int,
    d: int,
    ridge: float,
    item_ridge: float,
    noise: float | None,
    name: str,
    noise_floor: float = 0.0,
) -> HybridPosterior:
    """The posterior of ``stats`` (cached per statistics object and version)."""
    post = cache.posterior
    version = stats.version
    if (
        post is not None
        and cache.version == version
        and cache.stats is stats
        and post.d == d
        and post.m == m
    ):
        return post
    a0 = stats.arrays.get("A")
    b0 = stats.arrays.get("b")
    a0 = np.zeros((d, d)) if a0 is None else np.asarray(a0, dtype=np.float64)
    b0 = np.zeros(d) if b0 is None else np.asarray(b0, dtype=np.float64)
    if a0.shape != (d, d) or b0.shape != (d,):
        raise PluginError(
            f"{name}: stored statistics have A {a0.shape}, b {b0.shape} but the features have "
            f"dimension {d} (the embedding size or the dim parameters changed): reset this "
            f"policy's state or restore the previous setting"
        )
    if cache.posterior is not None and (cache.posterior.d != d or cache.posterior.m != m):
        cache.sums = None
    sums = _refresh_sums(cache, stats, m, d, item_ridge)
    for attempt in range(2):
        s = a0 + ridge * np.eye(d) - sums.c_mat
        s = 0.5 * (s + s.T)
        try:
            chol = np.linalg.cholesky(s)
            break
        except np.linalg.LinAlgError as exc:
            if attempt == 0 and cache.folds:  # rounding drift: recompute the sums exactly
                cache.sums = None
                sums = _refresh_sums(cache, stats, m, d, item_ridge)
                continue
            raise PluginError(
                f"{name}: the Schur complement of the statistics is not positive definite "
                f"({exc}); the statistics are corrupt: reset this policy's state"
            ) from exc
    linv = np.linalg.inv(chol)
    s_inv = linv.T @ linv
    rhs = b0 - sums.c_vec
    beta = s_inv @ rhs
    n_arr = stats.arrays.get("n_total")
    n_total = float(n_arr[0]) if n_arr is not None and n_arr.size else 0.0
    yy_arr = stats.arrays.get("yy")
    yy = float(yy_arr[0]) if yy_arr is not None and yy_arr.size else 0.0
    if noise is not None:
        noise_var = noise * noise
    else:
        rss = max(yy - float(beta @ rhs) - sums.q, 0.0)
        noise_var = (NOISE_PRIOR_N + rss) / (NOISE_PRIOR_N + max(n_total, 0.0))
        noise_var = max(noise_var, noise_floor * noise_floor)
    post = HybridPosterior(m, d, item_ridge, beta, s_inv, linv.T, noise_var, n_total)
    cache.stats, cache.version, cache.posterior = stats, stats.version, post
    return post
