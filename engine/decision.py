"""The decision core: scores -> policy -> validated ranking, and reward -> statistics deltas.

Pure functions over plain arrays and plugin objects: no asyncio, no gRPC, no storage. The
engine calls them on the Rank and Reward paths; the simulator, replay and off-policy
evaluation call the same functions, so what is evaluated offline is what serves.

Statistics live in one mapping ``name -> PolicyStats`` (a :class:`StatsBook`):

- a policy's statistics under its name (``"ucb1"``);
- a stateful scorer's under ``"scorer:<name>"`` (:func:`scorer_key`);
- the policy-independent per-item statistics under :data:`ITEM_STATS`
  (``items[item_id] = [reward_count, reward_sum]``), learned from every reward.

Who learns from a reward (:func:`deltas_for`): the per-item statistics always; every
stateful scorer; a stateful policy when it ranked the event, or when it learns from all
rewards (``Policy.learns_from = "all"``).

Plugin failures (a scorer returning NaN or the wrong shape, a policy raising or returning
a ranking that breaks the contract, an update returning non-finite deltas) raise
:class:`PluginFailure` naming the plugin: a server error, never the caller's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explorank.plugins.api import (
    ITEM_STATS_SIZE,
    EventRecord,
    Policy,
    PolicyStats,
    RankContext,
    Ranking,
    RewardContext,
    ScoreContext,
    Scorer,
    StatsDelta,
    scorer_api_version,
)
from explorank.plugins.errors import PluginError

__all__ = [
    "ITEM_STATS",
    "Decision",
    "PluginFailure",
    "StatsBook",
    "choose",
    "decide",
    "deltas_for",
    "event_rng",
    "reward_context",
    "score",
    "scorer_key",
]

#: Name of the policy-independent per-item statistics in a :class:`StatsBook`.
ITEM_STATS = "@items"


def scorer_key(name: str) -> str:
    """Where a stateful scorer's statistics live in the :class:`StatsBook` and the store."""
    return f"scorer:{name}"


def event_rng(seed: int, event_id: str) -> np.random.Generator:
    """The generator a Rank with ``event_id`` ranks with: the same seed and event id give
    the same ranking, wherever the decision is made."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return np.random.default_rng([seed & 0xFFFFFFFF, int.from_bytes(digest, "little")])


class PluginFailure(PluginError):
    """A plugin misbehaved while serving (a server-side fault, reported as INTERNAL)."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        self.kind = kind
        self.name = name
        self.detail = message
        super().__init__(f"{kind} {name!r} {message}")


class StatsBook(dict[str, PolicyStats]):
    """``name -> PolicyStats`` for every learner (see the module docstring)."""

    def of(self, name: str) -> PolicyStats:
        """The statistics stored under ``name`` (created empty on first use)."""
        stats = self.get(name)
        if stats is None:
            stats = self[name] = PolicyStats()
        return stats

    def apply(self, deltas: Mapping[str, StatsDelta]) -> None:
        for name, delta in deltas.items():
            self.of(name).apply(delta)


@dataclass(frozen=True)
class Decision:
    """One ranking decision: every candidate's score and the policy's slate."""

    scorer: str
    policy: str
    candidate_ids: Sequence[str]
    scores: np.ndarray  # (n,) float32
    order: np.ndarray  # (k,) int64 indices into the candidates
    propensities: np.ndarray  # (k,) float64
    explored: np.ndarray  # (k,) bool
    ranked_ids: list[str] = field(default_factory=list)

    @property
    def ranked_scores(self) -> np.ndarray:
        return self.scores[self.order]


# ---------------------------------------------------------------------------- deciding

_API_VERSIONS: dict[type, int] = {}


def _api_version(cls: type) -> int:
    version = _API_VERSIONS.get(cls)
    if version is None:
        version = _API_VERSIONS[cls] = scorer_api_version(cls)
    return version


