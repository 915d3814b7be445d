"""Contract checks for plugin authors: ``check_policy_contract(MyPolicy)`` here, and
``check_scorer_contract(MyScorer)`` (from :mod:`explorank.plugins.scorer_contract`, importable
from here too).

The same checks run on every built-in policy in explorank's own test suite::

    from explorank.plugins.testing import check_policy_contract

    def test_my_policy_honours_the_contract():
        check_policy_contract(MyPolicy, params={"width": 3})

or, with ``pytest_plugins = ["explorank.plugins.testing"]`` in a ``conftest.py``, the
``policy_contract`` fixture is that function.

What is checked (a failure raises :class:`PolicyContractError`, an AssertionError):

- ``Ranking.validate``: k = min(top_k, n) distinct indices, propensities in (0, 1],
  boolean ``explored`` — on random, tied, negative and large-scale scores, for every
  candidate count in ``n_candidates`` (1 .. 10,000) and several ``top_k`` (including
  top_k > n), with empty statistics and, for stateful policies, statistics built from
  the policy's own ``update`` deltas (which must not mutate the statistics passed in);
- determinism: the same seed gives the same order, propensities and ``explored``;
  the policy does not modify the scores it is given;
- empirical propensities: ``empirical_trials`` rankings of one context with seeds
  ``(seed, t)``. For every item whose reported first-position propensity is constant
  across trials, its first-position frequency must match it within a binomial
  tolerance (5 sd); for items whose propensity varies between draws (policies that
  sample a distribution first, like ``thompson``), the IPS identity
  ``E[1{o₁ = i} / p₁] = 1`` is checked instead. The same test runs at position 2
  conditional on the most frequent first item.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explorank.plugins.api import Policy, PolicyStats, RankContext, Ranking, RewardContext
from explorank.plugins.scorer_contract import (
    ScorerContractError,
    ScorerReport,
    check_scorer_contract,
)

__all__ = [
    "ContractReport",
    "PolicyContractError",
    "ScorerContractError",
    "ScorerReport",
    "check_policy_contract",
    "check_scorer_contract",
    "make_context",
    "make_scores",
    "warm_stats",
]

SCORE_KINDS = ("random", "tied", "negative", "large")


class PolicyContractError(AssertionError):
    """A policy broke the contract of :class:`explorank.plugins.api.Ranking`."""


@dataclass
class ContractReport:
    policy: str
    cases: int = 0
    empirical_items_checked: int = 0
    notes: list[str] = field(default_factory=list)


def make_scores(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Test scores: ``random`` N(0, 0.3) float32, ``tied`` (few distinct values), ``negative``
    (all < 0, spread 50), ``large`` (magnitudes up to 1e6, both signs)."""
    if kind == "random":  # float32, as scorers return them
        return rng.normal(0.0, 0.3, n).astype(np.float32)
    if kind == "tied":
        return rng.integers(0, 3, n).astype(np.float64) * 0.1
    if kind == "negative":
        return -np.abs(rng.normal(0.0, 50.0, n)) - 1.0
    if kind == "large":
        return rng.normal(0.0, 1.0, n) * 10.0 ** rng.integers(0, 7, n)
    raise ValueError(f"unknown score kind {kind!r}; one of {SCORE_KINDS}")


