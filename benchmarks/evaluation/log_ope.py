"""Off-policy evaluation of a registered policy on an exported event log (the command line
is :mod:`explorank.cli.ope`).

The log is the JSONL written by ``explorank events export`` (one event per line, rewards
joined). The estimand is the target policy's expected reward **at the first position**:

- logging propensity = the logged propensity of position 0 (the logged first item),
- reward = the logged reward of that item (the latest one; 0 when it got none),
- target propensity = the probability that the target policy puts the logged first item
  first, given the logged candidates. It is computed from the policy's own propensities:
  the target ranks the candidates with seeded rngs (up to ``--samples`` times); each
  sampled ranking reveals the exact probability ``propensities[0]`` of the item it put
  first. Sampling stops once the logged item was seen or the revealed probabilities sum
  to 1 (a deterministic policy needs one ranking). An item never drawn in ``--samples``
  rankings is counted 0 (a Monte-Carlo approximation; the residual mass is reported).
  A policy may instead expose ``first_position_probabilities(ctx) -> (n,)`` exactly.
- every target ranking goes through the engine's decision core
  (:func:`explorank.engine.decision.choose`, which validates it as serving does);
- the reward model for DR / SWITCH-DR: per-item mean reward of logged first items,
  shrunk towards the global mean with ``--shrinkage`` pseudo-observations, cross-fitted
  on two folds (events alternate) so no event's reward predicts itself.

Scores: the logged candidate scores, or ``--scorer`` applied to the logged user embedding
and candidate embeddings (from ``--bundle``'s catalog by item id, else the logged ranked
embeddings, else zeros with a warning). Stateful targets learn sequentially from the
logged rewards in time order, each event *after* it was evaluated, through the engine's
learning path (:func:`explorank.engine.decision.deltas_for`, as if the target had ranked the
logged event) (``--stats empty``: the target keeps no state).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from explorank.benchmarks.evaluation import ope
from explorank.benchmarks.evaluation.simulator import make_policy, make_scorer
from explorank.engine import decision as core
from explorank.errors import InvalidArgumentError
from explorank.plugins.api import EventRecord, Policy, RankContext, ScorerContext


def read_log(path: Path) -> list[dict[str, Any]]:
    """Events with at least one candidate and a ranked item, sorted by time."""
    if not path.is_file():
        raise InvalidArgumentError("--log", f"{path} does not exist")
    events = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
                ranked = sorted(ev["ranked"], key=lambda r: int(r["position"]))
                cands = [str(c) for c in ev["candidate_ids"]]
                scores = np.asarray(ev["candidate_scores"], dtype=np.float32)
                first = ranked[0] if ranked else None
                p0 = float(first["propensity"]) if first else math.nan
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise InvalidArgumentError(
                    "--log",
                    f"{path}:{lineno}: not an exported event ({exc}); expected "
                    "candidate_ids, candidate_scores, ranked[{item_id, score, propensity, position}]",
                ) from exc
            if not cands or first is None:
                continue
            if scores.shape[0] != len(cands):
                raise InvalidArgumentError(
                    "--log",
                    f"{path}:{lineno}: {len(cands)} candidates but {scores.shape[0]} scores",
                )
            if str(first["item_id"]) not in cands:
                raise InvalidArgumentError(
                    "--log", f"{path}:{lineno}: ranked item {first['item_id']!r} is not a candidate"
                )
            ev["_ranked"], ev["_scores"], ev["_p0"], ev["_line"] = ranked, scores, p0, lineno
            events.append(ev)
    if not events:
        raise InvalidArgumentError("--log", f"{path} holds no events with candidates and a ranking")
    events.sort(key=lambda e: float(e.get("created_at", 0.0)))
    return events


def _reward_of(ev: dict[str, Any], item_id: str) -> float:
    rs = [r for r in ev.get("rewards") or [] if str(r["item_id"]) == item_id]
    if not rs:
        return 0.0
    return float(max(rs, key=lambda r: float(r.get("created_at", 0.0)))["value"])


def first_position_probs(
    policy: Policy, ctx: RankContext, samples: int, seed: int, target: int
) -> tuple[np.ndarray, float]:
    """(n,) first-position probabilities known after sampling, and the unresolved mass."""
    n = len(ctx.item_ids)
    exact = getattr(policy, "first_position_probabilities", None)
    if callable(exact):
        probs = np.asarray(exact(ctx), dtype=np.float64)
        return probs, 0.0
    probs = np.full(n, np.nan)
    for r in range(samples):
        decision = core.choose(
            policy,
            policy.name,
            scores=ctx.scores,
            user=ctx.user_embedding,
            cand_ids=ctx.item_ids,
            cand_vecs=ctx.item_embeddings,
            top_k=ctx.top_k,
            rng=np.random.default_rng([seed, r]),
            stats=ctx.stats,
        )
        i = int(decision.order[0])
        probs[i] = float(decision.propensities[0])
        known = float(np.nansum(probs))
        if known >= 1.0 - 1e-6 or not np.isnan(probs[target]):
            break
    residual = max(0.0, 1.0 - float(np.nansum(probs)))
    return probs, residual


class _Embeddings:
    def __init__(self, bundle_dir: Path | None) -> None:
        self.bundle = None
        if bundle_dir is not None:
            from explorank.engine.bundle import load_bundle

            self.bundle = load_bundle(bundle_dir)
        self.missing = 0

    def matrix(self, ev: dict[str, Any], dim: int) -> np.ndarray:
        ids = [str(c) for c in ev["candidate_ids"]]
        out = np.zeros((len(ids), dim), dtype=np.float32)
        logged = {str(r["item_id"]): i for i, r in enumerate(ev["_ranked"])}
        ranked_emb = ev.get("ranked_embeddings") or []
        for j, item in enumerate(ids):
            bundle = self.bundle
            row = bundle.index.get(item) if bundle is not None else None
            if bundle is not None and row is not None:
                out[j] = bundle.item_embeddings[row]
            elif item in logged and logged[item] < len(ranked_emb):
                out[j] = np.asarray(ranked_emb[logged[item]], dtype=np.float32)
            else:
                self.missing += 1
        return out


def evaluate_log(args: argparse.Namespace) -> dict[str, Any]:
    events = read_log(args.log)
    try:
        params = json.loads(args.params)
        assert isinstance(params, dict)
    except (json.JSONDecodeError, AssertionError) as exc:
        raise InvalidArgumentError(
            "--params", "must be a JSON object of policy parameters"
        ) from exc
    if args.samples < 1:
        raise InvalidArgumentError("--samples", "must be at least 1")
    policy = make_policy(args.policy, params)
    bundle_dir = args.bundle
    if bundle_dir is None:
        from explorank.engine.default_bundle import default_bundle_dir

        candidate = default_bundle_dir()
        if (candidate / "manifest.json").is_file():
            bundle_dir = candidate
            print(f"using the default bundle {candidate} for candidate embeddings", file=sys.stderr)
    emb = _Embeddings(bundle_dir)
    dim = len(events[0].get("user_embedding") or []) or (
        emb.bundle.embedding_dim if emb.bundle else 1
    )
    scorer = None
    if args.scorer:
        heads = emb.bundle.heads() if emb.bundle is not None else {}
        scorer = make_scorer(
            args.scorer,
            ScorerContext(
                embedding_dim=dim, heads=heads, bundle_dir=emb.bundle.path if emb.bundle else None
            ),
        )
    book = core.StatsBook()
    stats = book.of(policy.name)
    n = len(events)
    rewards, p0, p1, resid = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    firsts: list[str] = []
    dists: list[tuple[list[str], np.ndarray]] = []
    for e, ev in enumerate(events):
        ids = [str(c) for c in ev["candidate_ids"]]
        user = np.asarray(ev.get("user_embedding") or np.zeros(dim), dtype=np.float32)
        items = emb.matrix(ev, user.shape[0])
        scores = (
            ev["_scores"]
            if scorer is None
            else core.score(scorer, scorer.name, user=user, cand_ids=ids, cand_vecs=items)
        )
        first = str(ev["_ranked"][0]["item_id"])
        target = ids.index(first)
        ctx = RankContext(
            scores,
            ids,
            items,
            user,
            1,
            np.random.default_rng(0),
            stats if args.stats == "sequential" else core.StatsBook().of(policy.name),
        )
        probs, resid[e] = first_position_probs(policy, ctx, args.samples, args.seed + e, target)
        p1[e] = 0.0 if np.isnan(probs[target]) else probs[target]
        p0[e], rewards[e] = ev["_p0"], _reward_of(ev, first)
        firsts.append(first)
        dists.append((ids, probs))
        if args.stats == "sequential" and policy.stateful:
            _learn_logged(policy, book, ev, ids, items, user, scores, e)
            stats = book.of(policy.name)
    q_logged, q_target = _reward_model(firsts, rewards, dists, args.shrinkage)
    ests = ope.all_estimates(
        rewards, p0, p1, q_logged, q_target, tau=args.tau, max_weight=args.max_weight
    )
    return {
        "log": str(args.log),
        "policy": args.policy,
        "params": params,
        "scorer": args.scorer or "logged",
        "events": n,
        "logged_mean_reward": float(rewards.mean()),
        "unresolved_events": int(np.sum(resid > 1e-6)),
        "mean_unresolved_mass": float(resid.mean()),
        "missing_embeddings": emb.missing,
        "estimates": [e.to_dict() for e in ests],
    }


def _learn_logged(
    policy: Policy,
    book: core.StatsBook,
    ev: dict[str, Any],
    ids: list[str],
    items: np.ndarray,
    user: np.ndarray,
    scores: np.ndarray,
    e: int,
) -> None:
    """The target learns from the logged event's rewards as if it had ranked it."""
    ranked = [r for r in ev["_ranked"] if str(r["item_id"]) in ids]
    rewarded = {str(x["item_id"]) for x in ev.get("rewards") or []}
    if not ranked or not rewarded:
        return
    rows = [ids.index(str(r["item_id"])) for r in ranked]
    event = EventRecord(
        event_id=str(ev.get("event_id", e)),
        created_at=float(ev.get("created_at", 0.0)),
        user_id=str(ev.get("user_id", "")),
        scorer=str(ev.get("scorer", "")),
        policy=policy.name,
        model_version=str(ev.get("model_version", "")),
        candidate_ids=ids,
        candidate_scores=scores,
        ranked_ids=[str(r["item_id"]) for r in ranked],
        ranked_scores=[float(r.get("score", scores[j])) for r, j in zip(ranked, rows, strict=True)],
        propensities=[float(r["propensity"]) for r in ranked],
        explored=[bool(r.get("explored", False)) for r in ranked],
        user_embedding=user,
        ranked_embeddings=items[rows],
    )
    for item in event.ranked_ids:
        if item in rewarded:
            book.apply(
                core.deltas_for(
                    event,
                    item,
                    _reward_of(ev, item),
                    policies={policy.name: policy},
                    scorers={},
                    stats=book,
                )
            )