def score(
    scorer: Scorer,
    name: str,
    *,
    user: np.ndarray,
    cand_ids: Sequence[str],
    cand_vecs: np.ndarray,
    stats: Mapping[str, PolicyStats] | None = None,
) -> np.ndarray:
    """(n,) float32 scores from ``scorer``, checked (shape, finiteness)."""
    n = len(cand_ids)
    empty = PolicyStats()
    book = stats or {}
    try:
        if _api_version(type(scorer)) == 1:
            raw = scorer.score(user, cand_vecs)  # type: ignore[call-arg,arg-type]
        else:
            raw = scorer.score(
                ScoreContext(
                    user_embedding=user,
                    item_ids=cand_ids,
                    item_embeddings=cand_vecs,
                    stats=book.get(scorer_key(name), empty),
                    item_stats=book.get(ITEM_STATS, empty),
                )
            )
        scores = np.asarray(raw, dtype=np.float32).reshape(-1)
    except PluginFailure:
        raise
    except Exception as exc:
        raise PluginFailure("scorer", name, f"raised {type(exc).__name__}: {exc}") from exc
    if scores.shape[0] != n:
        raise PluginFailure("scorer", name, f"returned {scores.shape[0]} scores for {n} candidates")
    if not np.all(np.isfinite(scores)):
        bad = int(np.count_nonzero(~np.isfinite(scores)))
        raise PluginFailure("scorer", name, f"returned {bad} non-finite scores (NaN or inf)")
    return scores


def choose(
    policy: Policy,
    name: str,
    *,
    scores: np.ndarray,
    user: np.ndarray,
    cand_ids: Sequence[str],
    cand_vecs: np.ndarray,
    top_k: int,
    rng: np.random.Generator,
    stats: PolicyStats | None = None,
    scorer: str = "",
) -> Decision:
    """Let ``policy`` order the scored candidates; the ranking is validated."""
    n = len(cand_ids)
    ctx = RankContext(
        scores=scores,
        item_ids=cand_ids,
        item_embeddings=cand_vecs,
        user_embedding=user,
        top_k=top_k,
        rng=rng,
        stats=stats if stats is not None else PolicyStats(),
    )
    try:
        ranking = policy.rank(ctx)
        if not isinstance(ranking, Ranking):
            raise PluginError(f"rank() returned {type(ranking).__name__}, not a Ranking")
        ranking.validate(n, top_k)
    except Exception as exc:
        what = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
        raise PluginFailure("policy", name, f"failed: {what}") from exc
    order = np.asarray(ranking.order, dtype=np.int64)
    return Decision(
        scorer=scorer,
        policy=name,
        candidate_ids=cand_ids,
        scores=scores,
        order=order,
        propensities=np.asarray(ranking.propensities, dtype=np.float64),
        explored=np.asarray(ranking.explored, dtype=bool),
        ranked_ids=[cand_ids[i] for i in order.tolist()],
    )


def decide(
    scorer: Scorer,
    policy: Policy,
    *,
    scorer_name: str,
    policy_name: str,
    user: np.ndarray,
    cand_ids: Sequence[str],
    cand_vecs: np.ndarray,
    top_k: int,
    rng: np.random.Generator,
    stats: Mapping[str, PolicyStats] | None = None,
) -> Decision:
    """Score the candidates, let the policy rank them, validate both: one decision."""
    scores = score(
        scorer, scorer_name, user=user, cand_ids=cand_ids, cand_vecs=cand_vecs, stats=stats
    )
    return choose(
        policy,
        policy_name,
        scores=scores,
        user=user,
        cand_ids=cand_ids,
        cand_vecs=cand_vecs,
        top_k=top_k,
        rng=rng,
        stats=(stats or {}).get(policy_name),
        scorer=scorer_name,
    )


