"""The interfaces that plugins implement and the records they exchange with the engine.

Arrays in, arrays out: a scorer scores all candidates of a request in one call and a
policy orders them in one call, so no per-item Python loop sits on the Rank path.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from explorank.errors import ConfigError, UnavailableError
from explorank.plugins.errors import PluginError

# ----------------------------------------------------------------------------- scorers


@dataclass(frozen=True)
class ScorerContext:
    """What a scorer may use from the bundle it serves."""

    embedding_dim: int
    #: The manifest's ``heads`` section, with every ``path`` resolved to an absolute path.
    heads: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bundle_dir: Path | None = None
    #: ONNX Runtime execution providers the engine uses (for scorers that run ONNX heads).
    providers: Sequence[str] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1


class Scorer(ABC):
    """Turns a user embedding and a candidate embedding matrix into scores."""

    #: Unique name used in config and in ``RankRequest.scorer``.
    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, context: ScorerContext, **params: Any) -> None:
        self.context = context
        self.params = params

    @abstractmethod
    def score(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``user``: (d,) float32, ``items``: (n, d) float32 -> (n,) float32 scores.

        Higher is better. Must be vectorized over candidates (one call per request)."""


# ---------------------------------------------------------------------------- statistics


@dataclass
class StatsDelta:
    """An additive change to a policy's sufficient statistics.

    ``items`` maps an item id to a vector added to that item's statistics (e.g.
    ``[count, reward_sum]``); ``arrays`` maps a name to an array added element-wise
    (e.g. ``A`` += x xᵀ, ``b`` += r x). Deltas from several replicas merge by addition.
    """

    items: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.items and not self.arrays

    def merge(self, other: StatsDelta) -> None:
        for key, vec in other.items.items():
            if key in self.items:
                self.items[key] = self.items[key] + vec
            else:
                self.items[key] = np.array(vec, dtype=np.float64, copy=True)
        for key, arr in other.arrays.items():
            if key in self.arrays:
                self.arrays[key] = self.arrays[key] + arr
            else:
                self.arrays[key] = np.array(arr, dtype=np.float64, copy=True)


@dataclass
class PolicyStats:
    """A snapshot of one policy's additive sufficient statistics.

    ``version`` increases whenever a delta is applied or fresher statistics are loaded,
    so a policy can cache derived quantities (e.g. a Cholesky factor) per version.
    """

    items: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    version: int = 0

    def item(self, item_id: str, size: int) -> np.ndarray:
        """The statistics vector of one item, zeros when it has none."""
        vec = self.items.get(item_id)
        if vec is None:
            return np.zeros(size, dtype=np.float64)
        return vec

    def item_matrix(self, item_ids: Sequence[str], size: int) -> np.ndarray:
        """(n, size) statistics of several items, zeros for unseen ones."""
        out = np.zeros((len(item_ids), size), dtype=np.float64)
        if self.items:
            get = self.items.get
            for i, item_id in enumerate(item_ids):
                vec = get(item_id)
                if vec is not None:
                    out[i, : vec.shape[0]] = vec[:size]
        return out

    def apply(self, delta: StatsDelta) -> None:
        for key, vec in delta.items.items():
            cur = self.items.get(key)
            self.items[key] = np.asarray(vec, dtype=np.float64).copy() if cur is None else cur + vec
        for key, arr in delta.arrays.items():
            cur = self.arrays.get(key)
            self.arrays[key] = (
                np.asarray(arr, dtype=np.float64).copy() if cur is None else cur + arr
            )
        self.version += 1

    def copy(self) -> PolicyStats:
        return PolicyStats(
            items={k: v.copy() for k, v in self.items.items()},
            arrays={k: v.copy() for k, v in self.arrays.items()},
            version=self.version,
        )


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
        if k and (order.min() < 0 or order.max() >= n_candidates):
            raise PluginError("policy returned an index outside the candidate list")
        if len(set(order.tolist())) != k:
            raise PluginError("policy returned the same candidate twice")
        if not np.all(np.isfinite(props)) or np.any(props <= 0.0) or np.any(props > 1.0 + 1e-9):
            raise PluginError("policy returned propensities outside (0, 1]")


@dataclass
class RewardContext:
    """One reward, with what the policy needs to learn from it."""

    event_id: str
    item_id: str
    value: float  # finite, in [-1, 1]
    score: float  # the scorer's score logged for this item at Rank time
    position: int  # 0-based position at which the item was shown
    propensity: float  # the logged propensity of that position
    user_embedding: np.ndarray  # (d,) float32
    item_embedding: np.ndarray  # (d,) float32


