"""What state stores implement, and the records they keep: the event log, idempotent
rewards and the additive statistics of every learner. Import these from
:mod:`explorank.plugins.api`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from explorank.errors import ConfigError, UnavailableError
from explorank.plugins.errors import PluginError
from explorank.plugins.params import PluginParams, validate_params
from explorank.plugins.stats import PolicyStats, StatsDelta

__all__ = [
    "CatalogChange",
    "EventRecord",
    "RewardRecord",
    "StateStore",
    "StateUnavailableError",
]


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
    #: (k, d) float32, embeddings of the returned items; (0, d) when every returned item is a
    #: catalog item of ``model_version`` (stored by reference, restored by the engine on read)
    ranked_embeddings: np.ndarray
    context_text: str = ""
    top_k: int = 0
    #: A digest of the Rank request that produced the event (user, context, history,
    #: candidates, top_k, scorer, policy): a repeated ``event_id`` must carry the same request.
    request_hash: str = ""

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


@dataclass(frozen=True)
class CatalogChange:
    """One change to the live catalog: ``kind`` is ``"add"`` (with the item's ``text``) or
    ``"remove"``. ``seq`` is assigned by the store: changes are applied in ``seq`` order."""

    kind: str
    item_id: str
    text: str = ""
    created_at: float = 0.0
    seq: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("add", "remove"):
            raise ValueError(f"catalog change kind must be 'add' or 'remove', got {self.kind!r}")


class StateStore(ABC):
    """Durable event log, idempotent rewards and additive policy statistics."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when several engine replicas share this store; the engine then refreshes
    #: policy statistics from it every ``state.sync_interval_ms``.
    shared: ClassVar[bool] = False
    #: The options this store accepts from ``state.options``, as a pydantic model
    #: (:class:`~explorank.plugins.params.PluginParams`): validated at start-up, and
    #: ``self.options`` is the validated model. ``None`` (API 1 stores) accepts any option
    #: and keeps ``self.options`` a dict.
    Options: ClassVar[type[PluginParams] | None] = None
    #: API 1: the option names accepted (any other is refused); superseded by ``Options``.
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        if self.Options is not None:
            self.options: Any = validate_params("state.options", self.Options, options)
            return
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

    #: True when the store implements ``log_catalog_changes`` / ``catalog_changes`` (needed
    #: for adding and retiring catalog items at run time).
    supports_catalog_changes: ClassVar[bool] = False

    async def log_catalog_changes(self, changes: Sequence[CatalogChange]) -> int:
        """Append ``changes`` durably, in order, assigning each the next sequence number;
        return the last one. Raises :class:`StateUnavailableError` when not durable."""
        raise NotImplementedError(f"the {self.name} store keeps no catalog changes")

    async def catalog_changes(self, after_seq: int = 0) -> list[CatalogChange]:
        """Every change with a sequence number above ``after_seq``, in order."""
        return []


class StateUnavailableError(PluginError, UnavailableError):
    """The state store cannot be reached or cannot make a write durable."""
