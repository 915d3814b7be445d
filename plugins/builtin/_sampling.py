"""Slate sampling and propensity helpers shared by the built-in policies.

Every helper here returns the *exact* probability of each sampling step it takes,
so a policy's logged propensities are consistent with how the ordering was actually
drawn (the contract of :class:`explorank.plugins.api.Ranking`). All work is vectorized
over candidates; the only Python loops run over positions (``top_k``).
"""

from __future__ import annotations

import numpy as np

from explorank.errors import InvalidArgumentError
from explorank.plugins.api import RankContext, Ranking

#: Relative logits (logit - max logit) are floored here. Keeping |logit| <= 1e9 keeps
#: the Gumbel keys accurate to ~1e-7 in float64; an item this far below the best one
#: has probability e^-1e9 = 0 at any position where a non-floored item remains, and
#: floored items are sampled uniformly among themselves (and reported so).
LOGIT_FLOOR = -1e9
#: Smallest propensity ever reported: never reached by the samplers below (a chosen
#: item is always within ~50 nats of the best remaining one), kept as a guard.
MIN_PROPENSITY = float(np.finfo(np.float64).tiny)


# ------------------------------------------------------------------ context checks


def checked_scores(ctx: RankContext) -> np.ndarray:
    """The context's scores as float64, after checking shape and finiteness."""
    scores = np.asarray(ctx.scores, dtype=np.float64)
    if scores.ndim != 1:
        raise InvalidArgumentError("scores", f"expected a 1-D array, got shape {scores.shape}")
    if len(ctx.item_ids) != scores.shape[0]:
        raise InvalidArgumentError(
            "item_ids", f"{len(ctx.item_ids)} ids for {scores.shape[0]} scores"
        )
    if not np.all(np.isfinite(scores)):
        raise InvalidArgumentError("scores", "the scorer returned NaN or infinite scores")
    if ctx.top_k < 1:
        raise InvalidArgumentError("top_k", f"must be >= 1, got {ctx.top_k}")
    return scores


def slate_size(ctx: RankContext, n: int) -> int:
    return min(int(ctx.top_k), n)


# ------------------------------------------------------------------------ greedy


