"""``explorank evaluate``: simulate (and replay) exploration policies and compare them.

Runs every policy x representation (x scorer for ``bert``) through the same simulated users,
plus the ground-truth oracle as a zero-regret reference, and writes report.json / report.md /
PNG plots to ``--out``. The study itself: :mod:`explorank.benchmarks.evaluation.study`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_POLICIES = (
    "random,greedy,epsilon_greedy,softmax,ucb1,thompson,linucb,lin_ts,linucb_hybrid,lin_ts_hybrid"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle", type=Path, help="bundle for BERT embeddings (default: the default bundle)"
    )
    p.add_argument(
        "--dataset",
        default="synthetic",
        help="synthetic | movielens:DIR | files:CATALOG,INTERACTIONS | impressions:DIR "
        "(default synthetic; see docs/evaluation.md)",
    )
    p.add_argument(
        "--policies", default=DEFAULT_POLICIES, help=f"comma list (default {DEFAULT_POLICIES})"
    )
    p.add_argument(
        "--params",
        default="{}",
        help='JSON: policy name -> params, e.g. {"epsilon_greedy": {"epsilon": 0.2}}',
    )
    p.add_argument(
        "--scorers",
        default="dot",
        help="comma list of scorers for the bert representation "
        "(the id representation always uses dot; default dot)",
    )
    p.add_argument(
        "--representations",
        default="bert,id",
        help="comma list of bert, bert-ft (needs --finetune-steps), id (default bert,id)",
    )
    p.add_argument(
        "--user-representation",
        choices=("history", "text", "both"),
        default="history",
        help="BERT user vectors: history (recency-weighted mean of liked items' embeddings, "
        "no encoder), text (the encoder on the liked items' texts; slow), both (default history)",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="fine-tune the two-tower encoder this many steps on each replicate's training "
        "part, export it and add the bert-ft representation (default 0: off)",
    )
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="replicate seeds (--seed, --seed+1, ...): the report gives means and 95%% "
        "intervals over them (default 1)",
    )
    p.add_argument(
        "--jobs", type=int, default=0, help="parallel processes (default: the CPUs available)"
    )
    p.add_argument("--candidates", type=int, default=20, help="candidates per step (K)")
    p.add_argument("--top-k", type=int, default=5, help="items shown per step")
    p.add_argument(
        "--cold-items",
        type=float,
        default=0.2,
        help="fraction of each step's candidates that are cold-start items",
    )
    p.add_argument("--users", type=int, default=1000, help="simulated users (synthetic)")
    p.add_argument(
        "--text-signal",
        type=float,
        default=0.7,
        help="synthetic: share of item-factor variance the text explains",
    )
    p.add_argument(
        "--position-bias", action="store_true", help="examination probability 1/log2(pos+2)"
    )
    p.add_argument(
        "--update-every",
        type=int,
        default=1,
        help="apply reward deltas every N steps (delayed feedback)",
    )
    p.add_argument(
        "--no-click-reward",
        type=float,
        default=-1.0,
        help="reward sent for a shown, unclicked item (in [-1, 1]; default -1)",
    )
    p.add_argument(
        "--replay-events",
        type=int,
        default=0,
        help="evaluation-log events to replay per run on the first seed (default 0: no replay)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("explorank-evaluation"))
    p.add_argument(
        "--quick", action="store_true", help="1000 steps, 300 users, 2000 replay events at most"
    )
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from explorank.benchmarks.evaluation.study import run_study

    return run_study(args)
