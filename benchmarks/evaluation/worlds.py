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
- ratings worlds (``movielens:DIR``, ``files:CATALOG,INTERACTIONS``): factors from a
  matrix factorization of *all* the interactions (:mod:`.truth`); the affinities are
  standardized and scaled to a logit spread of ``spread`` before the same calibration.
  This is the real test of the text encoder: nothing in the truth was derived from texts.

The split (per replicate seed): a random ``COLD_POOL`` share of the catalog are cold-start
items, and each user's most recent ``EVAL_SHARE`` of interactions is the evaluation part.
The **training part** — the rest, minus every interaction with a cold item — is all that
user histories, popularity and fine-tuning (:meth:`World.train_dataset`) may read; the
truth is fitted on everything (it is the world, not a model), and replay reads the
evaluation part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError

log = logging.getLogger("explorank.benchmarks")

COLD_POOL = 0.2  # share of the catalog held out of training as cold-start items
EVAL_SHARE = 0.2  # share of each user's most recent interactions held out of training


@dataclass
class Interactions:
    """(user, item, value, timestamp) rows as index arrays into the world's users/items."""

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def take(self, mask: np.ndarray) -> Interactions:
        return Interactions(
            self.users[mask], self.items[mask], self.values[mask], self.timestamps[mask]
        )


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
    #: the training part (module docstring); user ids as strings for fine-tuning
    train: Interactions | None = None
    user_ids: list[str] = field(default_factory=list)

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

    def train_dataset(self) -> Any:
        """The training part as an :class:`explorank.export.data.Dataset` (what fine-tuning
        may read: never an evaluation-part or cold-item interaction)."""
        from explorank.export.data import Dataset, Interaction, Item

        items = [Item(i, t) for i, t in zip(self.item_ids, self.item_texts, strict=True)]
        tr = self.train
        rows: list[Interaction] = []
        if tr is not None:
            uid = self.user_ids or [str(u) for u in range(self.n_users)]
            for u, i, v, ts in zip(
                tr.users.tolist(), tr.items.tolist(), tr.values.tolist(),
                tr.timestamps.tolist(), strict=True,
            ):  # fmt: skip
                rows.append(Interaction(uid[u], self.item_ids[i], float(v), int(ts)))
        return Dataset(items, rows, name=f"{self.name}-train")


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
        "synthetic", list(item_ids), list(item_texts), user_f, item_f, bias, offset, cold,
        np.zeros(n), [[] for _ in range(n_users)], [], log_uniform=True,
    )  # fmt: skip
    # training part: each user was shown `history_len` random warm items
    warm = np.flatnonzero(~cold)
    shown = warm[rng.integers(0, warm.shape[0], size=(n_users, history_len))]
    probs = world.click_probs(np.arange(n_users), shown)
    clicks = rng.random(probs.shape) < probs
    np.add.at(world.popularity, shown[clicks], 1.0)
    world.history = [shown[u][clicks[u]].tolist() for u in range(n_users)]
    users = np.repeat(np.arange(n_users), history_len)
    world.train = Interactions(
        users, shown.reshape(-1), np.where(clicks.reshape(-1), 1.0, -1.0),
        np.tile(np.arange(history_len), n_users),
    )  # fmt: skip
    # a uniformly random logging policy's log, for replay: one random item per event
    users = np.asarray(rng.integers(0, n_users, size=4 * n_users))
    items = np.asarray(rng.integers(0, n, size=users.shape[0]))
    rewards = rng.random(users.shape[0]) < world.click_probs(users, items[:, None])[:, 0]
    world.log = list(
        zip(users.tolist(), items.tolist(), rewards.astype(float).tolist(), strict=True)
    )
    return world


@dataclass
class RatingsTruth:
    """A ratings data set and its fitted truth, shared by every replicate seed."""

    name: str
    item_ids: list[str]
    item_texts: list[str]
    user_ids: list[str]
    rows: Interactions  # every interaction, in time order
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    offset: float


