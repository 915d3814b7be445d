"""Event records shared by the state-store tests (sqlite and redis)."""

from __future__ import annotations

import time

import numpy as np

from explorank.plugins.api import EventRecord

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
