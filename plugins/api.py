"""The interfaces that plugins implement and the records they exchange with the engine
(plugin API 2). Everything a plugin author needs is importable from here.

Arrays in, arrays out: a scorer scores all candidates of a request in one call and a
policy orders them in one call, so no per-item Python loop sits on the Rank path.

What a plugin sees, and when:

- a **scorer** gets a :class:`ScoreContext` per Rank (the user embedding, the candidates'
  ids and embeddings, its own statistics and the policy-independent per-item statistics)
  and returns one score per candidate; a stateful scorer also learns from every reward;
- a **policy** gets a :class:`RankContext` (the scores, ids, embeddings, its statistics, a
  seeded rng) and returns a :class:`Ranking` with propensities; a stateful policy learns
  from the rewards of the events it ranked (``learns_from = "all"``: from every reward,
  with the logging propensity in :class:`RewardContext` to correct by);
- learning is additive: ``update`` returns a :class:`StatsDelta`, never mutates.

API 1 plugins keep working: a scorer whose ``score`` takes ``(user, items)`` is called that
way, and a plugin without a ``Params`` model keeps receiving its raw parameters as a dict.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from explorank.plugins.errors import PluginError
from explorank.plugins.params import PluginParams, validate_params
from explorank.plugins.stats import PolicyStats, StatsDelta
from explorank.plugins.store_api import (
    CatalogChange,
    EventRecord,
    RewardRecord,
    StateStore,
    StateUnavailableError,
)

__all__ = [
    "CatalogChange",
    "EventRecord",
    "PluginParams",
    "Policy",
    "PolicyStats",
    "RankContext",
    "Ranking",
    "RewardContext",
    "RewardRecord",
    "ScoreContext",
    "Scorer",
    "ScorerContext",
    "StateStore",
    "StateUnavailableError",
    "StatsDelta",
    "scorer_api_version",
]

#: Statistics vector of :attr:`ScoreContext.item_stats`: ``[reward_count, reward_sum]``.
ITEM_STATS_SIZE = 2


def _params(section: str, cls: type, params: dict[str, Any]) -> Any:
    model = getattr(cls, "Params", None)
    if model is None:
        return params
    return validate_params(f"{section}.{cls.name}", model, params)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- scorers


@dataclass(frozen=True)
class ScorerContext:
    """What a scorer may use from the bundle it serves (given to its constructor)."""

    embedding_dim: int
    #: The manifest's ``heads`` section, with every ``path`` resolved to an absolute path.
    heads: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bundle_dir: Path | None = None
    #: ONNX Runtime execution providers the engine uses (for scorers that run ONNX heads).
    providers: Sequence[str] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1


@dataclass
class ScoreContext:
    """Everything a scorer sees for one Rank request (all read-only)."""

    #: (d,) float32, the user's L2-normalised embedding.
    user_embedding: np.ndarray
    #: (n,) the candidates' item ids, in candidate order.
    item_ids: Sequence[str]
    #: (n, d) float32, the candidates' L2-normalised embeddings.
    item_embeddings: np.ndarray
    #: This scorer's own statistics (empty for stateless scorers).
    stats: PolicyStats = field(default_factory=PolicyStats)
    #: Policy-independent per-item statistics, learned from every reward whichever policy
    #: or scorer served it: ``items[item_id] = [reward_count, reward_sum]``.
    item_stats: PolicyStats = field(default_factory=PolicyStats)

    def item_counts(self) -> np.ndarray:
        """(n, 2) ``[reward_count, reward_sum]`` of every candidate (zeros when unseen)."""
        return self.item_stats.item_matrix(self.item_ids, ITEM_STATS_SIZE)


def scorer_api_version(cls: type) -> int:
    """1 when ``cls.score`` takes ``(user, items)`` (plugin API 1), else 2 (``(ctx)``)."""
    fn = getattr(cls, "score", None)
    if fn is None:
        return 2
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 2
    positional = [
        p
        for p in sig.parameters.values()
        if p.name != "self"
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is p.empty
    ]
    return 1 if len(positional) == 2 else 2


class Scorer(ABC):
    """Turns the user and the candidates into one score per candidate (higher is better).

    Subclasses set ``name`` and implement :meth:`score`; a learning scorer sets
    ``stateful = True`` and implements :meth:`update`. Parameters come from
    ``[ranking.scorers.<name>]`` and are validated against the nested ``Params`` model.
    """

    #: Unique name used in config and in ``RankRequest.scorer``.
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when the scorer learns from rewards (``update`` returns deltas). A stateful
    #: scorer learns from every reward, and its statistics are stored and replicated
    #: like a policy's.
    stateful: ClassVar[bool] = False
    #: The parameter model (a :class:`PluginParams` subclass); ``None`` = API 1 (raw dict).
    Params: ClassVar[type[PluginParams] | None] = None

    def __init__(self, context: ScorerContext, **params: Any) -> None:
        self.context = context
        self.params: Any = _params("ranking.scorers", type(self), params)

    @abstractmethod
    def score(self, ctx: ScoreContext) -> np.ndarray:
        """(n,) float32 scores, one per candidate, finite. Vectorized: one call per request.
        Must not modify the context's arrays."""

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta | None:
        """The additive statistics delta for one reward (None when nothing to learn).
        Must not mutate ``stats``."""
        return None