def _reward_model(
    firsts: list[str], rewards: np.ndarray, dists: list[tuple[list[str], np.ndarray]], k: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted shrunk per-item means: q(i) = (sum_i + k·mean) / (n_i + k)."""
    n = len(firsts)
    fold = np.arange(n) % 2
    tables = []
    for f in (0, 1):
        other = fold != f
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for i in np.flatnonzero(other):
            sums[firsts[i]] = sums.get(firsts[i], 0.0) + rewards[i]
            counts[firsts[i]] = counts.get(firsts[i], 0) + 1
        g = float(rewards[other].mean()) if other.any() else float(rewards.mean())
        tables.append((sums, counts, g))
    q_logged, q_target = np.zeros(n), np.zeros(n)
    for e in range(n):
        sums, counts, g = tables[fold[e]]

        def q(
            item: str, sums: dict[str, float] = sums, counts: dict[str, int] = counts, g: float = g
        ) -> float:
            return (sums.get(item, 0.0) + k * g) / (counts.get(item, 0) + k)

        q_logged[e] = q(firsts[e])
        ids, probs = dists[e]
        qs = np.array([q(i) for i in ids])
        known = ~np.isnan(probs)
        resid = max(0.0, 1.0 - float(probs[known].sum()))
        rest = qs[~known].mean() if (~known).any() else 0.0
        q_target[e] = float(np.dot(probs[known], qs[known])) + resid * rest
    return q_logged, q_target
