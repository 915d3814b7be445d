"""Contract checks for scorer authors: ``check_scorer_contract(MyScorer)``.

The same checks run on every built-in scorer in explorank's own test suite::

    from explorank.plugins.testing import check_scorer_contract

    def test_my_scorer_honours_the_contract():
        check_scorer_contract(MyScorer, params={"weight": 0.5})

Scores are computed through the engine's own decision core
(:func:`explorank.engine.decision.score`), so a scorer that passes here is called exactly
as the server calls it (API 1 scorers, ``score(user, items)``, included). What is checked
(a failure raises :class:`ScorerContractError`, an AssertionError):

- shapes and values: one finite score per candidate, for every candidate count in
  ``n_candidates`` (1 .. 10,000), with empty statistics;
- determinism: the same context gives the same scores;
- no mutation of inputs: the user vector, the candidate matrix (handed over read-only, as
  the engine hands over the catalog matrix), the ids and the statistics are unchanged;
- for stateful scorers (``stateful = True``), over ``rounds`` simulated rewards:
  ``update`` returns a :class:`StatsDelta` (or None) with finite values and leaves the
  statistics it is given untouched; the deltas are additive (summing them first and
  applying them one by one give the same statistics); the statistics survive the store's
  round trip (float64 copies give identical scores); and learning has an effect (some
  candidate's score moves once its statistics are no longer empty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explorank.plugins.api import (
    PolicyStats,
    RewardContext,
    Scorer,
    ScorerContext,
    StatsDelta,
)

__all__ = ["ScorerContractError", "ScorerReport", "check_scorer_contract"]


class ScorerContractError(AssertionError):
    """A scorer broke the contract of :class:`explorank.plugins.api.Scorer`."""


@dataclass
class ScorerReport:
    scorer: str
    cases: int = 0
    rewards: int = 0
    notes: list[str] = field(default_factory=list)


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _fail(name: str, case: str, msg: str) -> ScorerContractError:
    return ScorerContractError(f"scorer {name!r} [{case}]: {msg}")


def _same(a: PolicyStats, b: PolicyStats) -> bool:
    if a.items.keys() != b.items.keys() or a.arrays.keys() != b.arrays.keys():
        return False
    return all(np.array_equal(a.items[k], b.items[k]) for k in a.items) and all(
        np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays
    )


class _Harness:
    def __init__(self, scorer: Scorer, name: str) -> None:
        self.scorer, self.name = scorer, name

    def scores(
        self,
        user: np.ndarray,
        ids: Sequence[str],
        items: np.ndarray,
        stats: PolicyStats,
        item_stats: PolicyStats,
        case: str,
    ) -> np.ndarray:
        from explorank.engine import decision as core

        book = {core.scorer_key(self.name): stats, core.ITEM_STATS: item_stats}
        frozen = items.copy()
        items.setflags(write=False)
        user_copy, ids_copy = user.copy(), list(ids)
        stats_before, item_stats_before = stats.copy(), item_stats.copy()
        try:
            out = core.score(
                self.scorer, self.name, user=user, cand_ids=ids, cand_vecs=items, stats=book
            )
        except core.PluginFailure as exc:
            raise _fail(self.name, case, exc.detail) from exc
        if not np.array_equal(items, frozen) or not np.array_equal(user, user_copy):
            raise _fail(self.name, case, "score() modified its input arrays")
        if list(ids) != ids_copy:
            raise _fail(self.name, case, "score() modified the candidate ids")
        if not (_same(stats, stats_before) and _same(item_stats, item_stats_before)):
            raise _fail(self.name, case, "score() modified the statistics it was given")
        return out


def check_scorer_contract(
    cls: type,
    *,
    params: Mapping[str, Any] | None = None,
    context: ScorerContext | None = None,
    n_candidates: Sequence[int] = (1, 2, 7, 100, 10_000),
    dim: int = 16,
    rounds: int = 60,
    seed: int = 0,
) -> ScorerReport:
    """Run the scorer contract on ``cls`` (see the module docstring); returns a report."""
    context = context or ScorerContext(embedding_dim=dim)
    dim = int(context.embedding_dim)
    scorer: Scorer = cls(context, **dict(params or {}))
    name = str(getattr(cls, "name", cls.__name__))
    report = ScorerReport(name)
    h = _Harness(scorer, name)
    rng = np.random.default_rng(seed)
    for n in n_candidates:
        case = f"n={n}"
        user, items = _unit(rng, dim), _unit(rng, n, dim)
        ids = [f"item-{i}" for i in range(n)]
        first = h.scores(user, ids, items, PolicyStats(), PolicyStats(), case)
        again = h.scores(user, ids, items.copy(), PolicyStats(), PolicyStats(), case)
        if not np.array_equal(first, again):
            raise _fail(name, case, "not deterministic: the same context gave different scores")
        report.cases += 1
    if getattr(cls, "stateful", False):
        _check_learning(h, report, dim, rounds, rng)
    return report


def _check_learning(
    h: _Harness, report: ScorerReport, dim: int, rounds: int, rng: np.random.Generator
) -> None:
    name, scorer = h.name, h.scorer
    n = 20
    users, items = _unit(rng, 4, dim), _unit(rng, n, dim)
    ids = [f"item-{i}" for i in range(n)]
    stats, deltas = PolicyStats(), []
    for r in range(rounds):
        u, j = int(rng.integers(0, 4)), int(rng.integers(0, 5))  # rewards on 5 of 20 items
        reward = RewardContext(
            event_id=f"e{r}",
            item_id=ids[j],
            value=float(np.clip(rng.normal(0.8 if j % 2 else -0.6, 0.2), -1.0, 1.0)),
            score=0.0,
            position=0,
            propensity=1.0,
            user_embedding=users[u],
            item_embedding=items[j],
            policy="contract",
            scorer=name,
        )
        before = stats.copy()
        delta = scorer.update(reward, stats)
        if not _same(stats, before):
            raise _fail(name, "update", "update() mutated the statistics it was given")
        if delta is None:
            continue
        if not isinstance(delta, StatsDelta):
            raise _fail(name, "update", f"update() returned {type(delta).__name__}")
        for key, arr in (*delta.items.items(), *delta.arrays.items()):
            if not np.all(np.isfinite(np.asarray(arr, dtype=np.float64))):
                raise _fail(name, "update", f"non-finite statistics for {key!r}")
        deltas.append(delta)
        stats.apply(delta)
        report.rewards += 1
    if not deltas:
        raise _fail(name, "update", "stateful, but update() returned no delta in any round")
    merged = StatsDelta()
    for d in deltas:
        merged.merge(d)
    summed = PolicyStats()
    summed.apply(merged)
    if not _stats_close(summed, stats):
        raise _fail(name, "additivity", "summed deltas and deltas applied one by one differ")
    empty = PolicyStats()
    learned = h.scores(users[0], ids, items.copy(), stats, empty, "learned")
    stored = PolicyStats(
        items={k: np.array(v, dtype=np.float64) for k, v in stats.items.items()},
        arrays={k: np.array(v, dtype=np.float64) for k, v in stats.arrays.items()},
        version=stats.version + 1,
    )
    reloaded = h.scores(users[0], ids, items.copy(), stored, empty, "round trip")
    if not np.array_equal(learned, reloaded):
        raise _fail(
            name, "round trip", "statistics copied as a store returns them score differently"
        )
    cold = h.scores(users[0], ids, items.copy(), PolicyStats(), empty, "cold")
    if np.array_equal(cold, learned):
        raise _fail(name, "learning", "scores did not change after learning from rewards")
    report.notes.append(f"{report.rewards} rewards learned; scores moved")


def _stats_close(a: PolicyStats, b: PolicyStats) -> bool:
    if a.items.keys() != b.items.keys() or a.arrays.keys() != b.arrays.keys():
        return False
    return all(np.allclose(a.items[k], b.items[k], rtol=1e-9, atol=1e-12) for k in a.items) and all(
        np.allclose(a.arrays[k], b.arrays[k], rtol=1e-9, atol=1e-12) for k in a.arrays
    )
