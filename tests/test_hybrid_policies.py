"""Hybrid neural-linear policies (``linucb_hybrid``, ``lin_ts_hybrid``): the contract, the
read-time joint posterior against a direct ridge solve of the whole model, incremental vs
fresh posteriors, what a new item starts from, and their additive statistics replayed
through the sqlite and Redis stores."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explorank.plugins.api import (
    EventRecord,
    PolicyStats,
    RewardContext,
    RewardRecord,
    StatsDelta,
)
from explorank.plugins.builtin.policies_hybrid import LinTSHybridPolicy, LinUCBHybridPolicy
from explorank.plugins.testing import check_policy_contract, make_context

HYBRIDS = [LinUCBHybridPolicy, LinTSHybridPolicy]
DIM = 8


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    v = rng.standard_normal((*shape, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _reward(
    item_id: str, value: float, score: float, user: np.ndarray, item: np.ndarray
) -> RewardContext:
    return RewardContext("e", item_id, value, score, 0, 1.0, user, item)


def _history(policy: Any, n_items: int, n_rewards: int, seed: int = 0) -> list[Any]:
    """Random rewards from random users on ``n_items`` items: (item index, value, score, user)."""
    rng = np.random.default_rng(seed)
    return [
        (
            int(rng.integers(n_items)),
            float(rng.choice([-1.0, 0.5, 1.0])),
            float(rng.normal()),
            _unit(rng),
        )  # fmt: skip
        for _ in range(n_rewards)
    ]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cls", HYBRIDS)
@pytest.mark.parametrize("params", [{}, {"item_dim": 2, "dim": 0, "text_dim": 0, "noise": 0.5}])
def test_hybrid_passes_contract(cls: type, params: dict[str, Any]) -> None:
    report = check_policy_contract(cls, params=params, empirical_trials=2000)
    assert report.cases >= 40
    if cls is LinTSHybridPolicy:
        assert report.empirical_items_checked >= 6


@pytest.mark.parametrize("item_dim", [0, 2])
def test_posterior_is_the_joint_ridge_solution(item_dim: int) -> None:
    """β̂, every θ̂_a, the predicted mean and the variance of Li et al.'s width equal a
    direct solve of the whole ridge problem (shared + one block per item), computed from
    the additive statistics after incremental updates."""
    ridge, item_ridge = 0.5, 2.0
    policy = LinUCBHybridPolicy(
        dim=4, text_dim=3, item_dim=item_dim, ridge=ridge, item_ridge=item_ridge
    )
    rng = np.random.default_rng(0)
    n = 12
    ctx = make_context(rng.normal(size=n), top_k=3, dim=DIM)
    stats = PolicyStats()
    rows: list[tuple[np.ndarray, np.ndarray, float, int]] = []
    for t, (i, value, _, user) in enumerate(_history(policy, n, 80)):
        score = float(ctx.scores[i])
        item = ctx.item_embeddings[i]
        stats.apply(policy.update(_reward(ctx.item_ids[i], value, score, user, item), stats))
        z, x, prior = policy.features(user, item[None, :], np.array([score]))
        rows.append((z[0], x, value - float(prior[0]), i))
        if t % 5 == 0:  # rank now and then: the cached sums are updated incrementally
            policy.rank(make_context(ctx.scores, top_k=3, seed=t, stats=stats, dim=DIM))
    d, m = rows[0][0].shape[0], rows[0][1].shape[0]
    design = np.zeros((len(rows), d + n * m))
    for r, (z, x, _, i) in enumerate(rows):
        design[r, :d] = z
        design[r, d + i * m : d + (i + 1) * m] = x
    y = np.array([row[2] for row in rows])
    reg = np.diag(np.r_[np.full(d, ridge), np.full(n * m, item_ridge)])
    cov = np.linalg.inv(design.T @ design + reg)
    w = cov @ design.T @ y
    post = policy.posterior(stats, d)
    assert policy._cache.folds > 0  # the incremental path ran
    np.testing.assert_allclose(post.beta, w[:d], rtol=1e-9, atol=1e-11)
    z, x, _ = policy.features(
        ctx.user_embedding, ctx.item_embeddings, ctx.scores.astype(np.float64)
    )
    pred = post.predict(z, x, *post.items(stats, ctx.item_ids))
    for i in range(n):
        f = np.zeros(d + n * m)
        f[:d], f[d + i * m : d + (i + 1) * m] = z[i], x
        assert pred.mean[i] == pytest.approx(f @ w, abs=1e-9)
        assert pred.var[i] == pytest.approx(f @ cov @ f, abs=1e-9)
    fresh = LinUCBHybridPolicy(
        dim=4, text_dim=3, item_dim=item_dim, ridge=ridge, item_ridge=item_ridge
    )
    np.testing.assert_allclose(fresh.posterior(stats, d).beta, post.beta, rtol=1e-9, atol=1e-12)
    # the noise estimate is the ridge residual bound: (1 + RSS + penalty) / (1 + n)
    resid = y - design @ w
    penalty = float(w @ reg @ w)
    expected = (1.0 + resid @ resid + penalty) / (1.0 + len(rows))
    assert post.noise_var == pytest.approx(expected, rel=1e-9)


def test_new_item_starts_from_the_shared_text_part_and_learns_its_bias() -> None:
    """Rewards that follow the items' text teach β; an item never shown is then ranked by
    what β predicts from its text. An item whose rewards contradict its text learns its own
    bias and drops."""
    rng = np.random.default_rng(1)
    n = 40
    items = _unit(rng, n)
    direction = items[0] - items[1]
    quality = items @ direction  # what the text says
    policy = LinUCBHybridPolicy(dim=4, text_dim=DIM, alpha=0.0, prior_weight=0.0, projection_seed=3)
    stats = PolicyStats()
    user = _unit(rng)
    ids = [f"item-{i}" for i in range(n)]
    for _ in range(30):
        for i in range(1, n):  # item 0 is never shown
            value = float(np.clip(quality[i] + 0.1 * rng.normal(), -1, 1))
            stats.apply(policy.update(_reward(ids[i], value, 0.0, user, items[i]), stats))
    ctx = make_context(np.zeros(n), top_k=n, stats=stats, dim=DIM)
    ctx.item_embeddings, ctx.user_embedding, ctx.item_ids = items, user, ids
    order = list(policy.rank(ctx).order)
    assert order.index(0) < 3  # the best text, never shown, ranks near the top
    # item 0's rewards now contradict its text: its own bias learns it
    for _ in range(30):
        stats.apply(policy.update(_reward(ids[0], -1.0, 0.0, user, items[0]), stats))
    ctx.stats = stats
    assert list(policy.rank(ctx).order).index(0) > n // 2


@pytest.mark.parametrize("cls", HYBRIDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_the_rewarding_item_under_click_noise(cls: type, seed: int) -> None:
    """Ten items, top-3 slates, clicks (+1) with probability 0.5 for the item the scorer
    ranks 7th and 0.1 for the others (-1 otherwise): after 300 slates the policy puts it
    first. (Click noise is what the noise estimate is for; with noise-free rewards it
    would fall to ``noise_floor`` and the policy would explore little.)"""
    policy = cls()
    scores = np.linspace(0.5, -0.4, 10)
    stats = PolicyStats()
    rng = np.random.default_rng(seed)

    def position(item: int) -> float:
        orders = [policy.rank(make_context(scores, top_k=10, seed=s, stats=stats)).order
                  for s in range(20)]  # fmt: skip
        return float(np.mean([list(o).index(item) for o in orders]))

    before = position(6)
    for t in range(300):
        ctx = make_context(scores, top_k=3, seed=(1, t), stats=stats)
        for item in policy.rank(ctx).order:
            click = rng.random() < (0.5 if item == 6 else 0.1)
            reward = _reward(ctx.item_ids[item], 1.0 if click else -1.0, float(scores[item]),
                             ctx.user_embedding, ctx.item_embeddings[item])  # fmt: skip
            stats.apply(policy.update(reward, stats))
    assert before >= 4 and position(6) <= 0.5


def test_stats_journal_names_changed_items() -> None:
    stats = PolicyStats()
    assert stats.items_changed_since(0) == set()
    stats.apply(StatsDelta(items={"a": np.ones(2)}))
    stats.apply(StatsDelta(arrays={"n": np.ones(1)}))
    stats.apply(StatsDelta(items={"b": np.ones(2), "c": np.ones(2)}))
    assert stats.items_changed_since(0) == {"a", "b", "c"}
    assert stats.items_changed_since(1) == {"b", "c"}
    assert stats.items_changed_since(3) == set()
    assert stats.items_changed_since(4) is None  # newer than the statistics: unknown
    copy = stats.copy()
    assert copy.items_changed_since(2) is None and copy.items_changed_since(3) == set()
    for i in range(_journal_size() + 10):
        stats.apply(StatsDelta(items={f"x{i}": np.ones(2)}))
    assert stats.items_changed_since(0) is None  # forgotten: the caller recomputes
    assert stats.items_changed_since(stats.version - 1) == {f"x{_journal_size() + 9}"}


def _journal_size() -> int:
    from explorank.plugins.stats import JOURNAL_SIZE

    return JOURNAL_SIZE


def test_replaced_statistics_are_recomputed_not_folded() -> None:
    """A reload from a store hands the policy a new statistics object: the posterior is
    recomputed from it, never folded onto sums of another object."""
    policy = LinUCBHybridPolicy(dim=4, text_dim=2)
    rng = np.random.default_rng(2)
    ctx = make_context(rng.normal(size=10), top_k=3, dim=DIM)
    a, b = PolicyStats(), PolicyStats()
    for i, value, score, user in _history(policy, 10, 30, seed=3):
        a.apply(
            policy.update(_reward(ctx.item_ids[i], value, score, user, ctx.item_embeddings[i]), a)
        )
    for i, value, score, user in _history(policy, 10, 30, seed=4):
        b.apply(
            policy.update(_reward(ctx.item_ids[i], value, score, user, ctx.item_embeddings[i]), b)
        )
    d = policy.shared_dim(DIM)
    policy.posterior(a, d)
    got = policy.posterior(b, d).beta
    np.testing.assert_allclose(got, LinUCBHybridPolicy(dim=4, text_dim=2).posterior(b, d).beta)


# ----------------------------------------------------------------------------- stores


def _learned(
    policy: Any, n_rewards: int = 60
) -> tuple[list[tuple[RewardRecord, StatsDelta]], PolicyStats]:
    """Rewards of a hybrid policy, each with its delta, and the in-memory statistics."""
    rng = np.random.default_rng(5)
    ctx = make_context(rng.normal(size=9), top_k=3, dim=DIM)
    stats = PolicyStats()
    out = []
    for e, (i, value, score, user) in enumerate(_history(policy, 9, n_rewards, seed=6)):
        delta = policy.update(
            _reward(ctx.item_ids[i], value, score, user, ctx.item_embeddings[i]), stats
        )
        stats.apply(delta)
        out.append((RewardRecord(f"ev-{e}", ctx.item_ids[i], value, time.time()), delta))
    return out, stats


def _event(event_id: str, item_id: str) -> EventRecord:
    return EventRecord(
        event_id=event_id, created_at=time.time(), user_id="u", scorer="dot",
        policy="linucb_hybrid", model_version="v", candidate_ids=[item_id],
        candidate_scores=np.zeros(1, dtype=np.float32), ranked_ids=[item_id],
        ranked_scores=[0.0], propensities=[1.0], explored=[False],
        user_embedding=np.zeros(DIM, dtype=np.float32),
        ranked_embeddings=np.zeros((1, DIM), dtype=np.float32), context_text="", top_k=1,
    )  # fmt: skip


async def _replay_through(
    store: Any, rewards: list[tuple[RewardRecord, StatsDelta]]
) -> PolicyStats:
    await store.open()
    try:
        for reward, delta in rewards:
            await store.log_event(_event(reward.event_id, reward.item_id))
            assert await store.record_reward(reward, {"linucb_hybrid": delta})
        await store.close()
        await store.open()  # what a restarted (or another) replica loads
        return await store.load_stats("linucb_hybrid")  # type: ignore[no-any-return]
    finally:
        await store.close()


def _assert_same_stats(policy: Any, loaded: PolicyStats, memory: PolicyStats) -> None:
    assert loaded.items.keys() == memory.items.keys()
    for key, vec in memory.items.items():
        np.testing.assert_allclose(loaded.items[key], vec, rtol=1e-12, atol=1e-12)
    assert loaded.arrays.keys() >= {"A", "b", "yy", "n_total"}
    for key, arr in memory.arrays.items():
        np.testing.assert_allclose(loaded.arrays[key], arr, rtol=1e-12, atol=1e-12)
    d = policy.shared_dim(DIM)
    fresh = type(policy)(**policy.params.model_dump())
    np.testing.assert_allclose(
        fresh.posterior(loaded, d).beta, policy.posterior(memory, d).beta, rtol=1e-9, atol=1e-12
    )


@pytest.mark.timeout(120)
def test_hybrid_stats_through_sqlite_equal_memory(tmp_path: Path) -> None:
    from explorank.plugins.builtin.sqlite_store import SqliteStore

    policy = LinUCBHybridPolicy(dim=4, text_dim=3, item_dim=1)
    rewards, memory = _learned(policy)
    loaded = asyncio.run(_replay_through(SqliteStore(path=str(tmp_path / "s.db")), rewards))
    _assert_same_stats(policy, loaded, memory)


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_hybrid_stats_through_redis_equal_memory(redis_url: str) -> None:
    from explorank.plugins.builtin.redis_store import RedisStore

    policy = LinTSHybridPolicy(dim=4, text_dim=3)
    rewards, memory = _learned(policy)
    store = RedisStore(url=redis_url, key_prefix=f"test-{uuid.uuid4().hex[:10]}:")
    loaded = asyncio.run(_replay_through(store, rewards))
    _assert_same_stats(policy, loaded, memory)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["linucb_hybrid", "lin_ts_hybrid"])
def test_hybrid_serves_and_learns_through_the_engine(
    tiny_bundle: Path, tmp_path: Path, policy: str
) -> None:
    """Rank -> Reward -> statistics through the engine (sqlite store): the item's own
    vector and the shared arrays are updated, and survive a restart."""
    from server_harness import make_config

    from explorank.engine.bundle import load_bundle
    from explorank.engine.pipeline import Engine
    from explorank.engine.requests import CandidateInput, RankInput

    ids = [it.id for it in load_bundle(tiny_bundle).items][:12]

    async def go() -> tuple[PolicyStats, PolicyStats]:
        config = make_config(tiny_bundle, tmp_path / "s.db", ranking={"default_policy": policy})
        engine = Engine.from_config(config)
        await engine.start(warmup=False)
        try:
            out = await engine.rank(
                RankInput(
                    context_text="space", candidates=[CandidateInput(i) for i in ids], top_k=3
                )
            )
            for j, item in enumerate(out.items):
                assert (
                    await engine.reward(out.event_id, item.item_id, 1.0 if j == 0 else -1.0)
                ).accepted
            live = engine.decider.stats.of(policy).copy()
        finally:
            await engine.stop(1.0)
        again = Engine.from_config(config)
        await again.start(warmup=False)
        try:
            return live, again.decider.stats.of(policy)
        finally:
            await again.stop(1.0)

    live, reloaded = asyncio.run(go())
    assert len(live.items) == 3 and float(live.arrays["n_total"][0]) == 3.0
    assert live.items.keys() == reloaded.items.keys()
    for key, vec in live.items.items():
        np.testing.assert_allclose(reloaded.items[key], vec, rtol=1e-12)
        assert vec[0] == 1.0  # one reward each: the bias part's count
    np.testing.assert_allclose(reloaded.arrays["A"], live.arrays["A"], rtol=1e-12)