class Policy(ABC):
    """Chooses an ordering of scored candidates, balancing exploitation and exploration."""

    #: Unique name used in config and in ``RankRequest.policy``.
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when the policy learns from rewards (``update`` returns deltas).
    stateful: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    @abstractmethod
    def rank(self, ctx: RankContext) -> Ranking:
        """Order the candidates; see :class:`Ranking` for the propensity contract."""

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta | None:
        """The additive statistics delta for one reward (None when nothing to learn).

        Must not mutate ``stats``: the engine applies the delta only after the state
        store has made the reward durable."""
        return None


# ------------------------------------------------------------------------- state stores


@dataclass
class EventRecord:
    """One logged Rank decision: enough to apply a later reward and to evaluate offline."""

    event_id: str
    created_at: float  # unix seconds
    user_id: str
    scorer: str
    policy: str
    model_version: str
    candidate_ids: list[str]
    candidate_scores: np.ndarray  # (n,) float32, scores of all candidates
    ranked_ids: list[str]  # (k,) the returned items, in order
    ranked_scores: list[float]
    propensities: list[float]
    explored: list[bool]
    user_embedding: np.ndarray  # (d,) float32
    ranked_embeddings: np.ndarray  # (k, d) float32, embeddings of the returned items
    context_text: str = ""
    top_k: int = 0

    def position_of(self, item_id: str) -> int:
        """0-based position of ``item_id`` in the returned ranking, -1 when absent."""
        try:
            return self.ranked_ids.index(item_id)
        except ValueError:
            return -1


@dataclass(frozen=True)
class RewardRecord:
    event_id: str
    item_id: str
    value: float
    created_at: float  # unix seconds

    def __post_init__(self) -> None:
        if not math.isfinite(self.value) or not -1.0 <= self.value <= 1.0:
            raise ValueError(f"reward value must be finite and in [-1, 1], got {self.value!r}")


class StateStore(ABC):
    """Durable event log, idempotent rewards and additive policy statistics."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when several engine replicas share this store; the engine then refreshes
    #: policy statistics from it every ``state.sync_interval_ms``.
    shared: ClassVar[bool] = False
    #: The option names this store accepts from ``state.options``; any other name is
    #: refused at start-up with a ConfigError (an empty tuple accepts anything).
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.OPTIONS)) if self.OPTIONS else []
        if unknown:
            raise ConfigError(
                f"state.options: unknown {self.name} option(s) {', '.join(unknown)}; "
                f"known: {', '.join(self.OPTIONS)}"
            )
        self.options = options

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect / create schema. Called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush everything pending and release resources."""

    @abstractmethod
    async def log_event(self, event: EventRecord) -> None:
        """Store a Rank event; it must be readable by ``get_event`` once this returns."""

    @abstractmethod
    async def get_event(self, event_id: str) -> EventRecord | None:
        """The logged event, or None when unknown (or dropped by retention)."""

    @abstractmethod
    async def record_reward(self, reward: RewardRecord, deltas: Mapping[str, StatsDelta]) -> bool:
        """Durably record a reward and add ``deltas`` (policy name -> delta) to the stored
        statistics, atomically and idempotently on (event_id, item_id).

        Returns True when recorded, False when (event_id, item_id) was already recorded
        (nothing applied). Raises :class:`StateUnavailableError` when it cannot make the
        reward durable (never a false acknowledgement)."""

    @abstractmethod
    async def load_stats(self, policy: str) -> PolicyStats:
        """The current statistics of ``policy`` (empty when none)."""

    @abstractmethod
    async def export_events(self, path: Path, fmt: str = "jsonl") -> int:
        """Write every event with its rewards joined; return the number of events."""

    async def apply_retention(self, max_age_s: float | None, max_events: int | None) -> int:
        """Drop events older than ``max_age_s`` or beyond the newest ``max_events``;
        return how many were dropped."""
        return 0

    async def healthy(self) -> bool:
        return True

    #: True when the store implements ``events_to_close`` / ``mark_events_closed`` (needed
    #: for ``state.default_reward``: a reward applied when an event's window closes).
    supports_window_close: ClassVar[bool] = False

    async def events_to_close(self, before: float, limit: int) -> list[EventRecord]:
        """Events created before ``before`` (unix seconds) not yet marked closed, oldest first."""
        return []

    async def mark_events_closed(self, event_ids: Sequence[str]) -> None:  # noqa: B027
        """Remember that these events' reward windows were closed (idempotent)."""


class StateUnavailableError(PluginError, UnavailableError):
    """The state store cannot be reached or cannot make a write durable."""