def make_context(
    scores: np.ndarray,
    *,
    top_k: int,
    seed: Any = 0,
    dim: int = 16,
    stats: PolicyStats | None = None,
    embedding_seed: int = 1234,
) -> RankContext:
    """A RankContext with unit-norm random embeddings and ids ``item-<i>``."""
    n = scores.shape[0]
    erng = np.random.default_rng(embedding_seed)
    items = erng.standard_normal((n, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    user = erng.standard_normal(dim).astype(np.float32)
    user /= np.linalg.norm(user)
    return RankContext(
        scores=np.asarray(scores),
        item_ids=[f"item-{i}" for i in range(n)],
        item_embeddings=items,
        user_embedding=user,
        top_k=top_k,
        rng=np.random.default_rng(seed),
        stats=stats if stats is not None else PolicyStats(),
    )


def _fail(policy: str, case: str, msg: str) -> PolicyContractError:
    return PolicyContractError(f"policy {policy!r} [{case}]: {msg}")


def warm_stats(
    policy: Policy, *, rounds: int = 60, n: int = 50, seed: int = 7, dim: int = 16
) -> PolicyStats:
    """Statistics built from the policy's own ``update`` deltas on simulated rewards;
    checks along the way that ``update`` leaves the statistics it is given untouched."""
    stats = PolicyStats()
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 0.3, n)
    for r in range(rounds):
        ctx = make_context(scores, top_k=3, seed=(seed, r), dim=dim, stats=stats)
        ranking = policy.rank(ctx)
        pos = int(rng.integers(0, len(ranking.order)))
        item = int(ranking.order[pos])
        value = float(np.clip(rng.normal(0.5 if item % 3 == 0 else -0.2, 0.3), -1.0, 1.0))
        reward = RewardContext(
            event_id=f"e{r}",
            item_id=ctx.item_ids[item],
            value=value,
            score=float(scores[item]),
            position=pos,
            propensity=float(ranking.propensities[pos]),
            user_embedding=ctx.user_embedding,
            item_embedding=ctx.item_embeddings[item],
        )
        before = stats.copy()
        delta = policy.update(reward, stats)
        if stats.version != before.version or not _same_stats(stats, before):
            raise _fail(policy.name, "update", "update() mutated the statistics it was given")
        if delta is not None:
            stats.apply(delta)
    return stats


def _same_stats(a: PolicyStats, b: PolicyStats) -> bool:
    if a.items.keys() != b.items.keys() or a.arrays.keys() != b.arrays.keys():
        return False
    return all(np.array_equal(a.items[k], b.items[k]) for k in a.items) and all(
        np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays
    )


def _check_one(
    policy: Policy, scores: np.ndarray, top_k: int, seed: int, stats: PolicyStats, case: str
) -> None:
    ctx = make_context(scores, top_k=top_k, seed=seed, stats=stats)
    frozen = np.array(ctx.scores, copy=True)
    ranking = policy.rank(ctx)
    if not isinstance(ranking, Ranking):
        raise _fail(policy.name, case, f"rank() returned {type(ranking).__name__}, not Ranking")
    try:
        ranking.validate(scores.shape[0], top_k)
    except Exception as exc:
        raise _fail(policy.name, case, str(exc)) from exc
    if np.asarray(ranking.explored).dtype != np.bool_:
        raise _fail(policy.name, case, "explored must be a boolean array")
    if not np.array_equal(np.asarray(ctx.scores), frozen):
        raise _fail(policy.name, case, "rank() modified ctx.scores")
    again = policy.rank(make_context(scores, top_k=top_k, seed=seed, stats=stats))
    if not (
        np.array_equal(ranking.order, again.order)
        and np.array_equal(ranking.propensities, again.propensities)
        and np.array_equal(ranking.explored, again.explored)
    ):
        raise _fail(policy.name, case, "not deterministic: same seed, different ranking")


def _position_test(
    policy: str, case: str, chosen: np.ndarray, props: np.ndarray, trials: int
) -> int:
    """Compare one position's choices with the reported propensities; returns #items tested."""
    tested = 0
    for item in np.unique(chosen):
        sel = chosen == item
        p = props[sel]
        hits = int(sel.sum())
        if np.ptp(p) <= 1e-9 * max(1.0, float(p.max())):
            expected = float(p.mean())
            tol = 5.0 * math.sqrt(expected * (1.0 - expected) / trials) + 2.0 / trials
            if abs(hits / trials - expected) > tol:
                raise _fail(
                    policy,
                    case,
                    f"item {item} chosen with frequency {hits / trials:.4f} "
                    f"but reported propensity {expected:.4f} (tolerance {tol:.4f})",
                )
        elif hits >= 20:
            ips = float((1.0 / p).sum()) / trials
            var = max(float((1.0 / p**2).sum()) / trials - ips**2, 0.0) / trials
            tol = 5.0 * math.sqrt(var) + 0.02
            if abs(ips - 1.0) > tol:
                raise _fail(
                    policy,
                    case,
                    f"item {item}: mean of 1{{chosen}}/propensity is {ips:.3f}, "
                    f"expected 1 (tolerance {tol:.3f})",
                )
        else:
            continue
        tested += 1
    return tested


def check_empirical(
    policy: Policy,
    scores: np.ndarray,
    *,
    top_k: int = 2,
    trials: int = 4000,
    seed: int = 0,
    stats: PolicyStats | None = None,
    case: str = "empirical",
) -> int:
    """The empirical propensity check on one context (see the module docstring)."""
    stats = stats if stats is not None else PolicyStats()
    n = scores.shape[0]
    k = min(top_k, n)
    first = np.empty(trials, dtype=np.int64)
    first_p = np.empty(trials)
    second = np.full(trials, -1, dtype=np.int64)
    second_p = np.ones(trials)
    for t in range(trials):
        r = policy.rank(make_context(scores, top_k=top_k, seed=(seed, t), stats=stats))
        first[t], first_p[t] = r.order[0], r.propensities[0]
        if k > 1:
            second[t], second_p[t] = r.order[1], r.propensities[1]
    tested = _position_test(policy.name, f"{case}, position 1", first, first_p, trials)
    if k > 1:
        top = int(np.bincount(first, minlength=n).argmax())
        sel = first == top
        if sel.sum() >= 200:
            tested += _position_test(
                policy.name,
                f"{case}, position 2 given item {top} first",
                second[sel],
                second_p[sel],
                int(sel.sum()),
            )
    return tested


def check_policy_contract(
    policy_cls: type[Policy] | Callable[..., Policy],
    *,
    params: Mapping[str, Any] | None = None,
    n_candidates: Sequence[int] = (1, 2, 7, 100, 10000),
    top_k: Sequence[int | None] = (1, 5, None),
    seed: int = 0,
    empirical_trials: int = 4000,
    empirical_candidates: int = 6,
    score_kinds: Sequence[str] = SCORE_KINDS,
) -> ContractReport:
    """Run the policy contract checks; raises :class:`PolicyContractError` on a breach.

    ``top_k`` entries of None mean "more than n" (n + 2); for n > 1000 only finite
    top_k and the random/tied score kinds run, to keep the check fast. Set
    ``empirical_trials=0`` to skip the empirical propensity check.
    """
    policy = policy_cls(**dict(params or {}))
    report = ContractReport(policy=str(getattr(policy, "name", policy_cls)))
    stats_sets = [("empty stats", PolicyStats())]
    if getattr(policy, "stateful", False):
        stats_sets.append(("warm stats", warm_stats(policy)))
    rng = np.random.default_rng(seed)
    for n in n_candidates:
        big = n > 1000
        for kind in score_kinds:
            if big and kind not in ("random", "tied"):
                continue
            scores = make_scores(kind, n, rng)
            for k in top_k:
                if k is None and big:
                    continue
                kk = n + 2 if k is None else k
                for label, stats in stats_sets:
                    if big and label != stats_sets[-1][0]:
                        continue
                    _check_one(
                        policy,
                        scores,
                        kk,
                        seed,
                        stats,
                        f"n={n}, top_k={kk}, {kind} scores, {label}",
                    )
                    report.cases += 1
    if empirical_trials > 0:
        erng = np.random.default_rng(seed + 1)
        scores = erng.normal(0.0, 0.15, empirical_candidates)
        scores[1] = scores[0]  # a tie
        for label, stats in stats_sets:
            report.empirical_items_checked += check_empirical(
                policy,
                scores,
                top_k=2,
                trials=empirical_trials,
                seed=seed,
                stats=stats,
                case=f"empirical, {label}",
            )
    return report


try:  # the fixture exists only where pytest does (plugin authors' test suites)
    import pytest

    @pytest.fixture
    def policy_contract() -> Callable[..., ContractReport]:
        """The :func:`check_policy_contract` function, as a fixture."""
        return check_policy_contract

except ImportError:  # pragma: no cover
    pass
