"""Scoring heads trained on frozen two-tower embeddings, and the recall@k used to judge them.

Why heads at all: the fine-tuned encoder already ranks by cosine, but serving wants cheap,
swappable scorers on top of the same embeddings. ``mf`` learns two projections so that
``score = (u @ Pu) . (v @ Pv)`` (a low-rank bilinear form that can re-weight the embedding
dimensions that matter for this data set; the item side is precomputable, so it costs one small
matmul per request). ``neural`` is an MLP over ``[u, v, u*v]`` that can model interactions a dot
product cannot; it is trained as a binary classifier against sampled negatives.

The saved arrays follow the layout the export reads (see :mod:`explorank.export.training.finetune`).
Everything here is plain torch + numpy on embeddings that are already computed, so it is fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np


def _batches(n: int, batch_size: int, gen: Any) -> list[Any]:
    import torch

    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False)


def _principal_basis(x: np.ndarray, dim: int) -> np.ndarray:
    """(d, dim) float32: orthonormal top principal directions of ``x`` (uncentred, so the mean
    direction that cosine similarity also uses is kept); zero columns when ``dim > d``."""
    d = x.shape[1]
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    basis = np.zeros((d, dim), dtype=np.float32)
    k = min(dim, vt.shape[0])
    basis[:, :k] = vt[:k].T
    return basis


def head_batch_size(n_pairs: int) -> int:
    """Large batches on large data, but at least ~50 steps per epoch on small data sets."""
    return int(min(256, max(16, -(-n_pairs // 50))))


def train_mf_head(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    pair_items: np.ndarray,
    *,
    dim: int,
    epochs: int,
    temperature: float,
    seed: int,
    batch_size: int | None = None,
    lr: float = 1e-3,
    num_negatives: int = 256,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Train ``Pu``, ``Pv`` (d, dim) with a sampled softmax: each user's own item against the
    other in-batch items plus ``num_negatives`` uniformly sampled catalog items.

    ``user_emb[i]`` is the user embedding of training pair i and ``pair_items[i]`` its item row.
    Both projections start as the same matrix: the top-``dim`` principal directions of the
    embeddings scaled by ``1 / sqrt(temperature)``, so the initial score is ``cos(u, v) /
    temperature`` restricted to the subspace that carries most of the variance (exactly that when
    ``dim >= d``): training starts from the encoder's own ranking instead of from noise.
    Returns ``(Pu, Pv, loss per epoch)``.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    init = torch.from_numpy(_principal_basis(np.concatenate([user_emb, item_emb]), dim)) / np.sqrt(
        temperature
    )
    pu, pv = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt = torch.optim.Adam([pu, pv], lr=lr)
    u_all, v_all = torch.from_numpy(user_emb), torch.from_numpy(item_emb)
    items_t = torch.from_numpy(pair_items.astype(np.int64))
    n_items, losses = v_all.shape[0], []
    batch_size = batch_size or head_batch_size(len(items_t))
    n_neg = min(num_negatives, n_items)
    with _bar(epochs * -(-len(items_t) // batch_size), "mf head", progress) as bar:
        for _ in range(epochs):
            total, count = 0.0, 0
            for b in _batches(len(items_t), batch_size, gen):
                pos = items_t[b]
                neg = torch.randint(0, n_items, (n_neg,), generator=gen)
                cand = torch.cat([pos, neg])
                logits = (u_all[b] @ pu) @ (v_all[cand] @ pv).T  # (B, B + n_neg)
                # A candidate equal to the row's positive (a duplicate in the batch, or a sampled
                # negative that happens to be it) is not a negative: mask all but the diagonal.
                same = pos[:, None] == cand[None, :]
                same[torch.arange(len(pos)), torch.arange(len(pos))] = False
                logits = logits.masked_fill(same, float("-inf"))
                loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(pos)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(pos)
                count += len(pos)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            losses.append(total / max(count, 1))
    return pu.detach().numpy().astype(np.float32), pv.detach().numpy().astype(np.float32), losses


def _cosine_init(net: Any, u: Any, v: Any, pair_items: Any, temperature: float, gen: Any) -> None:
    """Start the MLP from the encoder's ranking: hidden unit 0 computes
    ``relu((cos(u, v) + 1) / temperature)`` (always active, since cos >= -1) and feeds the logit
    with weight 1; the output bias puts the decision boundary halfway between the mean cosine
    of positive pairs and of random pairs. A randomly initialised MLP needs many epochs just to
    rediscover the dot product; this one only has to learn the corrections."""
    import torch

    d = u.shape[1]
    s = 1.0 / temperature
    with torch.no_grad():
        pos = (u * v[pair_items]).sum(-1).mean()
        rand = (
            (u * v[torch.randint(0, v.shape[0], (len(pair_items),), generator=gen)]).sum(-1).mean()
        )
        lin1, lin2 = net[0], net[2]
        lin1.weight[0].zero_()
        lin1.weight[0, 2 * d :] = s
        lin1.bias[0] = s
        lin2.weight[0, 0] = 1.0
        lin2.bias[0] = -s * (1.0 + float(pos + rand) / 2)


def train_neural_head(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    pair_items: np.ndarray,
    *,
    hidden: int,
    epochs: int,
    seed: int,
    temperature: float = 0.05,
    batch_size: int | None = None,
    lr: float = 1e-3,
    neg_ratio: int = 4,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Train ``logit = relu([u, v, u*v] @ w1 + b1) @ w2 + b2`` with binary cross-entropy:
    each training pair is a positive, ``neg_ratio`` uniformly sampled items per pair are
    negatives (a sample equal to the positive is labelled positive). The MLP starts from the
    cosine ranking (:func:`_cosine_init`). Returns the weights as
    float32 arrays ``w1`` (3d, h), ``b1`` (h,), ``w2`` (h,), ``b2`` () and the loss per epoch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    d = user_emb.shape[1]
    torch.manual_seed(seed)  # nn.Linear init draws from the global generator
    net = torch.nn.Sequential(
        torch.nn.Linear(3 * d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
    )
    u_all, v_all = torch.from_numpy(user_emb), torch.from_numpy(item_emb)
    items_t = torch.from_numpy(pair_items.astype(np.int64))
    n_items, losses = v_all.shape[0], []
    batch_size = batch_size or head_batch_size(len(items_t))
    _cosine_init(net, u_all, v_all, items_t, temperature, gen)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with _bar(epochs * -(-len(items_t) // batch_size), "neural head", progress) as bar:
        for _ in range(epochs):
            total, count = 0.0, 0
            for b in _batches(len(items_t), batch_size, gen):
                pos = items_t[b]
                neg = torch.randint(0, n_items, (len(b), neg_ratio), generator=gen)
                cand = torch.cat([pos[:, None], neg], dim=1)  # (B, 1 + r)
                labels = (cand == pos[:, None]).float()
                u = u_all[b][:, None, :].expand(-1, cand.shape[1], -1)
                v = v_all[cand]
                logits = net(torch.cat([u, v, u * v], dim=-1)).squeeze(-1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
                count += len(b)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            losses.append(total / max(count, 1))
    lin1, lin2 = net[0], net[2]
    assert isinstance(lin1, torch.nn.Linear) and isinstance(lin2, torch.nn.Linear)
    weights = {
        "w1": lin1.weight.detach().numpy().T.astype(np.float32).copy(),
        "b1": lin1.bias.detach().numpy().astype(np.float32).copy(),
        "w2": lin2.weight.detach().numpy()[0].astype(np.float32).copy(),
        "b2": np.asarray(lin2.bias.detach().numpy()[0], dtype=np.float32),
    }
    return weights, losses


def mf_scores(
    users: np.ndarray, items: np.ndarray, user_proj: np.ndarray, item_proj: np.ndarray
) -> np.ndarray:
    """(B, n) MF scores ``(u @ Pu) . (v @ Pv)``."""
    return (users @ user_proj) @ (items @ item_proj).T


def neural_scores(
    users: np.ndarray, items: np.ndarray, w: dict[str, np.ndarray], chunk: int = 8
) -> np.ndarray:
    """(B, n) neural-head logits against every item, without materialising (B, n, 3d):
    ``[u, v, u*v] @ w1 = u @ W_u + v @ W_v + v @ (u[:, None] * W_uv)``."""
    d = users.shape[1]
    w1u, w1v, w1uv = w["w1"][:d], w["w1"][d : 2 * d], w["w1"][2 * d :]
    item_part = items @ w1v  # (n, h)
    out = np.empty((users.shape[0], items.shape[0]), dtype=np.float32)
    for s in range(0, users.shape[0], chunk):
        u = users[s : s + chunk]
        inter = np.einsum("nd,bdh->bnh", items, u[:, :, None] * w1uv[None], optimize=True)
        hidden = np.maximum(inter + item_part[None] + (u @ w1u + w["b1"])[:, None, :], 0.0)
        out[s : s + chunk] = hidden @ w["w2"] + w["b2"]
    return out


def recall_at_k(
    scores: np.ndarray, targets: Sequence[int], exclude: Sequence[set[int]], k: int = 10
) -> float:
    """Fraction of rows whose target item is in the top ``k`` after removing ``exclude[row]``
    (items the user already interacted with, which a recommender would not show again)."""
    if len(targets) == 0:
        return float("nan")
    s = scores.astype(np.float64, copy=True)
    hits = 0
    for row, (t, ex) in enumerate(zip(targets, exclude, strict=True)):
        if ex:
            s[row, list(ex - {t})] = -np.inf
        # Rank = number of items scoring strictly higher; ties count against the target.
        rank = int(np.sum(s[row] > s[row, t])) + int(np.sum(s[row] == s[row, t])) - 1
        hits += rank < k
    return hits / len(targets)
