"""``explorank finetune``: two-tower fine-tuning of a BERT encoder plus the mf/neural heads.

Examples::

    explorank finetune --data movielens:~/data/ml-latest-small --out ./ft --max-steps 500
    explorank finetune --catalog items.jsonl --interactions events.csv --out ./ft --epochs 2
    explorank export --model ./ft --out ./bundle      # then serve the result
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from explorank.errors import InvalidArgumentError
from explorank.export.data import Dataset

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("data (either --data, or --catalog with --interactions)")
    src.add_argument("--data", metavar="SPEC",
                     help="movielens:DIR (ml-latest-small, ml-100k or ml-1m layout) or a directory "
                          "holding catalog.{jsonl,csv} + interactions.{jsonl,csv}")  # fmt: skip
    src.add_argument("--catalog", type=Path, metavar="FILE", help="catalog CSV/JSONL (id, text)")
    src.add_argument("--interactions", type=Path, metavar="FILE",
                     help="interactions CSV/JSONL (user_id, item_id, value, timestamp)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="checkpoint output directory"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into --out even if it is not empty"
    )
    parser.add_argument("--base-model", type=Path, metavar="DIR",
                        help="Hugging Face BERT-family checkpoint (default: the packaged all-MiniLM-L6-v2)")  # fmt: skip
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="pairs per step; the other pairs are the negatives",
    )
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument(
        "--max-steps", type=int, default=None, help="stop the encoder training after N steps"
    )
    t.add_argument("--max-seq-length", type=int, default=128)
    t.add_argument(
        "--history-len", type=int, default=5, help="liked items that make up the user text"
    )
    t.add_argument(
        "--positive-threshold", type=float, default=0.0, help="values above this are positives"
    )
    t.add_argument("--mf-dim", type=int, default=64)
    t.add_argument("--neural-hidden", type=int, default=128)
    t.add_argument("--head-epochs", type=int, default=3)
    t.add_argument("--head-examples", dest="head_examples", type=int, default=10_000,
                   help="training pairs (user texts to embed) used to fit the heads")  # fmt: skip
    t.add_argument("--eval-users", type=int, default=500, help="held-out users for recall@10")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_file(flag: str, path: Path | None) -> Path:
    if path is None:
        raise InvalidArgumentError(
            flag, "missing; pass --data SPEC, or both --catalog FILE and --interactions FILE"
        )
    p = path.expanduser()
    if not p.is_file():
        raise InvalidArgumentError(flag, f"{p} does not exist or is not a file; fix the path")
    return p


def _load(args: argparse.Namespace) -> Dataset:
    from explorank.export.data import load_dataset, load_plain

    if args.data and (args.catalog or args.interactions):
        raise InvalidArgumentError(
            "--data", "give either --data or --catalog/--interactions, not both"
        )
    if args.data:
        spec = str(args.data)
        path = Path(spec.removeprefix("movielens:")).expanduser()
        if not path.is_dir():
            raise InvalidArgumentError(
                "--data", f"{path} is not a directory; use movielens:DIR or a dataset directory"
            )
        return load_dataset(spec)
    return load_plain(
        _check_file("--catalog", args.catalog), _check_file("--interactions", args.interactions)
    )


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.overwrite)):
        raise InvalidArgumentError(
            "--out",
            f"{out} exists and is not an empty directory; choose a new one or pass --overwrite",
        )
    base = args.base_model.expanduser() if args.base_model else None
    if base is not None and not (base / "config.json").is_file():
        raise InvalidArgumentError(
            "--base-model", f"{base} is not a Hugging Face checkpoint directory (no config.json)"
        )
    dataset = _load(args)
    log.info(
        "loaded %s: %d items, %d interactions",
        dataset.name,
        len(dataset.items),
        len(dataset.interactions),
    )

    from explorank.export.training.finetune import finetune, result_summary

    result = finetune(
        dataset, out, base_model=base, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        max_seq_length=args.max_seq_length, history_len=args.history_len,
        positive_threshold=args.positive_threshold, mf_dim=args.mf_dim, neural_hidden=args.neural_hidden,
        head_epochs=args.head_epochs, seed=args.seed, max_steps=args.max_steps, device=args.device,
        progress=not args.no_progress, eval_users=args.eval_users, head_examples=args.head_examples,
    )  # fmt: skip
    summary = result_summary(result)
    print(
        json.dumps({k: summary[k] for k in ("out_dir", "epoch_losses", "recall_at_10")}, indent=2)
    )
    print(f"next: explorank export --model {out} --out BUNDLE_DIR")
    return 0
