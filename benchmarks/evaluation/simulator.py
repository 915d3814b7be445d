"""The interactive simulator: users arrive, a real scorer + policy rank, the ground truth clicks.

One run = one (policy, scorer, representation). Every run of an evaluation sees the *same*
users, candidate sets and click uniforms (common random numbers, drawn once by
:func:`draw_steps`), so differences between runs come from the policies, not the dice.

Per step (:func:`rank_step`): the user's vector and the candidates' vectors come from the
representation; the decision is made by the engine's own decision core
(:func:`explorank.engine.decision.decide`: score, rank, validate — the same code that serves
Rank, seeded per step as the engine seeds per event id); the first ``top_k`` items are shown;
item ``j`` at position ``pos`` is clicked when
``uniform[t, j] < p_true(user, j) * position_bias[pos]``. Every shown item then gets a reward
(1.0 for a click, ``no_click_reward`` = -1.0 by default otherwise: rewards live in [-1, 1] and
e.g. Thompson sampling reads ``(r + 1) / 2`` as the success share, so -1 is a failure) through
the engine's learning path (:func:`explorank.engine.decision.deltas_for`), and the deltas are
applied after all deltas of the step are computed, as the engine applies a delta after the
store made the reward durable. ``update_every > 1`` delays feedback by that many steps, as
rewards arrive late in production.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np

from explorank.benchmarks.evaluation.metrics import RunMetrics, popularity_probs
from explorank.benchmarks.evaluation.representations import Representation
from explorank.benchmarks.evaluation.worlds import World
from explorank.engine import decision as core
from explorank.errors import InvalidArgumentError
from explorank.plugins.api import (
    Policy,
    RankContext,
    Ranking,
    ScoreContext,
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

    def score(self, ctx: ScoreContext) -> np.ndarray:
        return (ctx.item_embeddings @ ctx.user_embedding).astype(np.float32)


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


class LazyRng:
    """The engine's per-event generator (:func:`~explorank.engine.decision.event_rng`),
    built on first use: a policy that draws no random numbers does not pay for seeding one.
    Draws are the same numbers the engine's generator gives for the event."""

    __slots__ = ("_args", "_rng")

    def __init__(self, seed: int, event_id: str) -> None:
        self._args = (seed, event_id)
        self._rng: np.random.Generator | None = None

    def __getattr__(self, name: str) -> Any:
        rng = self._rng
        if rng is None:
            rng = self._rng = core.event_rng(*self._args)
        return getattr(rng, name)


def merge_deltas(pending: list[dict[str, StatsDelta]]) -> dict[str, StatsDelta]:
    """The sum, per learner, of the deltas of one feedback batch: applied at once, as the
    engine's stores merge deltas by addition."""
    if len(pending) == 1:
        return pending[0]
    out: dict[str, StatsDelta] = {}
    for deltas in pending:
        for name, delta in deltas.items():
            cur = out.get(name)
            if cur is None:
                out[name] = StatsDelta(items=dict(delta.items), arrays=dict(delta.arrays))
            else:
                cur.merge(delta)
    return out


@dataclass
class Steps:
    """The common random numbers of an evaluation (every run of a replicate sees these).

    ``candidates`` may be ragged: row ``t`` holds ``sizes[t]`` item indices, padded with
    -1 (logged impressions show different numbers of items). ``histories[t]``, when given,
    is the history of step ``t``'s user (item indices, most recent first), from which the
    user vector is built, instead of the user's running history in the representation."""

    users: np.ndarray  # (T,)
    candidates: np.ndarray  # (T, K) item indices (-1 = padding)
    probs: np.ndarray  # (T, K) true click probabilities (0/1 labels for logged impressions)
    uniforms: np.ndarray  # (T, K) click draws
    oracle: np.ndarray  # (T,) expected clicks of the best slate
    position_bias: np.ndarray  # (top_k,)
    sizes: np.ndarray | None = None  # (T,) candidates per step; None = K everywhere
    histories: list[np.ndarray] | None = None

    @property
    def n_steps(self) -> int:
        return int(self.users.shape[0])

    def size(self, t: int) -> int:
        return int(self.candidates.shape[1] if self.sizes is None else self.sizes[t])


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


