"""The exploration study behind ``explorank evaluate``: simulate (and replay) exploration
policies and compare them (the command line is :mod:`explorank.cli.evaluate`).

Runs every policy x representation (x scorer for the BERT representations) through the
same simulated users (see :mod:`explorank.benchmarks.evaluation.simulator`), plus the
ground-truth oracle as a zero-regret reference, under ``--seeds`` replicate seeds
(:mod:`.runner`, in parallel processes), and writes report.json / report.md / PNG plots
with the mean and 95% interval of every metric and lift (:mod:`.aggregate`) to ``--out``.

Representations: ``bert`` (the bundle's encoder), ``bert-ft`` (the two-tower encoder
fine-tuned on each replicate's training part, ``--finetune-steps``:
:mod:`.study_finetune`) and ``id`` (no text).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from explorank.benchmarks.evaluation import report as eval_report
from explorank.benchmarks.evaluation.aggregate import lifts, summarize
from explorank.benchmarks.evaluation.datasets import open_source
from explorank.benchmarks.evaluation.replay import BIAS_CAVEAT, replay
from explorank.benchmarks.evaluation.representations import (
    bert_item_embeddings,
    load_bundle_for_eval,
)
from explorank.benchmarks.evaluation.runner import (
    Replicate,
    Study,
    default_jobs,
    representation,
    run_all,
)
from explorank.benchmarks.evaluation.simulator import Steps, draw_steps, make_policy, make_scorer
from explorank.errors import InvalidArgumentError
from explorank.plugins.api import ScorerContext

log = logging.getLogger("explorank.benchmarks")

REPRESENTATIONS = ("bert", "bert-ft", "id")


def _split(value: str, field: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidArgumentError(field, "must name at least one entry (comma-separated)")
    return items


def cached_bert(bundle: Any, world_ids: list[str], texts: list[str]) -> np.ndarray:
    """BERT embeddings for the world's items, cached on disk per (model, texts)."""
    from explorank.paths import default_cache_dir

    key = hashlib.sha256(("\n".join(world_ids) + "\0" + "\n".join(texts)).encode()).hexdigest()[:16]
    path = default_cache_dir() / "eval-embeddings" / f"{bundle.model_version}-{key}.npy"
    if path.is_file():
        emb = np.load(path)
        if emb.shape == (len(texts), bundle.embedding_dim):
            return emb
    emb = bert_item_embeddings(bundle, world_ids, texts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, emb)
    except OSError:
        pass
    return emb


def _reps(args: argparse.Namespace) -> list[str]:
    reps = _split(args.representations, "--representations")
    for r in reps:
        if r not in REPRESENTATIONS:
            raise InvalidArgumentError(
                "--representations",
                f"unknown representation {r!r}; use {', '.join(REPRESENTATIONS)}",
            )
    if args.finetune_steps > 0 and "bert-ft" not in reps:
        reps.insert(reps.index("bert") + 1 if "bert" in reps else 0, "bert-ft")
    if "bert-ft" in reps and args.finetune_steps < 1:
        raise InvalidArgumentError("--representations", "bert-ft needs --finetune-steps N > 0")
    return reps


