"""Running the study's (replicate seed x policy x scorer x representation) simulations,
in parallel processes when there is more than one core.

Everything a run needs (the worlds, the common random numbers of every replicate, the
item embeddings of every representation) is built once in the parent, before the worker
processes start; they are forked, so they share it without copying or pickling. Each run
returns its summary (a small dict). Runs are independent and deterministic given their
seed, so the results do not depend on the number of processes or their order.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explorank.benchmarks.evaluation.representations import (
    BertRepresentation,
    IdRepresentation,
    Representation,
    TextUsers,
)
from explorank.benchmarks.evaluation.simulator import Steps, make_policy, make_scorer, simulate
from explorank.plugins.api import ScorerContext

log = logging.getLogger("explorank.benchmarks")


@dataclass
class Replicate:
    """One replicate seed: its world, its common random numbers and its embeddings."""

    seed: int
    world: Any
    steps: Steps
    #: representation name -> (n_items, d) item embeddings ("bert", "bert-ft")
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    #: representation name -> the bundle it comes from (heads for scorers, encoder for text users)
    bundles: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    """What every run reads (shared with the forked workers)."""

    replicates: list[Replicate]
    plan: list[tuple[str, str, str]]  # (policy, scorer, representation), oracle first
    params: dict[str, Any]
    top_k: int
    update_every: int
    no_click_reward: float
    user_representation: str = "history"


_STUDY: Study | None = None
_ENCODERS: dict[int, Any] = {}


def _encoder(bundle: Any) -> Callable[[list[str]], np.ndarray]:
    """A per-process fp32 encoder of ``bundle`` (texts -> L2-normalised rows)."""
    enc = _ENCODERS.get(id(bundle))
    if enc is None:
        from explorank.benchmarks.evaluation.representations import encode_texts

        def enc(texts: list[str]) -> np.ndarray:
            return encode_texts(bundle, texts, backend=_backend(bundle))

        _ENCODERS[id(bundle)] = enc
    return enc  # type: ignore[no-any-return]


_BACKENDS: dict[int, Any] = {}


def _backend(bundle: Any) -> Any:
    b = _BACKENDS.get(id(bundle))
    if b is None:
        from explorank.engine.backends import create_backend

        b = _BACKENDS[id(bundle)] = create_backend(bundle, backend="onnxruntime", precision="fp32")
    return b


def representation(study: Study, rep: Replicate, name: str) -> Representation:
    """A fresh representation ``name`` of replicate ``rep`` (``truth`` runs use ``id``)."""
    world = rep.world
    if name in rep.embeddings:
        users = None
        if study.user_representation != "history":
            users = TextUsers(_encoder(rep.bundles[name]), world.item_texts,
                              study.user_representation)  # fmt: skip
        out: Representation = BertRepresentation(rep.embeddings[name], world.history, users=users)
        out.name = name
        return out
    return IdRepresentation(world.n_items, world.history, seed=rep.seed)


def run_one(study: Study, r_idx: int, p_idx: int) -> dict[str, Any]:
    """Simulate run ``p_idx`` of the plan on replicate ``r_idx``; returns its summary."""
    rep = study.replicates[r_idx]
    pol, sc, rep_name = study.plan[p_idx]
    policy = make_policy(pol, study.params.get(pol))
    representation_ = representation(study, rep, rep_name)
    scorer = None
    if sc != "truth":
        bundle = rep.bundles.get(rep_name)
        ctx = ScorerContext(
            embedding_dim=representation_.dim,
            heads=bundle.heads() if bundle is not None else {},
            bundle_dir=bundle.path if bundle is not None else None,
        )
        scorer = make_scorer(sc, ctx)
    cpu0 = time.process_time()
    metrics, wall = simulate(
        rep.world, rep.steps, policy, scorer, representation_, top_k=study.top_k,
        seed=rep.seed, update_every=study.update_every, no_click_reward=study.no_click_reward,
    )  # fmt: skip
    summary = metrics.summary()
    summary.update(policy=pol, scorer=sc, representation=rep_name, seed=rep.seed, wall_s=wall,
                   cpu_s=time.process_time() - cpu0,
                   policy_params=study.params.get(pol, {}))  # fmt: skip
    return summary


def _worker_init() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _task(args: tuple[int, int]) -> dict[str, Any]:
    assert _STUDY is not None
    return run_one(_STUDY, *args)


def default_jobs() -> int:
    """The CPUs this process may use (affinity / cgroup quota aware)."""
    try:
        from explorank.engine.cpu import available_cpus

        return max(1, int(available_cpus()))
    except Exception:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def run_all(
    study: Study,
    *,
    jobs: int,
    progress: bool,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (replicate, run) of ``study``; results in plan order (seed-major)."""
    global _STUDY
    tasks = [(r, p) for r in range(len(study.replicates)) for p in range(len(study.plan))]
    results: dict[tuple[int, int], dict[str, Any]] = {}
    bar = _bar(len(tasks), progress)
    fork_ok = "fork" in multiprocessing.get_all_start_methods()
    try:
        if jobs <= 1 or len(tasks) <= 1 or not fork_ok:
            for t in tasks:
                results[t] = run_one(study, *t)
                _done(bar, results[t], on_result)
        else:
            _STUDY = study
            gc.collect()
            gc.freeze()  # the forked workers' collections then never touch (copy) these pages
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=ctx,
                                     initializer=_worker_init) as pool:  # fmt: skip
                futures = {pool.submit(_task, t): t for t in _longest_first(study, tasks)}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    _done(bar, results[futures[fut]], on_result)
    finally:
        _STUDY = None
        gc.unfreeze()
        if bar is not None:
            bar.close()
    return [results[t] for t in tasks]


#: rough relative cost per step, to start the slow runs first (better packing)
_COST = {"lin_ts_hybrid": 6, "linucb_hybrid": 5, "lin_ts": 5, "linucb": 4, "thompson": 3}


def _longest_first(study: Study, tasks: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    def cost(t: tuple[int, int]) -> int:
        pol, _, rep = study.plan[t[1]]
        return _COST.get(pol, 1) + (1 if rep == "id" else 0)

    return sorted(tasks, key=lambda t: -cost(t))


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="runs", unit="run", file=sys.stderr, leave=False)


def _done(
    bar: Any, summary: dict[str, Any], on_result: Callable[[dict[str, Any]], None] | None
) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str(f"{summary['policy']}/{summary['representation']} s{summary['seed']}")
    if on_result is not None:
        on_result(summary)