def ratings_truth(
    ds: Any, name: str, *, rank: int = 16, reg: float = 5.0, iters: int = 8,
    spread: float = 2.0, base_ctr: float = 0.05,
    factors: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None,
) -> RatingsTruth:  # fmt: skip
    """Fit the truth of a :class:`~explorank.export.data.Dataset` (module docstring);
    ``factors`` = (user factors, item factors, item bias, offset) of an earlier fit."""
    from explorank.benchmarks.evaluation.truth import fit_truth

    index = ds.item_index()
    user_index: dict[str, int] = {}
    inter = sorted(ds.interactions, key=lambda x: x.timestamp)
    if not inter:
        raise InvalidArgumentError("--dataset", f"{name} has no interactions")
    for it in inter:
        user_index.setdefault(it.user_id, len(user_index))
    rows = Interactions(
        np.array([user_index[x.user_id] for x in inter], dtype=np.int64),
        np.array([index[x.item_id] for x in inter], dtype=np.int64),
        np.array([x.value for x in inter], dtype=np.float64),
        np.array([x.timestamp for x in inter], dtype=np.int64),
    )
    n_users, n_items = len(user_index), len(ds.items)
    if factors is not None:
        uf, itf, bias, offset = factors
        if uf.shape[0] != n_users or itf.shape[0] != n_items:
            raise ValueError("cached factors do not match the data set")
        return RatingsTruth(name, [it.id for it in ds.items], [it.text for it in ds.items],
                            list(user_index), rows, uf, itf, bias, offset)  # fmt: skip
    log.info("fitting the ground truth: ALS rank %d on %d interactions ...", rank, len(rows))
    p, q, b = fit_truth(rows.users, rows.items, rows.values, n_users, n_items, rank=rank,
                        reg=reg, iters=iters, seed=0)  # fmt: skip
    rng = np.random.default_rng(0)
    # standardize the affinity b_i + p·q over random pairs, then scale to the logit spread
    s = spread / (_sample_logits(p, q, b, rng).std() + 1e-12)
    user_f, item_f, bias = p * np.sqrt(s), q * np.sqrt(s), b * s
    offset = _calibrate(_sample_logits(user_f, item_f, bias, rng), base_ctr)
    return RatingsTruth(name, [it.id for it in ds.items], [it.text for it in ds.items],
                        list(user_index), rows, user_f, item_f, bias, offset)  # fmt: skip


def eval_mask(users: np.ndarray, n_users: int) -> np.ndarray:
    """Rows (in time order) in each user's most recent ``EVAL_SHARE`` (a user with one
    interaction keeps it in training)."""
    counts = np.bincount(users, minlength=n_users)
    n_eval = np.where(counts >= 2, np.ceil(EVAL_SHARE * counts), 0).astype(np.int64)
    order = np.argsort(users, kind="stable")  # per user, time order kept
    rank = np.empty_like(order)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(users.shape[0]) - np.repeat(starts, counts)
    return rank >= (counts - n_eval)[users]


def ratings_world(truth: RatingsTruth, *, seed: int = 0) -> World:
    """The world of ``truth`` with replicate ``seed``'s split (module docstring)."""
    rng = np.random.default_rng(seed)
    n_items, n_users = len(truth.item_ids), len(truth.user_ids)
    cold = _cold_mask(n_items, rng)
    rows = truth.rows
    held = eval_mask(rows.users, n_users)
    train = rows.take(~held & ~cold[rows.items])
    popularity = np.bincount(train.items, minlength=n_items).astype(np.float64)
    history: list[list[int]] = [[] for _ in range(n_users)]
    for u, i, v in zip(
        train.users.tolist(), train.items.tolist(), train.values.tolist(), strict=True
    ):
        if v > 0:
            history[u].append(i)
    ev = rows.take(held | cold[rows.items])
    log_rows = list(zip(ev.users.tolist(), ev.items.tolist(),
                        (ev.values > 0).astype(float).tolist(), strict=True))  # fmt: skip
    return World(
        truth.name, truth.item_ids, truth.item_texts, truth.user_factors, truth.item_factors,
        truth.item_bias, truth.offset, cold, popularity, history, log_rows, log_uniform=False,
        train=train, user_ids=truth.user_ids,
    )  # fmt: skip


def movielens_world(directory: str, *, seed: int = 0) -> World:
    """A MovieLens directory's world (ALS truth of its ratings, replicate ``seed``'s split)."""
    from pathlib import Path

    from explorank.export.data import load_movielens

    return ratings_world(
        ratings_truth(load_movielens(directory), f"movielens:{Path(directory).name}"), seed=seed
    )