def _plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(policy, scorer, representation) runs, oracle first."""
    reps = _reps(args)
    runs = [("oracle", "truth", "truth")]
    for pol in _split(args.policies, "--policies"):
        if pol == "oracle":  # always run once, on the ground truth
            continue
        for rep in reps:
            for sc in _split(args.scorers, "--scorers") if rep != "id" else ["dot"]:
                runs.append((pol, sc, rep))
    return runs


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """Apply ``--quick``, validate the numbers; returns the per-policy parameters."""
    if args.quick:
        args.steps, args.users = min(args.steps, 1000), min(args.users, 300)
    for name in ("steps", "candidates", "top_k", "users", "update_every", "seeds"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')}", "must be at least 1")
    if not -1.0 <= args.no_click_reward <= 1.0:
        raise InvalidArgumentError("--no-click-reward", "must be in [-1, 1]")
    if args.finetune_steps < 0:
        raise InvalidArgumentError("--finetune-steps", "must be >= 0")
    try:
        params = json.loads(args.params)
        assert isinstance(params, dict)
    except (json.JSONDecodeError, AssertionError) as exc:
        raise InvalidArgumentError(
            "--params", "must be a JSON object: policy name -> params"
        ) from exc
    for pol in _split(args.policies, "--policies"):
        make_policy(pol, params.get(pol))  # unknown names and bad parameters fail here
    return params


def _steps(world: Any, args: argparse.Namespace, seed: int) -> Steps:
    if hasattr(world, "steps"):  # logged impressions: the log is the steps
        return world.steps(args.steps, args.top_k, seed)  # type: ignore[no-any-return]
    return draw_steps(world, args.steps, args.candidates, args.cold_items, args.top_k,
                      position_bias=args.position_bias, seed=seed)  # fmt: skip


def _replicates(args: argparse.Namespace, reps: list[str], bundle: Any) -> list[Replicate]:
    source = open_source(args.dataset, bundle=bundle, users=args.users,
                         text_signal=args.text_signal)  # fmt: skip
    bert = cached_bert(bundle, source.item_ids, source.item_texts) if bundle is not None else None
    out = []
    for seed in range(args.seed, args.seed + args.seeds):
        world = source.world(seed)
        if bert is not None and hasattr(world, "div_vectors"):
            world.div_vectors = bert
        rep = Replicate(seed, world, _steps(world, args, seed))
        if bert is not None:
            rep.embeddings["bert"], rep.bundles["bert"] = bert, bundle
        if "bert-ft" in reps:
            from explorank.benchmarks.evaluation.study_finetune import finetuned

            rep.embeddings["bert-ft"], rep.bundles["bert-ft"] = finetuned(
                world, args.finetune_steps, seed=seed, progress=not args.no_progress,
                bundle=bundle,
            )  # fmt: skip
        out.append(rep)
    return out


def _say(summary: dict[str, Any]) -> None:
    cold = summary.get("cold_ctr")
    line = (
        f"{summary['policy']}/{summary['scorer']}/{summary['representation']} "
        f"seed {summary['seed']}: CTR {summary['ctr']:.4f}  regret/step "
        f"{summary['regret_per_step']:.4f}  cold CTR {cold if cold is None else round(cold, 4)}  "
        f"({summary['wall_s']:.1f} s)"
    )
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(line, file=sys.stderr)


def run_study(args: argparse.Namespace) -> int:
    """Run the study described by the parsed command line; returns the exit code."""
    t_start = time.perf_counter()
    params = _check(args)
    plan = _plan(args)
    reps = _reps(args)
    needs_bert = args.dataset == "synthetic" or any(r.startswith("bert") for r in reps)
    bundle = load_bundle_for_eval(args.bundle) if needs_bert else None
    log.info("building the %s world(s) ...", args.dataset)
    replicates = _replicates(args, reps, bundle)
    t_built = time.perf_counter()
    study = Study(replicates, plan, params, args.top_k, args.update_every,
                  args.no_click_reward, args.user_representation)  # fmt: skip
    jobs = args.jobs or default_jobs()
    runs = run_all(study, jobs=jobs, progress=not args.no_progress, on_result=_say)
    t_runs = time.perf_counter()
    replays = _replays(args, study)
    first = replicates[0]
    world = first.world
    report = {
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not k.startswith("_")
        }
        | {"jobs": jobs, "seeds_used": [r.seed for r in replicates]},
        "dataset": {
            "name": world.name,
            "n_users": world.n_users,
            "n_items": world.n_items,
            "n_cold_items": int(np.sum(world.cold)),
            "base_offset": getattr(world, "offset", None),
            "mean_true_ctr": float(np.mean([float(r.steps.probs.mean()) for r in replicates])),
            "bundle": str(bundle.path) if bundle is not None else None,
            "model_version": bundle.model_version if bundle is not None else None,
            "user_representation": args.user_representation,
        },
        "machine": eval_report.machine_info(),
        "runs": runs,
        "summary": summarize(runs),
        "lifts": lifts(runs),
        "replay": replays,
        "timing": {
            "build_s": t_built - t_start,
            "runs_s": t_runs - t_built,
            "total_s": time.perf_counter() - t_start,
        },
    }
    paths = eval_report.write_report(report, args.out)
    print(f"wrote {', '.join(str(p) for p in paths)} ({report['timing']['total_s']:.1f} s)")
    return 0


def _replays(args: argparse.Namespace, study: Study) -> list[dict[str, Any]]:
    """Replay (Li et al. 2011) on the first replicate's evaluation log, when asked."""
    rep = study.replicates[0]
    world = rep.world
    n = args.replay_events
    if args.quick:
        n = min(n, 2000)
    if n <= 0 or not world.log:
        return []
    if not world.log_uniform:
        print(BIAS_CAVEAT, file=sys.stderr)
    out = []
    for pol, sc, rep_name in study.plan:
        if pol == "oracle":
            continue
        r = representation(study, rep, rep_name)
        bundle = rep.bundles.get(rep_name)
        scorer = make_scorer(sc, ScorerContext(
            embedding_dim=r.dim, heads=bundle.heads() if bundle is not None else {},
            bundle_dir=bundle.path if bundle is not None else None,
        ))  # fmt: skip
        res = replay(
            world.log, world.item_ids, make_policy(pol, study.params.get(pol)), scorer, r,
            n_candidates=args.candidates, uniform_log=world.log_uniform, seed=rep.seed,
            max_events=n, no_click_reward=args.no_click_reward,
        )  # fmt: skip
        s = res.summary()
        s.update(policy=pol, scorer=sc, representation=rep_name)
        print(
            f"replay {pol}/{sc}/{rep_name}: {res.accepted}/{res.events} accepted, CTR {res.ctr:.4f}",
            file=sys.stderr,
        )
        out.append(s)
    return out
