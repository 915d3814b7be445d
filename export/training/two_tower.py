"""The two-tower encoder: training pairs from interactions, pooling, encoding and training.

Both towers are one shared BERT encoder with masked mean pooling and L2 normalisation, which is
exactly what the exported ``encoder.onnx`` computes, so what is trained here is what is served.
The user text is built with :func:`explorank.export.data.user_context_text` (the engine builds
it the same way at request time).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorank.export.data import Dataset, user_context_text


@dataclass
class Split:
    """Training pairs (user text -> item row) and the held-out evaluation users."""

    pair_texts: list[str] = field(default_factory=list)  # user text of each training pair
    pair_items: list[int] = field(default_factory=list)  # target item row of each pair
    eval_texts: list[str] = field(default_factory=list)
    eval_targets: list[int] = field(default_factory=list)
    eval_exclude: list[set[int]] = field(default_factory=list)
    n_users: int = 0


def split_dataset(ds: Dataset, *, history_len: int, positive_threshold: float) -> Split:
    """Every positive with at least one earlier positive becomes a pair (the ``history_len`` most
    recent earlier positives, most recent first -> the item); each user's last positive is held
    out for evaluation (never a training target), with the user's other items excluded from
    the ranking. Ties in time keep file order."""
    index = ds.item_index()
    by_user: dict[str, list[tuple[int, int, int, float]]] = {}
    for order, x in enumerate(ds.interactions):
        by_user.setdefault(x.user_id, []).append((x.timestamp, order, index[x.item_id], x.value))
    texts = [it.text for it in ds.items]
    sp = Split(n_users=len(by_user))

    def ctx(history: list[int]) -> str:
        return user_context_text([texts[i] for i in reversed(history[-history_len:])])

    for user in sorted(by_user):
        rows = sorted(by_user[user])
        pos = [item for _, _, item, value in rows if value > positive_threshold]
        held = pos[-1] if len(pos) >= 2 else None
        train = pos[:-1] if held is not None else pos
        for j in range(1, len(train)):
            sp.pair_texts.append(ctx(train[:j]))
            sp.pair_items.append(train[j])
        if held is not None:
            sp.eval_texts.append(ctx(train))
            sp.eval_targets.append(held)
            sp.eval_exclude.append({item for _, _, item, _ in rows} - {held})
    return sp


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mean_pool(model: Any, batch: Any, normalize: bool = True) -> Any:
    """Masked mean pooling + L2 normalisation: the embedding the exported graph computes."""
    import torch

    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def encode_texts(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    max_seq_length: int,
    device: str,
    batch_size: int = 64,
    desc: str = "encode",
    progress: bool = True,
) -> np.ndarray:
    """(n, d) float32 L2-normalised embeddings; texts are length-sorted to avoid padding work."""
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    model.eval()
    with torch.no_grad():
        for s in tqdm(
            range(0, len(texts), batch_size),
            desc=desc,
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ):
            idx = order[s : s + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_seq_length,
                return_tensors="pt",
            ).to(device)
            emb = mean_pool(model, batch).float().cpu().numpy()
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def load_encoder(base_model: Path, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face checkpoint, eager attention (the ONNX export needs
    it), no pooler."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report only lists the (unused) pooler weights
    try:  # the pooler is unused (mean pooling); BERT-style models can skip it
        model = AutoModel.from_pretrained(
            str(base_model), attn_implementation="eager", add_pooling_layer=False
        )
    except TypeError:
        model = AutoModel.from_pretrained(str(base_model), attn_implementation="eager")
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device), tokenizer


def train_encoder(
    model: Any,
    tokenizer: Any,
    sp: Split,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    max_seq_length: int,
    temperature: float,
    seed: int,
    max_steps: int | None,
    device: str,
    progress: bool,
    texts: list[str],
) -> tuple[list[float], list[float]]:
    """Symmetric in-batch-negatives InfoNCE; returns (mean loss per epoch, loss per step)."""
    import torch
    from tqdm.auto import tqdm

    n = len(sp.pair_items)
    per_epoch = n // batch_size if n // batch_size >= 1 else 1
    total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    warmup = max(1, total // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    rng = np.random.default_rng(seed)
    items = np.asarray(sp.pair_items)
    epoch_losses: list[float] = []
    step_losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc="fine-tune", file=sys.stderr, disable=not progress)
    for _ in range(epochs):
        perm = rng.permutation(n)
        losses = []
        for b in range(per_epoch):
            if len(step_losses) >= total:
                break
            idx = perm[b * batch_size : (b + 1) * batch_size]
            tok = {
                "padding": True,
                "truncation": True,
                "max_length": max_seq_length,
                "return_tensors": "pt",
            }
            u = mean_pool(model, tokenizer([sp.pair_texts[i] for i in idx], **tok).to(device))
            v = mean_pool(model, tokenizer([texts[items[i]] for i in idx], **tok).to(device))
            logits = (u @ v.T) / temperature
            # The same item twice in a batch is not a negative for either user.
            tgt = torch.as_tensor(items[idx], device=device)
            dup = (tgt[:, None] == tgt[None, :]) & ~torch.eye(
                len(idx), dtype=torch.bool, device=device
            )
            logits = logits.masked_fill(dup, float("-inf"))
            labels = torch.arange(len(idx), device=device)
            loss = (
                torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)
            ) / 2
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            value = loss.item()
            step_losses.append(value)
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
        if losses:
            epoch_losses.append(float(np.mean(losses)))
    bar.close()
    model.eval()
    return epoch_losses, step_losses