# ------------------------------------------------------------------------------ policies


@dataclass
class RankContext:
    """Everything a policy sees for one Rank request."""

    scores: np.ndarray  # (n,) float, the scorer's scores; any sign
    item_ids: Sequence[str]  # (n,)
    item_embeddings: np.ndarray  # (n, d) float32, L2-normalised encoder embeddings
    user_embedding: np.ndarray  # (d,) float32
    top_k: int  # 1 <= top_k; the policy returns min(top_k, n) items
    rng: np.random.Generator  # seeded per request: same seed => same ranking
    stats: PolicyStats  # this policy's current statistics (read-only)


@dataclass
class Ranking:
    """A policy's answer: which candidates, in which order, with which propensities.

    ``propensities[j]`` is the probability that the policy placed ``order[j]`` at
    position ``j`` given ``order[:j]`` (so the product is the probability of the slate).
    ``explored[j]`` is True when position ``j`` differs from what greedy ordering by the
    policy's own exploitation estimate would have placed there.
    """

    order: np.ndarray  # (k,) int64 indices into the candidates
    propensities: np.ndarray  # (k,) float64 in (0, 1]
    explored: np.ndarray  # (k,) bool

    def validate(self, n_candidates: int, top_k: int) -> None:
        """Raise :class:`PluginError` when the ranking breaks the policy contract."""
        k = min(top_k, n_candidates)
        order = np.asarray(self.order)
        props = np.asarray(self.propensities, dtype=np.float64)
        explored = np.asarray(self.explored)
        if order.shape != (k,) or props.shape != (k,) or explored.shape != (k,):
            raise PluginError(
                f"policy returned shapes order={order.shape}, propensities={props.shape}, "
                f"explored={explored.shape}; expected ({k},) each"
            )
        if k and not np.issubdtype(order.dtype, np.integer):
            raise PluginError(f"policy returned order of dtype {order.dtype}; expected integers")
        if k and (order.min() < 0 or order.max() >= n_candidates):
            raise PluginError("policy returned an index outside the candidate list")
        if len(set(order.tolist())) != k:
            raise PluginError("policy returned the same candidate twice")
        if not np.all(np.isfinite(props)) or np.any(props <= 0.0) or np.any(props > 1.0 + 1e-9):
            raise PluginError("policy returned propensities outside (0, 1]")


@dataclass
class RewardContext:
    """One reward, with what a policy or scorer needs to learn from it."""

    event_id: str
    item_id: str
    value: float  # finite, in [-1, 1]
    score: float  # the scorer's score logged for this item at Rank time
    position: int  # 0-based position at which the item was shown
    propensity: float  # the logged propensity of that position (for off-policy correction)
    user_embedding: np.ndarray  # (d,) float32
    item_embedding: np.ndarray  # (d,) float32
    #: The policy and the scorer that served the event (empty when unknown).
    policy: str = ""
    scorer: str = ""


class Policy(ABC):
    """Chooses an ordering of scored candidates, balancing exploitation and exploration.

    Subclasses set ``name`` and implement :meth:`rank`; a learning policy sets
    ``stateful = True`` and implements :meth:`update`. Parameters come from
    ``[ranking.policies.<name>]`` and are validated against the nested ``Params`` model.
    """

    #: Unique name used in config and in ``RankRequest.policy``.
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when the policy learns from rewards (``update`` returns deltas).
    stateful: ClassVar[bool] = False
    #: Which rewards a stateful policy learns from: ``"own"`` (default) = the rewards of
    #: events this policy ranked; ``"all"`` = every reward (off-policy learning: correct
    #: by ``RewardContext.propensity`` where the estimator needs it).
    learns_from: ClassVar[Literal["own", "all"]] = "own"
    #: The parameter model (a :class:`PluginParams` subclass); ``None`` = API 1 (raw dict).
    Params: ClassVar[type[PluginParams] | None] = None

    def __init__(self, **params: Any) -> None:
        self.params: Any = _params("ranking.policies", type(self), params)

    @abstractmethod
    def rank(self, ctx: RankContext) -> Ranking:
        """Order the candidates; see :class:`Ranking` for the propensity contract."""

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta | None:
        """The additive statistics delta for one reward (None when nothing to learn).

        Must not mutate ``stats``: the engine applies the delta only after the state
        store has made the reward durable."""
        return None
