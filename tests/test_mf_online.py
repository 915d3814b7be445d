"""``mf_online``: cold start from text, learning from rewards, durable and replicated like a
policy's statistics; and the scorer contract for every built-in scorer."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest

from explorank.engine.decision import ITEM_STATS, scorer_key
from explorank.plugins.api import (
    PolicyStats,
    RewardContext,
    RewardRecord,
    ScoreContext,
    ScorerContext,
)
from explorank.plugins.builtin.scorer_mf_online import OnlineMFScorer
from explorank.plugins.builtin.scorers import MFScorer, NeuralScorer
from explorank.plugins.testing import ScorerContractError, check_scorer_contract
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, make_config
from tests.test_scorers import write_mlp_head

D = 16


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("params", [{}, {"dim": 4, "ridge": 0.1}])
def test_mf_online_contract(params: dict) -> None:
    report = check_scorer_contract(OnlineMFScorer, params=params)
    assert report.rewards == 60


def test_stateless_builtins_pass_the_contract(tmp_path: Path) -> None:
    assert check_scorer_contract(MFScorer).cases == 5
    write_mlp_head(tmp_path / "head.onnx", None, None, np.ones(3 * D), 0.0)  # type: ignore[arg-type]
    ctx = ScorerContext(embedding_dim=D, heads={"neural": {"path": str(tmp_path / "head.onnx")}})
    assert check_scorer_contract(NeuralScorer, context=ctx, params={"chunk_size": 64}).cases == 5


def test_contract_catches_a_scorer_that_writes_to_its_inputs() -> None:
    class InPlace(MFScorer):
        name = "in_place"

        def score(self, ctx: ScoreContext) -> np.ndarray:
            ctx.item_embeddings *= 2.0  # the shared catalog matrix!
            return super().score(ctx)

    with pytest.raises(ScorerContractError, match="read-only"):
        check_scorer_contract(InPlace)


def test_cold_start_is_the_text_score_and_rewards_move_it() -> None:
    rng = np.random.default_rng(0)
    ctx = ScorerContext(embedding_dim=D)
    online, mf = OnlineMFScorer(ctx), MFScorer(ctx)
    user, items = _unit(rng, D), _unit(rng, 6, D)
    ids = [f"i{j}" for j in range(6)]
    cold = online.score(ScoreContext(user, ids, items))
    np.testing.assert_array_equal(cold, mf.score(ScoreContext(user, ids, items)))

    stats = PolicyStats()
    for _ in range(8):  # this user likes i2 and dislikes i4
        for j, value in ((2, 1.0), (4, -1.0)):
            stats.apply(
                online.update(RewardContext("e", ids[j], value, 0.0, 0, 1.0, user, items[j]), stats)
            )
    warm = online.score(ScoreContext(user, ids, items, stats=stats))
    assert warm[2] > cold[2] + 0.3 and warm[4] < cold[4] - 0.3
    np.testing.assert_array_equal(warm[[0, 1, 3, 5]], cold[[0, 1, 3, 5]])  # untouched items
    assert np.argmax(warm) == 2


def test_mf_online_through_a_real_server_is_durable(tiny_bundle: Path, tmp_path: Path) -> None:
    """Ranked by name, learns from a reward whichever policy served it, and after a restart
    the durable statistics give the same scores."""
    db = tmp_path / "s.db"
    request = ranker_pb2.RankRequest(
        context_text="a slow space opera", top_k=4, scorer="mf_online", policy="greedy"
    )
    with ThreadServer(make_config(tiny_bundle, db)) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        first = stub.Rank(request, timeout=10)
        assert first.scorer == "mf_online"
        # a reward on an event ranked with another scorer still teaches mf_online
        other = stub.Rank(ranker_pb2.RankRequest(context_text="a slow space opera", top_k=4))
        for item in other.items[:2]:
            stub.Reward(
                ranker_pb2.RewardRequest(event_id=other.event_id, item_id=item.item_id, value=1.0)
            )
        learned = srv.engine.decider.stats[scorer_key("mf_online")]
        assert set(learned.items) == {i.item_id for i in other.items[:2]}
        durable = srv.run(srv.engine.store.load_stats(scorer_key("mf_online")))
        assert {k: v.tolist() for k, v in durable.items.items()} == {
            k: v.tolist() for k, v in learned.items.items()
        }
        after = stub.Rank(request, timeout=10)
    with ThreadServer(make_config(tiny_bundle, db)) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        restarted = stub.Rank(request, timeout=10)
    assert [(i.item_id, i.score) for i in restarted.items] == [
        (i.item_id, i.score) for i in after.items
    ]
    assert [i.item_id for i in after.items] != [i.item_id for i in first.items] or any(
        a.score != b.score for a, b in zip(after.items, first.items, strict=True)
    )


@pytest.mark.redis
def test_scorer_statistics_merge_through_redis(redis_url: str) -> None:
    """Two replicas' deltas for the scorer, replayed through Redis, equal the in-memory sum."""
    from explorank.plugins.builtin.redis_store import RedisStore
    from tests.store_records import make_event

    scorer = OnlineMFScorer(ScorerContext(embedding_dim=4), dim=3)
    prefix = f"explorank-test-mfo-{uuid.uuid4().hex}:"
    memory = PolicyStats()

    async def scenario() -> PolicyStats:
        stores = [RedisStore(url=redis_url, key_prefix=prefix, array_flush_every=1) for _ in "ab"]
        for store in stores:
            await store.open()
        try:
            for n in range(6):
                event = make_event(f"ev-{n}")
                await stores[n % 2].log_event(event)
                reward = RewardContext(
                    event.event_id,
                    event.ranked_ids[0],
                    1.0 if n % 3 else -1.0,
                    0.0,
                    0,
                    1.0,
                    event.user_embedding,
                    event.ranked_embeddings[0],
                )
                delta = scorer.update(reward, memory)
                memory.apply(delta)
                record = RewardRecord(event.event_id, reward.item_id, reward.value, 0.0)
                await stores[n % 2].record_reward(record, {scorer_key("mf_online"): delta})
            for store in stores:
                await store.flush()
            return await stores[0].load_stats(scorer_key("mf_online"))
        finally:
            for store in stores:
                await store.close()

    stored = asyncio.run(scenario())
    assert stored.items.keys() == memory.items.keys()
    for key in memory.items:
        np.testing.assert_allclose(stored.items[key], memory.items[key], rtol=1e-12)
    assert scorer_key("mf_online") != ITEM_STATS