def rank_step(
    policy: Policy,
    scorer: Scorer | None,
    *,
    user: np.ndarray,
    cand_ids: list[str],
    cand_vecs: np.ndarray,
    top_k: int,
    rng: np.random.Generator,
    stats: core.StatsBook,
    true_scores: np.ndarray | None = None,
) -> core.Decision:
    """One simulated Rank through the decision core. ``scorer=None`` ranks by
    ``true_scores`` (the oracle)."""
    if scorer is None:
        assert true_scores is not None
        return core.choose(
            policy,
            policy.name,
            scores=np.asarray(true_scores, dtype=np.float32),
            user=user,
            cand_ids=cand_ids,
            cand_vecs=cand_vecs,
            top_k=top_k,
            rng=rng,
            stats=stats.get(policy.name),
        )
    return core.decide(
        scorer,
        policy,
        scorer_name=scorer.name,
        policy_name=policy.name,
        user=user,
        cand_ids=cand_ids,
        cand_vecs=cand_vecs,
        top_k=top_k,
        rng=rng,
        stats=stats,
    )


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
    ``scorer=None`` scores with the true click probabilities (the oracle). Step ``t`` is
    the engine's event ``sim-<t>``: seeded with :func:`~explorank.engine.decision.event_rng`."""
    ids = world.item_ids
    metrics = RunMetrics(
        world.n_items,
        steps.users.shape[0],
        popularity_probs(world.popularity),
        world.cold,
        world.diversity_vectors(),
    )
    stats = core.StatsBook()
    pending: list[dict[str, StatsDelta]] = []
    pb = steps.position_bias
    policies = {policy.name: policy}
    scorers = {scorer.name: scorer} if scorer is not None else {}
    learn = policy.stateful or any(getattr(s, "stateful", False) for s in scorers.values())
    histories = steps.histories
    ragged = steps.sizes is not None
    t0 = time.perf_counter()
    for t in range(steps.n_steps):
        u = int(steps.users[t])
        cands = steps.candidates[t, : steps.size(t)] if ragged else steps.candidates[t]
        user_vec = rep.user_vector(u, None if histories is None else histories[t])
        item_vecs = rep.item_vectors(cands)
        cand_ids = [ids[i] for i in cands.tolist()]
        decision = rank_step(
            policy,
            scorer,
            user=user_vec,
            cand_ids=cand_ids,
            cand_vecs=item_vecs,
            top_k=top_k,
            rng=cast(np.random.Generator, LazyRng(seed, f"sim-{t}")),
            stats=stats,
            true_scores=steps.probs[t, : cands.shape[0]],
        )
        order = decision.order
        k = order.shape[0]
        p = steps.probs[t, order] * pb[:k]
        clicks = (steps.uniforms[t, order] < p).astype(np.float64)
        shown = cands[order]
        metrics.record(shown, clicks, float(p.sum()), float(steps.oracle[t]))
        if learn:
            event = core.to_event(
                decision,
                event_id=f"sim-{t}",
                created_at=float(t),
                user=user_vec,
                cand_vecs=item_vecs,
            )
            for j, item_id in enumerate(decision.ranked_ids):
                pending.append(
                    core.deltas_for(
                        event,
                        item_id,
                        1.0 if clicks[j] else no_click_reward,
                        policies=policies,
                        scorers=scorers,
                        stats=stats,
                    )
                )
            if (t + 1) % update_every == 0:
                stats.apply(merge_deltas(pending))
                pending.clear()
        rep.observe(u, shown, clicks, user_vec)
        if progress is not None and t % 500 == 0:
            progress(t)
    return metrics, time.perf_counter() - t0