def to_event(
    decision: Decision,
    *,
    event_id: str,
    created_at: float,
    user: np.ndarray,
    cand_vecs: np.ndarray,
    model_version: str = "",
    user_id: str = "",
    context_text: str = "",
    top_k: int = 0,
    request_hash: str = "",
) -> EventRecord:
    """The event record of a decision: what a later reward needs, and what offline
    evaluation reads."""
    return EventRecord(
        event_id=event_id,
        created_at=created_at,
        user_id=user_id,
        scorer=decision.scorer,
        policy=decision.policy,
        model_version=model_version,
        # the catalog's own id list for whole-catalog Ranks: a reference, not a copy
        candidate_ids=(
            decision.candidate_ids
            if isinstance(decision.candidate_ids, list)
            else list(decision.candidate_ids)
        ),
        candidate_scores=decision.scores,
        ranked_ids=list(decision.ranked_ids),
        ranked_scores=decision.ranked_scores.astype(float).tolist(),
        propensities=decision.propensities.tolist(),
        explored=decision.explored.tolist(),
        user_embedding=np.asarray(user, dtype=np.float32),
        ranked_embeddings=np.ascontiguousarray(cand_vecs[decision.order], dtype=np.float32),
        context_text=context_text,
        top_k=top_k or len(decision.ranked_ids),
        request_hash=request_hash,
    )


# ---------------------------------------------------------------------------- learning


def reward_context(event: EventRecord, item_id: str, value: float) -> RewardContext:
    """The context a learner sees for one reward of ``event`` (the item must be ranked)."""
    pos = event.position_of(item_id)
    if pos < 0:
        raise ValueError(f"item {item_id!r} was not returned by event {event.event_id!r}")
    return RewardContext(
        event_id=event.event_id,
        item_id=item_id,
        value=float(value),
        score=float(event.ranked_scores[pos]),
        position=pos,
        propensity=float(event.propensities[pos]),
        user_embedding=event.user_embedding,
        item_embedding=event.ranked_embeddings[pos],
        policy=event.policy,
        scorer=event.scorer,
    )


def item_delta(item_id: str, value: float) -> StatsDelta:
    """The per-item statistics change of one reward: count +1, reward_sum += value."""
    return StatsDelta(items={item_id: np.array([1.0, float(value)])})


def _learn(kind: str, name: str, plugin: Any, rctx: RewardContext, stats: PolicyStats) -> Any:
    try:
        delta = plugin.update(rctx, stats)
    except Exception as exc:
        raise PluginFailure(kind, name, f"update() raised {type(exc).__name__}: {exc}") from exc
    if delta is None:
        return None
    if not isinstance(delta, StatsDelta):
        raise PluginFailure(
            kind, name, f"update() returned {type(delta).__name__}, not a StatsDelta"
        )
    for key, arr in (*delta.items.items(), *delta.arrays.items()):
        if not np.isfinite(np.asarray(arr, dtype=np.float64)).all():
            raise PluginFailure(kind, name, f"update() returned non-finite statistics for {key!r}")
    return None if delta.is_empty() else delta


def learners_of(
    event: EventRecord, policies: Mapping[str, Policy], scorers: Mapping[str, Scorer]
) -> Iterable[tuple[str, str, Any]]:
    """``(kind, stats name, plugin)`` of every learner a reward of ``event`` reaches."""
    for name, scorer in scorers.items():
        if getattr(scorer, "stateful", False):
            yield "scorer", scorer_key(name), scorer
    for name, policy in policies.items():
        if not policy.stateful:
            continue
        if name == event.policy or getattr(policy, "learns_from", "own") == "all":
            yield "policy", name, policy


def deltas_for(
    event: EventRecord,
    item_id: str,
    value: float,
    *,
    policies: Mapping[str, Policy],
    scorers: Mapping[str, Scorer],
    stats: Mapping[str, PolicyStats],
) -> dict[str, StatsDelta]:
    """What every learner learns from one reward: ``stats name -> delta`` (see the module
    docstring for who learns). Pure: ``stats`` is read, never changed."""
    rctx = reward_context(event, item_id, value)
    out = {ITEM_STATS: item_delta(item_id, value)}
    empty = PolicyStats()
    for kind, key, plugin in learners_of(event, policies, scorers):
        name = key.split(":", 1)[1] if kind == "scorer" else key
        delta = _learn(kind, name, plugin, rctx, stats.get(key, empty))
        if delta is not None:
            out[key] = delta
    return out


__all__ += ["ITEM_STATS_SIZE", "item_delta", "learners_of", "to_event"]
