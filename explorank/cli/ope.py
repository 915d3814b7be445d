"""``explorank ope``: off-policy evaluation of a registered policy on an exported event log.

The estimators, the target's first-position probabilities and the reward model are in
:mod:`explorank.benchmarks.evaluation.log_ope`; this module parses the command line and prints.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log", type=Path, required=True, help="event log JSONL (explorank events export)"
    )
    p.add_argument("--policy", required=True, help="target policy name")
    p.add_argument("--params", default="{}", help="target policy parameters (JSON object)")
    p.add_argument(
        "--scorer", help="rescore candidates with this scorer (default: the logged scores)"
    )
    p.add_argument(
        "--bundle",
        type=Path,
        help="bundle whose catalog gives candidate embeddings (default: the default bundle, if built)",
    )
    p.add_argument(
        "--min-ess", type=float, default=100.0, help="warn below this effective sample size"
    )
    p.add_argument("--samples", type=int, default=200, help="max target rankings per event")
    p.add_argument("--tau", type=float, default=10.0, help="SWITCH-DR weight threshold")
    p.add_argument("--max-weight", type=float, default=10.0, help="clipped IPS weight cap")
    p.add_argument("--shrinkage", type=float, default=10.0, help="reward model pseudo-observations")
    p.add_argument("--stats", choices=("sequential", "empty"), default="sequential")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from explorank.benchmarks.evaluation.log_ope import evaluate_log

    result = evaluate_log(args)
    if result["missing_embeddings"]:
        print(
            f"WARNING: {result['missing_embeddings']} candidate embeddings were not in the bundle or the "
            "log and are zeros; pass --bundle DIR for policies that use embeddings",
            file=sys.stderr,
        )
    if args.json:
        print(
            json.dumps(
                result,
                indent=1,
                default=lambda o: None if isinstance(o, float) and not math.isfinite(o) else o,
            )
        )
    else:
        print(
            f"target policy {result['policy']} on {result['events']} events "
            f"(logged mean first-position reward {result['logged_mean_reward']:.4f})"
        )
        print(f"{'estimator':<12}{'value':>10}{'stderr':>10}{'95% CI':>22}{'ESS':>10}")
        for e in result["estimates"]:
            ci = f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]"
            print(
                f"{e['name']:<12}{e['value']:>10.4f}{e['stderr']:>10.4f}{ci:>22}{e['ess']:>10.1f}"
            )
        if result["unresolved_events"]:
            print(
                f"note: {result['unresolved_events']} events left {result['mean_unresolved_mass']:.3f} mean "
                f"probability mass unresolved after --samples {args.samples} (counted as 0)"
            )
    ess = next(e["ess"] for e in result["estimates"] if e["name"] == "ips")
    if ess < args.min_ess:
        print(
            f"WARNING: effective sample size {ess:.1f} < --min-ess {args.min_ess:g}: too few logged "
            "decisions resemble the target policy's; do not trust these estimates",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0
