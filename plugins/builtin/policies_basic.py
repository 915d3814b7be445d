"""Stateless built-in policies: ``greedy``, ``epsilon_greedy`` and ``softmax``.

They order candidates from the scorer's scores alone (no learned statistics), so
their propensities depend only on the scores and the request's seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from explorank.plugins.api import PluginParams, Policy, RankContext, Ranking
from explorank.plugins.builtin._sampling import (
    MIN_PROPENSITY,
    checked_scores,
    deterministic_ranking,
    greedy_topk,
    plackett_luce,
    slate_size,
)
from explorank.plugins.hookspecs import hookimpl


class GreedyPolicy(Policy):
    """Pure exploitation: sort by score, ties broken by candidate index (stable), so
    the ranking is deterministic and every propensity is 1."""

    name = "greedy"
    description = "sort by score (ties by index); propensity 1"

    class Params(PluginParams):
        """No parameters."""

    def rank(self, ctx: RankContext) -> Ranking:
        scores = checked_scores(ctx)
        return deterministic_ranking(scores, slate_size(ctx, scores.shape[0]))


class EpsilonGreedyPolicy(Policy):
    """At each position: with probability ε a uniform pick among the remaining
    candidates, otherwise the best remaining one (by score, ties by index).

    Propensity of position j: ``(1-ε)·[chosen is best remaining] + ε/remaining``.
    ``explored[j]`` is True when the item differs from the greedy ranking's item j.
    """

    name = "epsilon_greedy"
    description = "per position: uniform pick with probability epsilon, else best remaining"

    class Params(PluginParams):
        epsilon: float = Field(0.1, ge=0.0, le=1.0, description="exploration probability")

    @property
    def epsilon(self) -> float:
        return float(self.params.epsilon)

    def rank(self, ctx: RankContext) -> Ranking:
        scores = checked_scores(ctx)
        n = scores.shape[0]
        k = slate_size(ctx, n)
        eps = self.epsilon
        coins = ctx.rng.random(k)
        picks = ctx.rng.random(k)
        # The greedy top-k, walked with a pointer: with j items taken, the best remaining
        # item is the first untaken one, always among the first j + 1 entries.
        greedy = greedy_topk(scores, k)
        taken = np.zeros(n, dtype=bool)
        order = np.empty(k, dtype=np.int64)
        props = np.empty(k, dtype=np.float64)
        ptr = 0
        for j in range(k):
            while taken[greedy[ptr]]:
                ptr += 1
            best = int(greedy[ptr])
            remaining = n - j
            if coins[j] < eps:
                chosen = int(np.flatnonzero(~taken)[int(picks[j] * remaining)])
            else:
                chosen = best
            order[j] = chosen
            props[j] = (1.0 - eps) * (chosen == best) + eps / remaining
            taken[chosen] = True
        explored = order != greedy
        return Ranking(
            order=order, propensities=np.clip(props, MIN_PROPENSITY, 1.0), explored=explored
        )


class SoftmaxPolicy(Policy):
    """Boltzmann exploration over the slate: Plackett–Luce with logits score/temperature.

    Sampled exactly with the Gumbel-top-k trick; each propensity is the softmax of the
    chosen item over the remaining candidates, computed stably (the max is subtracted,
    so scores of any sign and scale work). Relative logits below -1e9 are floored (an
    item that far behind is never sampled while a better one remains; floored items
    are uniform among themselves and their propensities say so), so no propensity
    underflows to 0 and the reported value is always the probability actually used.
    The default temperature 0.1 suits cosine-like scores in [-1, 1].
    """

    name = "softmax"
    description = "Plackett-Luce sampling with P ∝ exp(score / temperature)"

    class Params(PluginParams):
        temperature: float = Field(
            0.1, gt=0.0, allow_inf_nan=False, description="logits are score / temperature"
        )

    @property
    def temperature(self) -> float:
        return float(self.params.temperature)

    def rank(self, ctx: RankContext) -> Ranking:
        scores = checked_scores(ctx)
        k = slate_size(ctx, scores.shape[0])
        with np.errstate(over="ignore"):
            logits = (scores - scores.max()) / self.temperature
        order, props = plackett_luce(logits, k, ctx.rng)
        explored = order != greedy_topk(scores, k)
        return Ranking(order=order, propensities=props, explored=explored)


@hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(GreedyPolicy)
    register(EpsilonGreedyPolicy)
    register(SoftmaxPolicy)