def greedy_topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, descending, ties broken by lower index.

    Same result as ``np.argsort(-values, kind="stable")[:k]`` but O(n) for k << n: the
    boundary value is found with ``argpartition`` and its ties are resolved by index.
    """
    n = values.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k * 8 >= n:
        return np.argsort(-values, kind="stable")[:k].astype(np.int64)
    part = np.argpartition(-values, k - 1)[:k]
    thr = values[part].min()
    above = np.flatnonzero(values > thr)
    ties = np.flatnonzero(values == thr)[: k - above.shape[0]]
    sel = np.concatenate([above, ties])
    # lexsort: last key is primary -> by -value, then by index
    return sel[np.lexsort((sel, -values[sel]))].astype(np.int64)


def deterministic_ranking(index: np.ndarray, k: int, exploit: np.ndarray | None = None) -> Ranking:
    """Greedy ordering by ``index`` (propensity 1); ``explored`` compares it with the
    greedy ordering by ``exploit`` (the policy's exploitation estimate)."""
    order = greedy_topk(index, k)
    if exploit is None:
        explored = np.zeros(order.shape[0], dtype=bool)
    else:
        explored = order != greedy_topk(exploit, k)
    return Ranking(order=order, propensities=np.ones(order.shape[0]), explored=explored)


# ----------------------------------------------------------------- Plackett-Luce


def plackett_luce(
    logits: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``k`` items without replacement, P(i | remaining) ∝ exp(logit_i).

    Sampling is the Gumbel-top-k trick (exactly Plackett–Luce); the propensity of
    position j is exp(l_j - logsumexp(remaining)), where the normaliser is computed
    without cancellation as logaddexp(logsumexp(unchosen), reverse cumulative
    logsumexp of the chosen logits from j onwards).
    """
    logits = np.asarray(logits, dtype=np.float64)
    logits = np.maximum(logits - logits.max(), LOGIT_FLOOR)
    n = logits.shape[0]
    k = min(k, n)
    keys = logits + rng.gumbel(size=n)
    order = greedy_topk(keys, k)
    chosen = logits[order]
    mask = np.ones(n, dtype=bool)
    mask[order] = False
    rest = logits[mask]
    if rest.size:
        m = rest.max()
        log_rest = m + np.log(np.exp(rest - m).sum())
    else:
        log_rest = -np.inf
    tail = np.logaddexp.accumulate(chosen[::-1])[::-1]  # logsumexp(chosen[j:])
    log_z = np.logaddexp(tail, log_rest)
    props = np.exp(chosen - log_z)
    return order, np.clip(props, MIN_PROPENSITY, 1.0)


# ------------------------------------------------------ posterior-sample slates


def sample_pool(optimistic: np.ndarray, pool_size: int) -> np.ndarray:
    """The candidates a sampling policy draws posterior samples for: all of them when
    n <= pool_size, else the ``pool_size`` with the highest optimistic index
    (deterministic given the context). Candidates outside the pool keep the uniform
    share of the propensity mixture, so the logged propensity stays exact."""
    n = optimistic.shape[0]
    if n <= pool_size:
        return np.arange(n, dtype=np.int64)
    return np.sort(greedy_topk(optimistic, pool_size))


def slate_from_samples(
    samples: np.ndarray,
    pool: np.ndarray,
    n: int,
    k: int,
    gamma: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a slate from M posterior draws with exactly known step probabilities.

    ``samples``: (M, P) sampled values of the candidates ``pool`` (P indices into n).
    At position j, each draw votes for its best remaining pool candidate; the step
    distribution is ``p(i) = (1-gamma) * votes_i / M + gamma / remaining`` over the
    remaining candidates, and the slate item is drawn from exactly that mixture (pick
    a draw uniformly and take its vote, or with probability gamma a uniform remaining
    candidate). When no pool candidate remains, the rest of the slate is a uniform
    random order of the remaining candidates (propensity 1/remaining). The returned
    propensity is p(chosen) — the probability of the step actually taken, given the
    draws (which are independent of rewards, so IPS on it is unbiased).
    """
    m_draws, p = samples.shape
    k = min(k, n)
    length = min(k, p)
    # per-draw top-`length` pool positions, best first (vectorized over draws)
    if length < p:
        top = np.argpartition(-samples, length - 1, axis=1)[:, :length]
    else:
        top = np.broadcast_to(np.arange(p), (m_draws, p)).copy()
    rows = np.arange(m_draws)[:, None]
    top = np.take_along_axis(top, np.argsort(-samples[rows, top], axis=1, kind="stable"), axis=1)
    top_items = pool[top]  # (M, length) candidate indices
    # Each draw's vote is its first untaken entry; ptr only moves forward, so the walk
    # costs O(M·length) over the whole slate.
    draw_idx = np.arange(m_draws)
    ptr = np.zeros(m_draws, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    props = np.empty(k, dtype=np.float64)
    coins = rng.random(k)
    picks = rng.random(k)
    for j in range(k):
        remaining = n - j
        if j >= p:  # pool exhausted: the rest of the slate is a uniform random order
            rest = np.flatnonzero(~taken)
            order[j:] = rest[rng.permutation(rest.shape[0])[: k - j]]
            props[j:] = 1.0 / (n - np.arange(j, k))
            break
        votes = top_items[draw_idx, ptr]
        if coins[j] < gamma:
            chosen = int(np.flatnonzero(~taken)[int(picks[j] * remaining)])
        else:
            chosen = int(votes[int(picks[j] * m_draws)])
        share = float(np.count_nonzero(votes == chosen)) / m_draws
        prop = (1.0 - gamma) * share + gamma / remaining
        order[j] = chosen
        props[j] = min(max(prop, MIN_PROPENSITY), 1.0)
        taken[chosen] = True
        if j + 1 < length:  # another vote is needed: move stale pointers forward
            stale = np.flatnonzero(taken[top_items[draw_idx, ptr]])
            while stale.size:
                ptr[stale] += 1
                stale = stale[taken[top_items[stale, ptr[stale]]]]
    return order, props
