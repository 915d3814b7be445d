"""The exploration study behind ``explorank evaluate``: simulate (and replay) exploration
policies and compare them (the command line is :mod:`explorank.cli.evaluate`).

Runs every policy x representation (x scorer for ``bert``) through the same simulated
users (see :mod:`explorank.benchmarks.evaluation.simulator`), plus the ground-truth oracle as a
zero-regret reference, and writes report.json / report.md / PNG plots to ``--out``.
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
from explorank.benchmarks.evaluation.replay import BIAS_CAVEAT, replay
from explorank.benchmarks.evaluation.representations import (
    BertRepresentation,
    IdRepresentation,
    Representation,
    bert_item_embeddings,
    load_bundle_for_eval,
)
from explorank.benchmarks.evaluation.simulator import draw_steps, make_policy, make_scorer, simulate
from explorank.benchmarks.evaluation.worlds import World, movielens_world, synthetic_world
from explorank.errors import InvalidArgumentError
from explorank.plugins.api import Scorer, ScorerContext

log = logging.getLogger("explorank.benchmarks")


def _split(value: str, field: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidArgumentError(field, "must name at least one entry (comma-separated)")
    return items


def _cached_bert(bundle: Any, world_ids: list[str], texts: list[str]) -> np.ndarray:
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


def build_world(args: argparse.Namespace, bundle: Any) -> tuple[World, np.ndarray | None]:
    spec = str(args.dataset)
    if spec == "synthetic":
        ids = [it.id for it in bundle.items]
        texts = [it.text for it in bundle.items]
        emb = _normalize_rows(bundle.item_embeddings)
        world = synthetic_world(
            ids, texts, emb, n_users=args.users, text_signal=args.text_signal, seed=args.seed
        )
        return world, emb
    if spec.startswith("movielens:"):
        world = movielens_world(spec.split(":", 1)[1], seed=args.seed)
        ml_emb: np.ndarray | None = (
            _cached_bert(bundle, world.item_ids, world.item_texts) if bundle is not None else None
        )
        return world, ml_emb
    raise InvalidArgumentError("--dataset", f"expected synthetic or movielens:DIR, got {spec!r}")


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n == 0, 1.0, n)).astype(np.float32)


def _rep(name: str, world: World, bert: np.ndarray | None, seed: int) -> Representation:
    if name == "bert":
        assert bert is not None
        return BertRepresentation(bert, world.history)
    return IdRepresentation(world.n_items, world.history, seed=seed)


def _plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(policy, scorer, representation) runs, oracle first."""
    reps = _split(args.representations, "--representations")
    for r in reps:
        if r not in ("bert", "id"):
            raise InvalidArgumentError(
                "--representations", f"unknown representation {r!r}; use bert and/or id"
            )
    runs = [("oracle", "truth", "truth")]
    for pol in _split(args.policies, "--policies"):
        if pol == "oracle":  # always run once, on the ground truth
            continue
        for rep in reps:
            for sc in _split(args.scorers, "--scorers") if rep == "bert" else ["dot"]:
                runs.append((pol, sc, rep))
    return runs


