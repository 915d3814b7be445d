"""``ranking.user_representation``: the history vector (recency-weighted mean of catalog
embeddings), ``both``, and that a Rank whose user is described by history alone makes no
encoder call (counted on the backend)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import make_config

from explorank.engine.bundle import load_bundle
from explorank.engine.pipeline import Engine
from explorank.engine.requests import CandidateInput, RankInput
from explorank.engine.user_vectors import combine, history_vector, recency_weights


def test_recency_weighted_mean() -> None:
    v = np.eye(3, dtype=np.float32)
    assert recency_weights(3, 1.0) == pytest.approx([1.0, 0.5, 0.25])
    got = history_vector(v, half_life=1.0)
    expected = np.array([1.0, 0.5, 0.25]) / np.linalg.norm([1.0, 0.5, 0.25])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.linalg.norm(history_vector(v, half_life=1e9)) == pytest.approx(1.0)
    np.testing.assert_allclose(history_vector(v, 1e9), np.ones(3) / np.sqrt(3), rtol=1e-5)
    assert not history_vector(np.zeros((0, 4)), 5.0).any()


def test_combine_normalises_each_part() -> None:
    h, t = np.array([2.0, 0.0]), np.array([0.0, 0.5])
    np.testing.assert_allclose(combine(h, t), np.array([1.0, 1.0]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(combine(h, np.zeros(2)), [1.0, 0.0])
    np.testing.assert_allclose(combine(None, t), [0.0, 1.0])


class _Counting:
    """Wraps a backend's ``encode`` and counts the texts it encodes."""

    def __init__(self, engine: Engine) -> None:
        self.texts = 0
        inner = engine.backend.encode

        def encode(ids: Any, mask: Any) -> Any:
            self.texts += int(np.asarray(ids).shape[0])
            return inner(ids, mask)

        engine.backend.encode = encode


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["text", "history", "both"])
def test_history_users_need_no_encoder_call(tiny_bundle: Path, tmp_path: Path, mode: str) -> None:
    bundle = load_bundle(tiny_bundle)
    ids = [it.id for it in bundle.items]
    history = ids[:4]
    cands = [CandidateInput(i) for i in ids[4:14]]

    async def go() -> tuple[int, int, np.ndarray, np.ndarray]:
        config = make_config(tiny_bundle, tmp_path / "s.db", ranking={"user_representation": mode})
        engine = Engine.from_config(config)
        counter = _Counting(engine)
        await engine.start(warmup=False)
        try:
            await engine.rank(RankInput(history_item_ids=history, candidates=cands, top_k=3))
            only_history = counter.texts
            out = await engine.rank(
                RankInput(
                    history_item_ids=history,
                    context_text="late night sci-fi",
                    candidates=cands,
                    top_k=3,
                    event_id="with-context",
                )
            )
            event = await engine.events.get(out.event_id)
            assert event is not None
            hist_vec = engine.embedder.history_embedding(history)
            return only_history, counter.texts - only_history, event.user_embedding, hist_vec
        finally:
            await engine.stop(1.0)

    only_history, with_context, user, hist_vec = asyncio.run(go())
    expected_hist = history_vector(
        bundle.item_embeddings[[bundle.index[h] for h in history]], half_life=10.0
    )
    np.testing.assert_allclose(hist_vec, expected_hist, rtol=1e-6)
    if mode == "text":
        assert only_history == 1 and with_context == 1  # every new user text is encoded
    elif mode == "history":
        assert only_history == 0 and with_context == 0  # the context is not used at all
        np.testing.assert_allclose(user, expected_hist, rtol=1e-6)
    else:
        assert only_history == 0 and with_context == 1  # only the context text is encoded
        cos = float(user @ expected_hist)
        assert 0.3 < cos < 0.999  # both parts are in the user vector
