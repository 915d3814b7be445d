"""The decision core: one path for serving and evaluation, plugin failures named, and who
learns from which reward."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explorank.benchmarks.evaluation.simulator import rank_step
from explorank.engine import decision as core
from explorank.engine.bundle import load_bundle
from explorank.engine.pipeline import Engine
from explorank.engine.requests import CandidateInput, RankInput
from explorank.plugins.api import (
    Policy,
    PolicyStats,
    RankContext,
    Ranking,
    RewardContext,
    ScoreContext,
    Scorer,
    ScorerContext,
    StatsDelta,
)
from explorank.plugins.manager import PluginManager
from explorank.v1 import ranker_pb2, ranker_pb2_grpc
from tests.server_harness import ThreadServer, make_config

IDENTITY_POLICIES = ("softmax", "epsilon_greedy", "thompson", "lin_ts")


@pytest.mark.parametrize("policy", IDENTITY_POLICIES)
def test_same_seeded_request_same_decision_through_server_engine_and_simulator(
    tiny_bundle: Path, tmp_path: Path, policy: str
) -> None:
    bundle = load_bundle(tiny_bundle)
    cand_ids = [it.id for it in bundle.items[:25]]
    event_id = f"identity-{policy}"
    ranking = {"policies": {"epsilon_greedy": {"epsilon": 0.5}}, "seed": 7}
    request: dict[str, Any] = {
        "context_text": "a slow space opera about a family",
        "top_k": 6,
        "policy": policy,
        "scorer": "mf",
        "event_id": event_id,
    }

    # 1. through the gRPC server
    config = make_config(tiny_bundle, tmp_path / "a.db", ranking=ranking)
    with ThreadServer(config) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        resp = stub.Rank(
            ranker_pb2.RankRequest(
                candidates=[ranker_pb2.Candidate(item_id=i) for i in cand_ids], **request
            ),
            timeout=20,
        )
        logged = srv.run(srv.engine.events.get(event_id))
    via_grpc = ([i.item_id for i in resp.items], [i.propensity for i in resp.items])

    # 2. through Engine directly (a fresh engine and state)
    async def engine_rank() -> Any:
        engine = Engine.from_config(make_config(tiny_bundle, tmp_path / "b.db", ranking=ranking))
        await engine.start(warmup=False)
        try:
            return await engine.rank(
                RankInput(candidates=[CandidateInput(i) for i in cand_ids], **request)
            )
        finally:
            await engine.stop(1.0)

    out = asyncio.run(engine_rank())
    via_engine = ([i.item_id for i in out.items], [i.propensity for i in out.items])

    # 3. through the simulator's step, with the same plugins, user vector and seed
    pm = PluginManager(block_external=True)
    scorer = pm.create_scorer(
        "mf",
        ScorerContext(
            embedding_dim=bundle.embedding_dim, heads=bundle.heads(), bundle_dir=bundle.path
        ),
    )
    pol = pm.create_policy(policy, **ranking["policies"].get(policy, {}))
    decision = rank_step(
        pol,
        scorer,
        user=logged.user_embedding,
        cand_ids=cand_ids,
        cand_vecs=bundle.item_embeddings[[bundle.index[i] for i in cand_ids]],
        top_k=6,
        rng=core.event_rng(7, event_id),
        stats=core.StatsBook(),
    )
    via_simulator = (decision.ranked_ids, decision.propensities.tolist())

    assert via_grpc[0] == via_engine[0] == via_simulator[0]
    np.testing.assert_allclose(via_grpc[1], via_engine[1], rtol=0, atol=0)
    np.testing.assert_allclose(via_grpc[1], via_simulator[1], rtol=0, atol=0)


# ------------------------------------------------------------------ plugin failures
class _Scores(Scorer):
    name = "fixed"

    def __init__(self, context: ScorerContext, values: Any = None) -> None:
        super().__init__(context)
        self.values = values

    def score(self, ctx: ScoreContext) -> np.ndarray:
        if isinstance(self.values, Exception):
            raise self.values
        return np.asarray(self.values, dtype=np.float32)


class _Legacy(Scorer):
    """An API 1 scorer: score(user, items)."""

    name = "legacy"

    def score(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:  # type: ignore[override]
        return (items @ user).astype(np.float32)


class _BadPolicy(Policy):
    name = "bad"

    def __init__(self, ranking: Any) -> None:
        super().__init__()
        self.ranking = ranking

    def rank(self, ctx: RankContext) -> Ranking:
        if isinstance(self.ranking, Exception):
            raise self.ranking
        return self.ranking  # type: ignore[no-any-return]


def _call_score(scorer: Scorer, n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    return core.score(
        scorer,
        scorer.name,
        user=rng.standard_normal(3).astype(np.float32),
        cand_ids=[f"i{j}" for j in range(n)],
        cand_vecs=rng.standard_normal((n, 3)).astype(np.float32),
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.1, np.nan, 0.3, 0.4], "1 non-finite scores"),
        ([0.1, np.inf, -np.inf, 0.4], "2 non-finite scores"),
        ([0.1, 0.2], "returned 2 scores for 4 candidates"),
        (RuntimeError("head exploded"), "raised RuntimeError: head exploded"),
    ],
)
def test_misbehaving_scorer_is_a_named_plugin_failure(values: Any, message: str) -> None:
    with pytest.raises(core.PluginFailure) as info:
        _call_score(_Scores(ScorerContext(embedding_dim=3), values))
    assert info.value.kind == "scorer" and info.value.name == "fixed"
    assert message in str(info.value) and str(info.value).startswith("scorer 'fixed'")


def test_api1_scorer_is_called_with_user_and_items() -> None:
    rng = np.random.default_rng(0)
    user, items = rng.standard_normal(3).astype(np.float32), rng.standard_normal((4, 3))
    got = core.score(
        _Legacy(ScorerContext(embedding_dim=3)),
        "legacy",
        user=user,
        cand_ids=list("abcd"),
        cand_vecs=items.astype(np.float32),
    )
    np.testing.assert_allclose(got, items.astype(np.float32) @ user, rtol=1e-6)


@pytest.mark.parametrize(
    ("ranking", "message"),
    [
        (ValueError("no idea"), "ValueError: no idea"),
        (Ranking(np.array([0, 0]), np.ones(2), np.zeros(2, bool)), "same candidate twice"),
        (Ranking(np.array([0, 1]), np.array([0.5, 0.0]), np.zeros(2, bool)), "outside (0, 1]"),
        (Ranking(np.array([0, 1]), np.array([0.5, np.nan]), np.zeros(2, bool)), "outside (0, 1]"),
        (Ranking(np.array([0, 9]), np.ones(2), np.zeros(2, bool)), "outside the candidate list"),
        (Ranking(np.array([0]), np.ones(1), np.zeros(1, bool)), "expected (2,) each"),
        ("not a ranking", "not a Ranking"),
    ],
)
def test_misbehaving_policy_is_a_named_plugin_failure(ranking: Any, message: str) -> None:
    with pytest.raises(core.PluginFailure) as info:
        core.choose(
            _BadPolicy(ranking),
            "bad",
            scores=np.zeros(4, np.float32),
            user=np.zeros(3, np.float32),
            cand_ids=list("abcd"),
            cand_vecs=np.zeros((4, 3), np.float32),
            top_k=2,
            rng=np.random.default_rng(0),
        )
    assert info.value.kind == "policy" and message in str(info.value)


# ----------------------------------------------------------------------- learning
class _Learner(Policy):
    stateful = True

    def rank(self, ctx: RankContext) -> Ranking:  # pragma: no cover - not ranked here
        raise NotImplementedError

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        self.seen = reward
        return StatsDelta(items={reward.item_id: np.array([1.0])})


class _Own(_Learner):
    name = "own"


class _All(_Learner):
    name = "all"
    learns_from = "all"


class _Other(_Learner):
    name = "other"


class _LearningScorer(_Scores):
    name = "learning"
    stateful = True

    def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
        return StatsDelta(arrays={"n": np.array([1.0])})


def _event(policy: str) -> Any:
    from tests.store_records import make_event

    return make_event("ev-1", policy=policy, k=2)


def test_who_learns_from_a_reward() -> None:
    own, all_, other = _Own(), _All(), _Other()
    learning = _LearningScorer(ScorerContext(embedding_dim=4))
    deltas = core.deltas_for(
        _event("own"),
        "item-1",
        0.5,
        policies={"own": own, "all": all_, "other": other},
        scorers={"learning": learning, "fixed": _Scores(ScorerContext(embedding_dim=4))},
        stats={},
    )
    assert set(deltas) == {core.ITEM_STATS, "own", "all", core.scorer_key("learning")}
    assert deltas[core.ITEM_STATS].items["item-1"].tolist() == [1.0, 0.5]
    # the context says who served the event, and carries the logged propensity
    assert own.seen.policy == "own" and all_.seen.position == 1
    assert own.seen.propensity == _event("own").propensities[1]
    assert not hasattr(other, "seen")


def test_non_finite_delta_is_a_named_plugin_failure() -> None:
    class Broken(_Learner):
        name = "own"

        def update(self, reward: RewardContext, stats: PolicyStats) -> StatsDelta:
            return StatsDelta(items={reward.item_id: np.array([np.nan])})

    with pytest.raises(core.PluginFailure, match="policy 'own' update.. returned non-finite"):
        core.deltas_for(
            _event("own"), "item-0", 1.0, policies={"own": Broken()}, scorers={}, stats={}
        )


def test_stats_book_applies_and_creates() -> None:
    book = core.StatsBook()
    book.apply({"a": StatsDelta(items={"i": np.array([1.0, 2.0])})})
    book.apply({"a": StatsDelta(items={"i": np.array([1.0, -1.0])})})
    assert book["a"].items["i"].tolist() == [2.0, 1.0] and book["a"].version == 2
    assert book.of("new").items == {} and "new" in book


def test_event_rng_is_a_function_of_seed_and_event_id() -> None:
    a = core.event_rng(3, "e").random(4)
    assert np.array_equal(a, core.event_rng(3, "e").random(4))
    assert not np.array_equal(a, core.event_rng(4, "e").random(4))
    assert not np.array_equal(a, core.event_rng(3, "f").random(4))


def test_scorers_see_ids_and_policy_independent_item_statistics() -> None:
    seen: dict[str, Any] = {}

    class Peek(Scorer):
        name = "peek"

        def score(self, ctx: ScoreContext) -> np.ndarray:
            seen["ids"], seen["counts"] = list(ctx.item_ids), ctx.item_counts()
            return np.zeros(len(ctx.item_ids), np.float32)

    book = core.StatsBook()
    book.apply(core.deltas_for(_event("ucb1"), "item-1", 1.0, policies={}, scorers={}, stats={}))
    book.apply(core.deltas_for(_event("ucb1"), "item-1", -0.5, policies={}, scorers={}, stats={}))
    core.score(
        Peek(ScorerContext(embedding_dim=3)),
        "peek",
        user=np.zeros(3, np.float32),
        cand_ids=["item-9", "item-1"],
        cand_vecs=np.zeros((2, 3), np.float32),
        stats=book,
    )
    assert seen["ids"] == ["item-9", "item-1"]
    assert seen["counts"].tolist() == [[0.0, 0.0], [2.0, 0.5]]
