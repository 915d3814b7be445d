"""The ``bert-ft`` representation: the two-tower encoder fine-tuned on a replicate's
training part, exported, and its catalog embeddings (``explorank evaluate
--finetune-steps N``).

For each replicate seed: the training part of its world (:meth:`World.train_dataset`:
never an evaluation-part interaction, never an interaction with a cold-start item) is
turned into two-tower pairs exactly as ``explorank finetune`` does
(:func:`explorank.export.training.two_tower.split_dataset`), the base encoder (the
bundle's source checkpoint, else the packaged all-MiniLM-L6-v2) is trained for ``N``
steps (:func:`~explorank.export.training.two_tower.train_encoder`), and the checkpoint
is exported with :func:`explorank.export.pipeline.export_bundle` (fp32, the world's items
as the catalog). The study then reads that bundle's catalog embeddings, encoded by the
exported ONNX encoder: what is evaluated is what would serve. The bundle is cached under
``<cache dir>/eval-finetuned/<key>`` (the key covers the training data, N, the seed and
the training settings), so a second run with the same split reuses it.

The equivalent two commands, for one split: ``explorank finetune --data ... --max-steps N``
and ``explorank export --model CKPT --catalog ...``; this module only makes sure the
data they see is the study's training part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError

log = logging.getLogger("explorank.benchmarks")

#: training settings (the ``explorank finetune`` defaults)
BATCH_SIZE = 32
LR = 2e-5
HISTORY_LEN = 5
MAX_SEQ_LENGTH = 128
TEMPERATURE = 0.05
VERSION = "ft-v1"


def training_pairs(dataset: Any) -> Any:
    """The two-tower pairs of ``dataset`` (a :class:`~explorank.export.training.two_tower.Split`)."""
    from explorank.export.training.two_tower import split_dataset

    return split_dataset(dataset, history_len=HISTORY_LEN, positive_threshold=0.0)


def _key(dataset: Any, steps: int, seed: int, base: Path) -> str:
    h = hashlib.sha256(f"{VERSION}|{steps}|{seed}|{BATCH_SIZE}|{LR}|{base.name}".encode())
    for it in dataset.items:
        h.update(f"{it.id}\0{it.text}\n".encode())
    for x in dataset.interactions:
        h.update(f"{x.user_id}\0{x.item_id}\0{x.value!r}\0{x.timestamp}\n".encode())
    return h.hexdigest()[:20]


def base_model(bundle: Any | None) -> Path:
    """The checkpoint to fine-tune: the bundle's source model when it still exists, else
    the packaged all-MiniLM-L6-v2."""
    from explorank.export.training.finetune import default_base_model

    src = (bundle.manifest.get("source") or {}).get("model_dir") if bundle is not None else None
    if src and (Path(src) / "config.json").is_file():
        return Path(src)
    return default_base_model()


def train_checkpoint(dataset: Any, out: Path, steps: int, *, seed: int, base: Path,
                     progress: bool) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``base`` on ``dataset``'s pairs for ``steps`` steps into ``out`` (HF
    checkpoint); returns a small report."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from explorank.export.training.two_tower import load_encoder, seed_everything, train_encoder

    sp = training_pairs(dataset)
    if not sp.pair_items:
        raise InvalidArgumentError(
            "--finetune-steps", "the training part has no pairs (users with 2+ positives)"
        )
    seed_everything(seed)
    model, tokenizer = load_encoder(base, "cpu")
    per_epoch = max(1, len(sp.pair_items) // BATCH_SIZE)  # as train_encoder counts them
    epochs = max(1, math.ceil(steps / per_epoch))
    _, losses = train_encoder(
        model, tokenizer, sp, epochs=epochs, batch_size=BATCH_SIZE, lr=LR,
        max_seq_length=MAX_SEQ_LENGTH, temperature=TEMPERATURE, seed=seed, max_steps=steps,
        device="cpu", progress=progress, texts=[it.text for it in dataset.items],
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"pairs": len(sp.pair_items), "steps": len(losses),
            "first_loss": losses[0] if losses else None,
            "last_loss": float(np.mean(losses[-10:])) if losses else None}  # fmt: skip


def finetuned(world: Any, steps: int, *, seed: int, progress: bool = True,
              bundle: Any | None = None) -> tuple[np.ndarray, Any]:  # fmt: skip
    """(item embeddings in the world's item order, the exported bundle) of the encoder
    fine-tuned on ``world``'s training part (module docstring)."""
    from explorank.engine.bundle import load_bundle
    from explorank.export.data import write_catalog_jsonl
    from explorank.export.pipeline import export_bundle
    from explorank.paths import default_cache_dir

    dataset = world.train_dataset()
    base = base_model(bundle)
    root = default_cache_dir() / "eval-finetuned" / _key(dataset, steps, seed, base)
    out = root / "bundle"
    if not (out / "manifest.json").is_file():
        log.info("fine-tuning %s for %d steps on %d training interactions (seed %d) ...",
                 base.name, steps, len(dataset.interactions), seed)  # fmt: skip
        report = train_checkpoint(dataset, root / "model", steps, seed=seed, base=base,
                                  progress=progress)  # fmt: skip
        catalog = write_catalog_jsonl(dataset.items, root / "catalog.jsonl")
        export_bundle(out, model_dir=root / "model", catalog=catalog, precisions=("fp32",),
                      tensorrt="off", progress=progress, validation_size=128,
                      torch_parity_size=32)  # fmt: skip
        (root / "finetune.json").write_text(json.dumps(report | {"seed": seed}, indent=1))
    ft = load_bundle(out)
    if [it.id for it in ft.items] != list(world.item_ids):
        raise InvalidArgumentError("--finetune-steps", f"cached bundle {out} has other items")
    emb = np.asarray(ft.item_embeddings, dtype=np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12), ft
