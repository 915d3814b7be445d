"""Ground-truth worlds for the simulator: who clicks what, with which probability.

A :class:`World` holds latent user and item factors and turns them into click
probabilities ``sigmoid(offset + u·v + b_item)``; ``offset`` is calibrated so that the mean
click probability of a random (user, item) pair is ``base_ctr`` (5% by default), a plausible
CTR for a recommendation slot.

- ``synthetic``: item factors are a random projection of the item's BERT text embedding
  plus independent noise (``text_signal`` sets the share of variance the text explains),
  plus a per-item bias the text does not explain. So text embeddings are informative but
  not perfect *by construction*: this world is built so that text matters, and it says
  nothing about whether it does on real data.
- ``movielens``: factors from a small matrix factorization (numpy ALS with biases) fitted
  to all normalized ratings; the affinities are standardized and scaled to a logit spread
  of ``spread`` before the same calibration. This is the real test of the text encoder:
  nothing in the ground truth was derived from the item texts.

Cold-start items are a random ``COLD_POOL`` share of the catalog whose interactions are
removed from the *training part* (user histories and popularity), never from the truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explorank.errors import InvalidArgumentError

log = logging.getLogger("explorank.benchmarks")

COLD_POOL = 0.2  # share of the catalog held out of training as cold-start items


@dataclass
class World:
    name: str
    item_ids: list[str]
    item_texts: list[str]
    user_factors: np.ndarray  # (n_users, r) float64
    item_factors: np.ndarray  # (n_items, r) float64
    item_bias: np.ndarray  # (n_items,)
    offset: float
    cold: np.ndarray  # (n_items,) bool: no interactions in the training part
    popularity: np.ndarray  # (n_items,) training interaction counts
    history: list[list[int]]  # per user: training positives, oldest first
    #: the log for replay: (user, item, reward 0/1) in time order, and whether it was uniform
    log: list[tuple[int, int, float]]
    log_uniform: bool = False

    @property
    def n_users(self) -> int:
        return int(self.user_factors.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    def click_probs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``users`` (m,), ``items`` (m, k) -> (m, k) click probabilities."""
        logits = np.einsum("mr,mkr->mk", self.user_factors[users], self.item_factors[items])
        return 1.0 / (1.0 + np.exp(-(self.offset + logits + self.item_bias[items])))

    def diversity_vectors(self) -> np.ndarray:
        n = np.linalg.norm(self.item_factors, axis=1, keepdims=True)
        return self.item_factors / np.where(n == 0, 1.0, n)


def _calibrate(logits: np.ndarray, base_ctr: float) -> float:
    """The offset ``c`` with ``mean(sigmoid(c + logits)) == base_ctr`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(mid + logits)))) < base_ctr:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _sample_logits(
    user_f: np.ndarray, item_f: np.ndarray, bias: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    u = rng.integers(0, user_f.shape[0], 20000)
    i = rng.integers(0, item_f.shape[0], 20000)
    return np.einsum("mr,mr->m", user_f[u], item_f[i]) + bias[i]


def _cold_mask(n_items: int, rng: np.random.Generator) -> np.ndarray:
    cold = np.zeros(n_items, dtype=bool)
    n_cold = max(1, int(round(COLD_POOL * n_items)))
    cold[rng.choice(n_items, size=n_cold, replace=False)] = True
    return cold


def synthetic_world(
    item_ids: list[str],
    item_texts: list[str],
    text_embeddings: np.ndarray,
    *,
    n_users: int = 1000,
    rank: int = 16,
    text_signal: float = 0.7,
    spread: float = 2.0,
    base_ctr: float = 0.05,
    history_len: int = 30,
    seed: int = 0,
) -> World:
    """A world whose item factors derive from the text embeddings (see module docstring)."""
    if not 0.0 <= text_signal <= 1.0:
        raise InvalidArgumentError("text_signal", f"must be in [0, 1], got {text_signal}")
    rng = np.random.default_rng(seed)
    n, d = text_embeddings.shape
    e = text_embeddings - text_embeddings.mean(axis=0)
    proj = e @ rng.normal(size=(d, rank))
    proj /= proj.std() + 1e-12
    noise = rng.normal(size=(n, rank))
    item_f = np.sqrt(text_signal) * proj + np.sqrt(1.0 - text_signal) * noise
    user_f = rng.normal(size=(n_users, rank))
    scale = spread / np.sqrt(rank)
    user_f *= np.sqrt(scale)
    item_f *= np.sqrt(scale)
    bias = np.asarray(rng.normal(0.0, 0.5, size=n))
    offset = _calibrate(_sample_logits(user_f, item_f, bias, rng), base_ctr)
    cold = _cold_mask(n, rng)
    world = World(
        "synthetic",
        list(item_ids),
        list(item_texts),
        user_f,
        item_f,
        bias,
        offset,
        cold,
        np.zeros(n),
        [[] for _ in range(n_users)],
        [],
        log_uniform=True,
    )
    # training part: each user was shown `history_len` random warm items
    warm = np.flatnonzero(~cold)
    shown = warm[rng.integers(0, warm.shape[0], size=(n_users, history_len))]
    probs = world.click_probs(np.arange(n_users), shown)
    clicks = rng.random(probs.shape) < probs
    np.add.at(world.popularity, shown[clicks], 1.0)
    world.history = [shown[u][clicks[u]].tolist() for u in range(n_users)]
    # a uniformly random logging policy's log, for replay: one random item per event
    users = np.asarray(rng.integers(0, n_users, size=4 * n_users))
    items = np.asarray(rng.integers(0, n, size=users.shape[0]))
    rewards = rng.random(users.shape[0]) < world.click_probs(users, items[:, None])[:, 0]
    world.log = list(
        zip(users.tolist(), items.tolist(), rewards.astype(float).tolist(), strict=True)
    )
    return world


def _als(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    n_users: int,
    n_items: int,
    rank: int,
    reg: float,
    iters: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Explicit-feedback ALS on (user, item, value) triples: alternating ridge solves."""
    p = rng.normal(0, 0.1, size=(n_users, rank))
    q = rng.normal(0, 0.1, size=(n_items, rank))
    by_user = np.argsort(users, kind="stable")
    by_item = np.argsort(items, kind="stable")
    u_bounds = np.searchsorted(users[by_user], np.arange(n_users + 1))
    i_bounds = np.searchsorted(items[by_item], np.arange(n_items + 1))
    eye = reg * np.eye(rank)

    def solve(
        fixed: np.ndarray, order: np.ndarray, bounds: np.ndarray, other: np.ndarray, out: np.ndarray
    ) -> None:
        for e in range(out.shape[0]):
            rows = order[bounds[e] : bounds[e + 1]]
            if rows.size == 0:
                out[e] = 0.0
                continue
            f = fixed[other[rows]]
            out[e] = np.linalg.solve(f.T @ f + eye, f.T @ values[rows])

    for _ in range(iters):
        solve(q, by_user, u_bounds, items, p)
        solve(p, by_item, i_bounds, users, q)
    return p, q


