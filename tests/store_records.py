"""Event records shared by the state-store tests (sqlite and redis)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from explorank.plugins.api import EventRecord, RewardRecord

DIM = 4


def make_event(
    event_id: str, created_at: float | None = None, k: int = 3, *, policy: str = "ucb1"
) -> EventRecord:
    """A deterministic event (its arrays depend only on ``event_id``) returning ``k`` items."""
    rng = np.random.default_rng(sum(map(ord, event_id)))
    ids = [f"item-{i}" for i in range(k + 2)]
    return EventRecord(
        event_id=event_id,
        created_at=time.time() if created_at is None else created_at,
        user_id="u1",
        scorer="mf",
        policy=policy,
        model_version="v1",
        candidate_ids=ids,
        candidate_scores=rng.standard_normal(len(ids)).astype(np.float32),
        ranked_ids=ids[:k],
        ranked_scores=[0.5, 0.25, 0.125][:k],
        propensities=[0.9, 0.8, 0.7][:k],
        explored=[False, True, False][:k],
        user_embedding=rng.standard_normal(DIM).astype(np.float32),
        ranked_embeddings=rng.standard_normal((k, DIM)).astype(np.float32),
        context_text="ctx",
        top_k=k,
    )


def parse_export_row(row: dict[str, Any]) -> tuple[EventRecord, list[RewardRecord]]:
    """Inverse of :func:`export_row` (for offline evaluation and tests)."""
    ranked = sorted(row["ranked"], key=lambda r: r["position"])
    dim = len(row["user_embedding"])
    event = EventRecord(
        event_id=row["event_id"],
        created_at=row["created_at"],
        user_id=row["user_id"],
        scorer=row["scorer"],
        policy=row["policy"],
        model_version=row["model_version"],
        candidate_ids=list(row["candidate_ids"]),
        candidate_scores=np.asarray(row["candidate_scores"], dtype=np.float32),
        ranked_ids=[r["item_id"] for r in ranked],
        ranked_scores=[r["score"] for r in ranked],
        propensities=[r["propensity"] for r in ranked],
        explored=[r["explored"] for r in ranked],
        user_embedding=np.asarray(row["user_embedding"], dtype=np.float32),
        ranked_embeddings=np.asarray(row["ranked_embeddings"], dtype=np.float32).reshape(
            len(ranked), dim
        ),
        context_text=row.get("context_text", ""),
        top_k=row.get("top_k", 0),
    )
    rewards = [
        RewardRecord(row["event_id"], r["item_id"], r["value"], r["created_at"])
        for r in row["rewards"]
    ]
    return event, rewards


def iter_export_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the rows of an exported JSONL file."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
