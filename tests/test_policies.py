"""Built-in policies: the contract (incl. empirical propensities), exact propensity
formulas, learning from rewards, the linear-model math, and that the contract checker
itself catches broken policies."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorank.plugins.api import Policy, PolicyStats, RankContext, Ranking, RewardContext
from explorank.plugins.builtin import _sampling
from explorank.plugins.builtin.policies_basic import EpsilonGreedyPolicy, SoftmaxPolicy
from explorank.plugins.builtin.policies_linear import LinTSPolicy, LinUCBPolicy
from explorank.plugins.errors import PluginError
from explorank.plugins.manager import PluginManager
from explorank.plugins.testing import (
    PolicyContractError,
    check_empirical,
    check_policy_contract,
    make_context,
)

POLICIES = PluginManager(block_external=True).policy_classes()
BUILTINS = ["greedy", "epsilon_greedy", "softmax", "ucb1", "thompson", "linucb", "lin_ts"]
#: the hybrid policies estimate the reward noise, which these noise-free rewards drive to
#: its floor: they learn under click noise instead (tests/test_hybrid_policies.py)
STATEFUL = ["ucb1", "thompson", "linucb", "lin_ts"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_passes_contract(name: str) -> None:
    report = check_policy_contract(POLICIES[name], empirical_trials=4000)
    assert report.cases >= 40
    if name not in ("greedy", "ucb1", "linucb"):  # stochastic: several items really tested
        assert report.empirical_items_checked >= 6


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("epsilon_greedy", {"epsilon": 0.0}),
        ("epsilon_greedy", {"epsilon": 1.0}),
        ("softmax", {"temperature": 1e-4}),
        ("softmax", {"temperature": 100.0}),
        ("ucb1", {"prior_weight": 0.0, "c": 2.0}),
        ("thompson", {"gamma": 0.0, "samples": 16, "pool_size": 3}),
        ("thompson", {"gamma": 1.0}),
        ("linucb", {"dim": 0, "alpha": 3.0}),
        ("lin_ts", {"dim": 4, "posterior_scale": 5.0, "pool_size": 4}),
    ],
)
def test_builtin_contract_with_parameters(name: str, params: dict[str, Any]) -> None:
    check_policy_contract(
        POLICIES[name], params=params, n_candidates=(1, 3, 50, 2000), empirical_trials=1500
    )


@st.composite
def score_vectors(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    n = draw(st.integers(1, 200))
    pool = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=6))
    values = draw(st.lists(st.sampled_from(pool) | st.floats(-1e3, 1e3), min_size=n, max_size=n))
    top_k = draw(st.integers(1, n + 5))
    return np.array(values, dtype=np.float64), top_k


@pytest.mark.parametrize("name", BUILTINS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=score_vectors(), seed=st.integers(0, 2**32 - 1))
def test_property_valid_and_deterministic(
    name: str, case: tuple[np.ndarray, int], seed: int
) -> None:
    scores, top_k = case
    policy = POLICIES[name]()
    a = policy.rank(make_context(scores, top_k=top_k, seed=seed))
    b = policy.rank(make_context(scores, top_k=top_k, seed=seed))
    a.validate(len(scores), top_k)
    assert np.array_equal(a.order, b.order) and np.array_equal(a.propensities, b.propensities)
    assert np.array_equal(a.explored, b.explored)
    if name in ("greedy", "ucb1", "linucb"):
        assert np.all(a.propensities == 1.0)
    if name == "greedy":  # descending scores, ties by index
        assert np.array_equal(a.order, np.argsort(-scores, kind="stable")[:top_k])


@given(values=st.lists(st.integers(-3, 3), min_size=1, max_size=300), k=st.integers(1, 310))
@settings(max_examples=80, deadline=None)
def test_greedy_topk_matches_stable_argsort(values: list[int], k: int) -> None:
    v = np.array(values, dtype=np.float64)
    assert np.array_equal(_sampling.greedy_topk(v, k), np.argsort(-v, kind="stable")[:k])


def _rank(
    policy: Policy,
    scores: list[float] | np.ndarray,
    top_k: int,
    seed: int = 0,
    stats: PolicyStats | None = None,
) -> Ranking:
    return policy.rank(
        make_context(np.asarray(scores, dtype=np.float64), top_k=top_k, seed=seed, stats=stats)
    )


def test_epsilon_greedy_propensity_formula() -> None:
    policy = EpsilonGreedyPolicy(epsilon=0.3)
    scores = np.array([0.1, 0.9, 0.5, 0.5, -2.0])
    for seed in range(50):
        r = _rank(policy, scores, 4, seed)
        taken: list[int] = []
        for j, item in enumerate(r.order):
            remaining = [i for i in np.argsort(-scores, kind="stable") if i not in taken]
            expected = 0.7 * (item == remaining[0]) + 0.3 / (5 - j)
            assert r.propensities[j] == pytest.approx(expected)
            taken.append(int(item))


def test_softmax_propensities_are_plackett_luce_and_slates_match() -> None:
    """All 6 orderings of 3 items: empirical slate frequency = product of propensities,
    and each propensity is the softmax over the remaining items."""
    scores = np.array([0.2, 0.0, -0.1])
    policy = SoftmaxPolicy(temperature=0.2)
    logits = scores / 0.2
    counts: dict[tuple[int, ...], int] = {}
    trials = 6000
    for seed in range(trials):
        r = _rank(policy, scores, 3, seed)
        rem = list(range(3))
        for j, item in enumerate(r.order):
            z = np.exp(logits[rem] - logits[rem].max())
            assert r.propensities[j] == pytest.approx(z[rem.index(item)] / z.sum(), rel=1e-9)
            rem.remove(int(item))
        counts[tuple(r.order.tolist())] = counts.get(tuple(r.order.tolist()), 0) + 1
    for perm in itertools.permutations(range(3)):
        rem, prob = list(range(3)), 1.0
        for item in perm:
            z = np.exp(logits[rem])
            prob *= z[rem.index(item)] / z.sum()
            rem.remove(item)
        assert abs(counts.get(perm, 0) / trials - prob) < 5 * np.sqrt(prob * (1 - prob) / trials)


def test_softmax_extreme_scales_never_underflow() -> None:
    policy = SoftmaxPolicy(temperature=0.01)
    for scores in ([1e300, -1e300, 0.0], [5e3, -5e3, 1.0, 1.0], [-1e9] * 4 + [1e9]):
        r = _rank(policy, scores, len(scores))
        assert np.all(r.propensities > 0) and np.all(r.propensities <= 1)
    r = _rank(policy, [1e6, -1e6, -1e6], 3)  # floored items: uniform among themselves
    assert r.order[0] == 0 and r.propensities[0] == 1.0
    assert r.propensities[1] == pytest.approx(0.5) and r.propensities[2] == 1.0


def test_nan_scores_rejected() -> None:
    from explorank.errors import InvalidArgumentError

    for name in BUILTINS:
        with pytest.raises(InvalidArgumentError, match="scores"):
            _rank(POLICIES[name](), [0.1, float("nan")], 2)


def _reward(ctx: RankContext, item: int, value: float) -> RewardContext:
    return RewardContext(
        event_id="e",
        item_id=ctx.item_ids[item],
        value=value,
        score=float(ctx.scores[item]),
        position=0,
        propensity=1.0,
        user_embedding=ctx.user_embedding,
        item_embedding=ctx.item_embeddings[item],
    )


@pytest.mark.parametrize("name", STATEFUL)
def test_learns_from_rewards(name: str) -> None:
    """An item the scorer ranks 7th of 10 rises to the top once the policy has seen it
    rewarded: a simulated loop shows top-3 slates (the policy must explore to find it),
    the item pays +1, the others -0.5."""
    policy = POLICIES[name]()
    scores = np.linspace(0.5, -0.4, 10)  # greedy by score: 0, 1, ..., 9
    stats = PolicyStats()

    def mean_position(item: int) -> float:
        return float(
            np.mean(
                [list(_rank(policy, scores, 10, s, stats).order).index(item) for s in range(20)]
            )
        )

    before = mean_position(6)
    for t in range(150):
        ctx = make_context(scores, top_k=3, seed=(1, t), stats=stats)
        shown = policy.rank(ctx).order
        for item in shown:
            delta = policy.update(_reward(ctx, int(item), 1.0 if item == 6 else -0.5), stats)
            assert delta is not None
            stats.apply(delta)
    after = mean_position(6)
    assert before >= 4 and after <= 1.0, (before, after)


@pytest.mark.parametrize("cls", [LinUCBPolicy, LinTSPolicy])
@pytest.mark.parametrize("dim", [0, 8])
def test_linear_posterior_matches_direct_ridge(cls: type, dim: int) -> None:
    ridge = 0.7
    policy = cls(dim=dim, ridge=ridge)
    rng = np.random.default_rng(3)
    n = 30
    ctx = make_context(rng.normal(size=n), top_k=5)
    x_all = policy.features(ctx.user_embedding, ctx.item_embeddings)
    stats = PolicyStats()
    rows, rewards = [], []
    for t in range(40):
        item = int(rng.integers(n))
        value = float(rng.uniform(-1, 1))
        stats.apply(policy.update(_reward(ctx, item, value), stats))
        rows.append(policy.features(ctx.user_embedding, ctx.item_embeddings[item : item + 1])[0])
        rewards.append(value)
        policy.rank(make_context(ctx.scores, top_k=5, seed=t, stats=stats))  # exercise the cache
    post = policy.posterior(stats, x_all.shape[1])
    assert post.rank_one_updates > 0  # the Sherman-Morrison path ran
    x, r = np.array(rows), np.array(rewards)
    direct = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ r)
    np.testing.assert_allclose(post.theta, direct, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(
        post.a_inv, np.linalg.inv(x.T @ x + ridge * np.eye(x.shape[1])), rtol=1e-7, atol=1e-9
    )
    s = post.sqrt_factor()
    np.testing.assert_allclose(s @ s.T, post.a_inv, rtol=1e-7, atol=1e-10)
    # A fresh policy (full factorisation) agrees with the incrementally updated one.
    fresh = cls(dim=dim, ridge=ridge).posterior(stats, x_all.shape[1])
    np.testing.assert_allclose(fresh.theta, post.theta, rtol=1e-8, atol=1e-10)


def test_linucb_index_is_score_prior_plus_theta_plus_bonus() -> None:
    policy = LinUCBPolicy(dim=6, alpha=0.5, prior_weight=2.0)
    ctx = make_context(np.random.default_rng(0).normal(size=12), top_k=12)
    stats = PolicyStats()
    for i in range(5):
        stats.apply(policy.update(_reward(ctx, i, 1.0 - 0.4 * i), stats))
    ctx.stats = stats
    x = policy.features(ctx.user_embedding, ctx.item_embeddings)
    a = stats.arrays["A"] + np.eye(x.shape[1])
    theta = np.linalg.solve(a, stats.arrays["b"])
    bonus = np.sqrt(np.einsum("ij,ij->i", x @ np.linalg.inv(a), x))
    index = 2.0 * ctx.scores + x @ theta + 0.5 * bonus
    assert np.array_equal(policy.rank(ctx).order, np.argsort(-index, kind="stable"))


def test_linear_stats_of_other_dimension_rejected() -> None:
    stats = PolicyStats(arrays={"A": np.eye(5), "b": np.zeros(5)})
    with pytest.raises(PluginError, match="dimension"):
        _rank(LinUCBPolicy(dim=32), [0.1, 0.2], 2, stats=stats)


def test_slate_from_samples_gamma_one_is_uniform() -> None:
    rng = np.random.default_rng(0)
    order, props = _sampling.slate_from_samples(
        rng.normal(size=(8, 5)), np.arange(5), 5, 5, 1.0, rng
    )
    assert sorted(order.tolist()) == list(range(5))
    np.testing.assert_allclose(props, 1.0 / np.arange(5, 0, -1))


# ------------------------------------------------- the checker catches broken policies


class _MisreportingSoftmax(SoftmaxPolicy):
    name = "misreporting_softmax"

    def rank(self, ctx: RankContext) -> Ranking:
        r = super().rank(ctx)
        return Ranking(r.order, np.sqrt(r.propensities), r.explored)  # too large


class _UnseededPolicy(Policy):
    name = "unseeded"

    def rank(self, ctx: RankContext) -> Ranking:
        k = min(ctx.top_k, len(ctx.scores))
        order = np.random.default_rng().permutation(len(ctx.scores))[:k]
        return Ranking(
            order, 1.0 / np.arange(len(ctx.scores), len(ctx.scores) - k, -1), np.zeros(k, bool)
        )


class _FirstPositionOnlyUniform(Policy):
    """Uniform slate but reports position 2 as if position 1 were still available."""

    name = "bad_position_two"

    def rank(self, ctx: RankContext) -> Ranking:
        n = len(ctx.scores)
        k = min(ctx.top_k, n)
        order = ctx.rng.permutation(n)[:k]
        return Ranking(order, np.full(k, 1.0 / n), np.zeros(k, bool))


class _NoisyPropensityPolicy(Policy):
    """Draws p from a random distribution each time but logs a wrong (flattened) value,
    so only the IPS form of the check can see it."""

    name = "noisy_propensity"

    def rank(self, ctx: RankContext) -> Ranking:
        n = len(ctx.scores)
        p = ctx.rng.dirichlet(np.full(n, 0.3))
        first = int(ctx.rng.choice(n, p=p))
        return Ranking(np.array([first]), np.array([0.5 * p[first] + 0.5 / n]), np.zeros(1, bool))


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (_MisreportingSoftmax, "frequency"),
        (_UnseededPolicy, "not deterministic"),
        (_FirstPositionOnlyUniform, "position 2"),
    ],
)
def test_contract_checker_catches_broken_policies(cls: type[Policy], match: str) -> None:
    with pytest.raises(PolicyContractError, match=match):
        check_policy_contract(
            cls,
            n_candidates=(3, 7) if cls is not _UnseededPolicy else (7,),
            empirical_trials=3000,
            empirical_candidates=3,
        )


def test_ips_check_catches_misreported_random_propensities() -> None:
    scores = np.zeros(4)
    with pytest.raises(PolicyContractError, match="1\\{chosen\\}/propensity"):
        check_empirical(_NoisyPropensityPolicy(), scores, top_k=1, trials=4000)
