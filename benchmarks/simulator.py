"""The interactive simulator: users arrive, a real scorer + policy rank, the ground truth clicks.

One run = one (policy, scorer, representation). Every run of an evaluation sees the *same*
users, candidate sets and click uniforms (common random numbers, drawn once by
:func:`draw_steps`), so differences between runs come from the policies, not the dice.

Per step: the user's vector and the candidates' vectors come from the representation;
the scorer scores; the policy ranks (a :class:`RankContext` with a seeded rng and the
policy's own :class:`PolicyStats`); the first ``top_k`` items are shown; item ``j`` at
position ``pos`` is clicked when ``uniform[t, j] < p_true(user, j) * position_bias[pos]``.
Every shown item then gets a reward (1.0 for a click, ``no_click_reward`` = -1.0 by
default otherwise: rewards live in [-1, 1] and e.g. Thompson sampling reads ``(r + 1) / 2``
as the success share, so -1 is a failure) through the path the engine uses: ``policy.update(RewardContext, stats)`` -> :class:`StatsDelta`, and the deltas are
applied with ``stats.apply`` (after all deltas of the step are computed, as the engine
applies a delta after the store made the reward durable). ``update_every > 1`` delays
feedback by that many steps, as rewards arrive late in production.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from explorank.benchmarks.eval_metrics import RunMetrics, popularity_probs
from explorank.benchmarks.representations import Representation
from explorank.benchmarks.worlds import World
from explorank.errors import InvalidArgumentError
from explorank.plugins.api import (
    Policy,
    PolicyStats,
    RankContext,
    Ranking,
    RewardContext,
    Scorer,
    ScorerContext,
    StatsDelta,
)

# --------------------------------------------------------- evaluation-only plugins


class RandomPolicy(Policy):
    """Uniformly random ordering; propensity of position j is 1 / (n - j)."""

    name: ClassVar[str] = "random"
    description: ClassVar[str] = "uniformly random ordering (evaluation baseline)"

    def rank(self, ctx: RankContext) -> Ranking:
        n = len(ctx.item_ids)
        k = min(ctx.top_k, n)
        order = ctx.rng.permutation(n)[:k].astype(np.int64)
        props = 1.0 / (n - np.arange(k, dtype=np.float64))
        greedy = np.argsort(-np.asarray(ctx.scores), kind="stable")[:k]
        return Ranking(order, props, order != greedy)


class OraclePolicy(Policy):
    """Deterministic descending order of the scores; the simulator gives it the true click
    probabilities as scores, so its regret is zero by definition (a sanity check)."""

    name: ClassVar[str] = "oracle"
    description: ClassVar[str] = "sorts by the ground truth (evaluation only)"

    def rank(self, ctx: RankContext) -> Ranking:
        k = min(ctx.top_k, len(ctx.item_ids))
        order = np.argsort(-np.asarray(ctx.scores), kind="stable")[:k].astype(np.int64)
        return Ranking(order, np.ones(k), np.zeros(k, dtype=bool))


class DotScorer(Scorer):
    """``score = u · v``: cosine similarity of L2-normalised embeddings. Works with any
    representation (the bundle's MF / neural heads only fit the BERT space)."""

    name: ClassVar[str] = "dot"
    description: ClassVar[str] = "dot product of user and item embeddings"

    def score(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (items @ user).astype(np.float32)


INTERNAL_POLICIES: dict[str, type[Policy]] = {"random": RandomPolicy, "oracle": OraclePolicy}


def _manager() -> Any:
    from explorank.plugins.manager import PluginManager

    return PluginManager()


def make_policy(
    name: str, params: dict[str, Any] | None = None, manager: Any | None = None
) -> Policy:
    """A registered policy by name, or an evaluation-only one (``random``, ``oracle``)."""
    params = params or {}
    try:
        mgr = manager or _manager()
        if name in mgr.policy_classes():
            return mgr.create_policy(name, **params)  # type: ignore[no-any-return]
    except ModuleNotFoundError:
        pass
    if name in INTERNAL_POLICIES:
        return INTERNAL_POLICIES[name](**params)
    raise InvalidArgumentError("--policies", f"unknown policy {name!r}; see `explorank plugins`")


def make_scorer(
    name: str,
    context: ScorerContext,
    params: dict[str, Any] | None = None,
    manager: Any | None = None,
) -> Scorer:
    """A registered scorer by name, else the evaluation's ``dot`` scorer."""
    params = params or {}
    try:
        mgr = manager or _manager()
        classes = mgr.scorer_classes() if hasattr(mgr, "scorer_classes") else {}
        if name in classes or (name != "dot" and not classes):
            return mgr.create_scorer(name, context, **params)  # type: ignore[no-any-return]
    except ModuleNotFoundError:
        pass
    if name == "dot":
        return DotScorer(context, **params)
    raise InvalidArgumentError("--scorers", f"unknown scorer {name!r}; see `explorank plugins`")


# ------------------------------------------------------------------- steps and runs


@dataclass
class Steps:
    """The common random numbers of an evaluation."""

    users: np.ndarray  # (T,)
    candidates: np.ndarray  # (T, K) item indices
    probs: np.ndarray  # (T, K) true click probabilities
    uniforms: np.ndarray  # (T, K) click draws
    oracle: np.ndarray  # (T,) expected clicks of the best slate
    position_bias: np.ndarray  # (top_k,)


def position_weights(top_k: int, enabled: bool) -> np.ndarray:
    """Examination probability per position: ``1 / log2(pos + 2)`` (DCG-style) or all ones."""
    pos = np.arange(top_k, dtype=np.float64)
    return 1.0 / np.log2(pos + 2.0) if enabled else np.ones(top_k)


def draw_steps(
    world: World,
    steps: int,
    n_candidates: int,
    cold_fraction: float,
    top_k: int,
    *,
    position_bias: bool,
    seed: int,
) -> Steps:
    """Users uniformly at random; per step ``round(K * cold_fraction)`` cold candidates and
    the rest warm, each set without replacement."""
    if not 0.0 <= cold_fraction <= 1.0:
        raise InvalidArgumentError("--cold-items", f"must be in [0, 1], got {cold_fraction}")
    rng = np.random.default_rng(seed)
    cold_pool, warm_pool = np.flatnonzero(world.cold), np.flatnonzero(~world.cold)
    n_cold = int(round(n_candidates * cold_fraction))
    n_warm = n_candidates - n_cold
    if n_cold > cold_pool.size or n_warm > warm_pool.size:
        raise InvalidArgumentError(
            "--candidates",
            f"{n_candidates} candidates with {n_cold} cold need {n_cold} cold and {n_warm} warm "
            f"items; the catalog has {cold_pool.size} cold and {warm_pool.size} warm",
        )
    cands = np.empty((steps, n_candidates), dtype=np.int64)
    for t in range(steps):
        cands[t, :n_cold] = cold_pool[rng.choice(cold_pool.size, n_cold, replace=False)]
        cands[t, n_cold:] = warm_pool[rng.choice(warm_pool.size, n_warm, replace=False)]
        rng.shuffle(cands[t])
    users = rng.integers(0, world.n_users, size=steps)
    probs = np.empty((steps, n_candidates))
    for s in range(0, steps, 4096):
        probs[s : s + 4096] = world.click_probs(users[s : s + 4096], cands[s : s + 4096])
    pb = position_weights(min(top_k, n_candidates), position_bias)
    best = -np.sort(-probs, axis=1)[:, : pb.shape[0]]
    return Steps(users, cands, probs, rng.random((steps, n_candidates)), best @ pb, pb)


@dataclass
class RunSpec:
    policy: str
    scorer: str
    representation: str
    policy_params: dict[str, Any]


def simulate(
    world: World,
    steps: Steps,
    policy: Policy,
    scorer: Scorer | None,
    rep: Representation,
    *,
    top_k: int,
    seed: int,
    update_every: int = 1,
    no_click_reward: float = -1.0,
    progress: Callable[[int], None] | None = None,
) -> tuple[RunMetrics, float]:
    """Run one policy through all steps; returns its metrics and the wall time (s).
    ``scorer=None`` scores with the true click probabilities (the oracle)."""
    ids = world.item_ids
    metrics = RunMetrics(
        world.n_items,
        steps.users.shape[0],
        popularity_probs(world.popularity),
        world.cold,
        world.diversity_vectors(),
    )
    stats = PolicyStats()
    rng = np.random.default_rng(seed)
    pending: list[StatsDelta] = []
    pb = steps.position_bias
    learn = policy.stateful
    t0 = time.perf_counter()
    for t in range(steps.users.shape[0]):
        u = int(steps.users[t])
        cands = steps.candidates[t]
        user_vec = rep.user_vector(u)
        item_vecs = rep.item_vectors(cands)
        if scorer is None:
            scores = steps.probs[t].astype(np.float32)
        else:
            scores = np.asarray(scorer.score(user_vec, item_vecs), dtype=np.float32)
        cand_ids = [ids[i] for i in cands.tolist()]
        ctx = RankContext(scores, cand_ids, item_vecs, user_vec, top_k, rng, stats)
        ranking = policy.rank(ctx)
        order = np.asarray(ranking.order, dtype=np.int64)
        k = order.shape[0]
        p = steps.probs[t, order] * pb[:k]
        clicks = (steps.uniforms[t, order] < p).astype(np.float64)
        shown = cands[order]
        metrics.record(shown, clicks, float(p.sum()), float(steps.oracle[t]))
        if learn:
            props = np.asarray(ranking.propensities, dtype=np.float64)
            for j in range(k):
                delta = policy.update(
                    RewardContext(
                        event_id=f"sim-{t}",
                        item_id=cand_ids[order[j]],
                        value=1.0 if clicks[j] else no_click_reward,
                        score=float(scores[order[j]]),
                        position=j,
                        propensity=float(props[j]),
                        user_embedding=user_vec,
                        item_embedding=item_vecs[order[j]],
                    ),
                    stats,
                )
                if delta is not None and not delta.is_empty():
                    pending.append(delta)
            if pending and (t + 1) % update_every == 0:
                for delta in pending:
                    stats.apply(delta)
                pending.clear()
        rep.observe(u, shown, clicks, user_vec)
        if progress is not None and t % 500 == 0:
            progress(t)
    return metrics, time.perf_counter() - t0