def run_study(args: argparse.Namespace) -> int:
    """Run the study described by the parsed command line; returns the exit code."""
    t_start = time.perf_counter()
    if args.quick:
        args.steps, args.users = min(args.steps, 1000), min(args.users, 300)
    for name in ("steps", "candidates", "top_k", "users", "update_every"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')}", "must be at least 1")
    if not -1.0 <= args.no_click_reward <= 1.0:
        raise InvalidArgumentError("--no-click-reward", "must be in [-1, 1]")
    try:
        params = json.loads(args.params)
        assert isinstance(params, dict)
    except (json.JSONDecodeError, AssertionError) as exc:
        raise InvalidArgumentError(
            "--params", "must be a JSON object: policy name -> params"
        ) from exc
    plan = _plan(args)
    needs_bert = args.dataset == "synthetic" or any(r == "bert" for _, _, r in plan)
    bundle = load_bundle_for_eval(args.bundle) if needs_bert else None
    log.info("building the %s world ...", args.dataset)
    world, bert = build_world(args, bundle)
    steps = draw_steps(
        world,
        args.steps,
        args.candidates,
        args.cold_items,
        args.top_k,
        position_bias=args.position_bias,
        seed=args.seed,
    )
    from explorank.benchmarks.evaluation.simulator import _manager

    try:
        manager = _manager()
    except ModuleNotFoundError:
        manager = None
    progress = not args.no_progress
    runs: list[dict[str, Any]] = []
    scorers: dict[tuple[str, str], Scorer] = {}
    for n, (pol, sc, rep_name) in enumerate(plan, 1):
        policy = make_policy(pol, params.get(pol), manager)
        rep = (
            _rep(rep_name, world, bert, args.seed)
            if rep_name != "truth"
            else _rep("id", world, None, args.seed)
        )
        scorer = None
        if sc != "truth":
            key = (sc, rep_name)
            if key not in scorers:
                heads = bundle.heads() if (bundle is not None and rep_name == "bert") else {}
                ctx = ScorerContext(
                    embedding_dim=rep.dim,
                    heads=heads,
                    bundle_dir=bundle.path if bundle is not None and rep_name == "bert" else None,
                )
                scorers[key] = make_scorer(sc, ctx, None, manager)
            scorer = scorers[key]
        label = f"[{n}/{len(plan)}] {pol}/{sc}/{rep_name}"
        cb = (
            (
                lambda t, label=label: print(
                    f"\r{label}: step {t}/{args.steps}", end="", file=sys.stderr
                )
            )
            if progress
            else None
        )
        metrics, wall = simulate(
            world,
            steps,
            policy,
            scorer,
            rep,
            top_k=args.top_k,
            seed=args.seed,
            update_every=args.update_every,
            no_click_reward=args.no_click_reward,
            progress=cb,
        )
        summary = metrics.summary()
        summary.update(
            policy=pol,
            scorer=sc,
            representation=rep_name,
            wall_s=wall,
            policy_params=params.get(pol, {}),
        )
        runs.append(summary)
        print(
            f"\r{label}: CTR {summary['ctr']:.4f}  regret/step {summary['regret_per_step']:.4f}  "
            f"coverage {summary['coverage']:.3f}  ({wall:.1f} s)",
            file=sys.stderr,
        )
    replays = _replays(args, world, bert, plan, params, manager, scorers)
    report = {
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not k.startswith("_")
        },
        "dataset": {
            "name": world.name,
            "n_users": world.n_users,
            "n_items": world.n_items,
            "n_cold_items": int(world.cold.sum()),
            "base_offset": world.offset,
            "mean_true_ctr": float(steps.probs.mean()),
            "bundle": str(bundle.path) if bundle is not None else None,
            "model_version": bundle.model_version if bundle is not None else None,
        },
        "machine": eval_report.machine_info(),
        "runs": runs,
        "replay": replays,
        "timing": {"total_s": time.perf_counter() - t_start},
    }
    paths = eval_report.write_report(report, args.out)
    print(f"wrote {', '.join(str(p) for p in paths)} ({report['timing']['total_s']:.1f} s)")
    return 0


def _replays(
    args: argparse.Namespace,
    world: World,
    bert: np.ndarray | None,
    plan: list[tuple[str, str, str]],
    params: dict[str, Any],
    manager: Any,
    scorers: dict[tuple[str, str], Scorer],
) -> list[dict[str, Any]]:
    n = args.replay_events
    if n < 0:
        n = 0 if world.name == "synthetic" else len(world.log)
    if args.quick:
        n = min(n, 2000)
    if n == 0 or not world.log:
        return []
    if not world.log_uniform:
        print(BIAS_CAVEAT, file=sys.stderr)
    out = []
    for pol, sc, rep_name in plan:
        if pol == "oracle":
            continue
        rep = _rep(rep_name, world, bert, args.seed)
        res = replay(
            world.log,
            world.item_ids,
            make_policy(pol, params.get(pol), manager),
            scorers.get((sc, rep_name)),
            rep,
            n_candidates=args.candidates,
            uniform_log=world.log_uniform,
            seed=args.seed,
            max_events=n,
            no_click_reward=args.no_click_reward,
        )
        s = res.summary()
        s.update(policy=pol, scorer=sc, representation=rep_name)
        print(
            f"replay {pol}/{sc}/{rep_name}: {res.accepted}/{res.events} accepted, CTR {res.ctr:.4f}",
            file=sys.stderr,
        )
        out.append(s)
    return out