def movielens_world(
    directory: str | Path,
    *,
    rank: int = 16,
    reg: float = 5.0,
    iters: int = 8,
    spread: float = 2.0,
    base_ctr: float = 0.05,
    seed: int = 0,
) -> World:
    """A world whose truth is an ALS factorization of the MovieLens ratings."""
    from explorank.export.data import load_movielens

    ds = load_movielens(directory)
    index = ds.item_index()
    user_index: dict[str, int] = {}
    for it in ds.interactions:
        user_index.setdefault(it.user_id, len(user_index))
    inter = sorted(ds.interactions, key=lambda x: x.timestamp)
    if not inter:
        raise InvalidArgumentError("--dataset", f"{directory} has no ratings")
    users = np.array([user_index[x.user_id] for x in inter], dtype=np.int64)
    items = np.array([index[x.item_id] for x in inter], dtype=np.int64)
    values = np.array([x.value for x in inter], dtype=np.float64)
    n_users, n_items = len(user_index), len(ds.items)
    rng = np.random.default_rng(seed)
    mu = values.mean()
    resid = values - mu
    cnt_i = np.bincount(items, minlength=n_items)
    b_i = np.bincount(items, weights=resid, minlength=n_items) / (cnt_i + 10.0)
    log.info("fitting the ground truth: ALS rank %d on %d ratings ...", rank, values.shape[0])
    p, q = _als(users, items, resid - b_i[items], n_users, n_items, rank, reg, iters, rng)
    # standardize the affinity b_i + p·q over random pairs, then scale to the logit spread
    sample = _sample_logits(p, q, b_i, rng)
    s = spread / (sample.std() + 1e-12)
    user_f, item_f, bias = p * np.sqrt(s), q * np.sqrt(s), b_i * s
    offset = _calibrate(_sample_logits(user_f, item_f, bias, rng), base_ctr)
    cold = _cold_mask(n_items, rng)
    train = ~cold[items]
    popularity = np.bincount(items[train], minlength=n_items).astype(np.float64)
    history: list[list[int]] = [[] for _ in range(n_users)]
    for u, i, v in zip(
        users[train].tolist(), items[train].tolist(), values[train].tolist(), strict=True
    ):
        if v > 0:
            history[u].append(i)
    log_rows = list(
        zip(users.tolist(), items.tolist(), (values > 0).astype(float).tolist(), strict=True)
    )
    return World(
        f"movielens:{Path(directory).name}",
        [it.id for it in ds.items],
        [it.text for it in ds.items],
        user_f,
        item_f,
        bias,
        offset,
        cold,
        popularity,
        history,
        log_rows,
        log_uniform=False,
    )
