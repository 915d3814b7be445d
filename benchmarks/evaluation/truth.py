"""The ground truth of a ratings world: a matrix factorization of the interactions.

Explicit ratings (values that vary): the residuals of the global mean and of shrunk item
biases are factorized by ALS (alternating ridge solves); the truth's affinity of (user,
item) is ``b_item + p_user·q_item``. Implicit interactions (every value the same, e.g.
clicks only): each observed pair becomes +1 and ``IMPLICIT_NEGATIVES`` random unobserved
items per observation become -1 before the same fit, so items people pick, and the items
like them, get the high affinities.

The ALS solves are batched: per half-iteration, every entity's Gram matrix is assembled
by segment sums (``np.add.reduceat`` over entity-sorted rows) and all r×r systems are
solved in one ``np.linalg.solve`` call.
"""

from __future__ import annotations

import numpy as np

#: unobserved items drawn as negatives per observed interaction (implicit data)
IMPLICIT_NEGATIVES = 4
#: pseudo-count shrinking each item bias towards 0
BIAS_SHRINKAGE = 10.0


def _groups(entity: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row order sorted by entity, the entities that have rows, and where each starts."""
    order = np.argsort(entity, kind="stable")
    counts = np.bincount(entity, minlength=n)
    present = np.flatnonzero(counts)
    starts = (np.cumsum(counts) - counts)[present]
    return order, present, starts


def _gram(
    fixed: np.ndarray,
    other: np.ndarray,
    values: np.ndarray,
    groups: tuple[np.ndarray, np.ndarray, np.ndarray],
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per entity: ``Σ f fᵀ`` (n, r, r) and ``Σ f v`` (n, r) over its rows, where f are
    the ``fixed`` factors of the ``other`` side (segment sums over entity-sorted rows)."""
    order, present, starts = groups
    ft = np.ascontiguousarray(fixed.T)[:, other[order]]  # (r, N), rows grouped by entity
    r = ft.shape[0]
    gram = np.zeros((n, r, r))
    for i in range(r):
        block = np.add.reduceat(ft[i] * ft[i:], starts, axis=1)  # (r - i, n_present)
        gram[present, i, i:] = block.T
        gram[present, i:, i] = block.T
    rhs = np.zeros((n, r))
    rhs[present] = np.add.reduceat(ft * values[order], starts, axis=1).T
    return gram, rhs


def als(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    n_users: int,
    n_items: int,
    *,
    rank: int,
    reg: float,
    iters: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Explicit-feedback ALS on (user, item, value) triples: alternating ridge solves
    ``(Σ f fᵀ + reg·I) x = Σ f v`` for every user, then every item (batched)."""
    p = rng.normal(0, 0.1, size=(n_users, rank))
    q = rng.normal(0, 0.1, size=(n_items, rank))
    eye = reg * np.eye(rank)
    by_user, by_item = _groups(users, n_users), _groups(items, n_items)
    for _ in range(iters):
        g, b = _gram(q, items, values, by_user, n_users)
        p = np.linalg.solve(g + eye, b[:, :, None])[:, :, 0]
        g, b = _gram(p, users, values, by_item, n_items)
        q = np.linalg.solve(g + eye, b[:, :, None])[:, :, 0]
    return p, q


def implicit_pairs(
    users: np.ndarray, items: np.ndarray, n_items: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed pairs as +1 plus ``IMPLICIT_NEGATIVES`` random unobserved items per
    observation as -1 (for interactions that carry no graded value)."""
    seen = set(zip(users.tolist(), items.tolist(), strict=True))
    neg_u = np.repeat(users, IMPLICIT_NEGATIVES)
    neg_i = rng.integers(0, n_items, size=neg_u.shape[0])
    keep = np.array(
        [(u, i) not in seen for u, i in zip(neg_u.tolist(), neg_i.tolist(), strict=True)]
    )
    neg_u, neg_i = neg_u[keep], neg_i[keep]
    return (
        np.concatenate([users, neg_u]),
        np.concatenate([items, neg_i]),
        np.concatenate([np.ones(users.shape[0]), -np.ones(neg_u.shape[0])]),
    )


def fit_truth(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    n_users: int,
    n_items: int,
    *,
    rank: int = 16,
    reg: float = 5.0,
    iters: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user factors, item factors, item biases) of the interactions (module docstring)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=np.float64)
    if values.size and float(values.std()) < 1e-9:
        users, items, values = implicit_pairs(users, items, n_items, rng)
    mu = values.mean()
    resid = values - mu
    cnt = np.bincount(items, minlength=n_items)
    bias = np.bincount(items, weights=resid, minlength=n_items) / (cnt + BIAS_SHRINKAGE)
    p, q = als(users, items, resid - bias[items], n_users, n_items, rank=rank, reg=reg,
               iters=iters, rng=rng)  # fmt: skip
    return p, q, bias
