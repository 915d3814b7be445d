"""An example explorank plugin: the ``shuffle_top_m`` exploration policy.

It shows everything a policy plugin needs (plugin API 2): a
:class:`~explorank.plugins.api.Policy` subclass with a unique ``name``, its parameters as a
pydantic ``Params`` model (validated at start-up, with errors naming the setting), a
vectorized ``rank`` returning exact per-position propensities, and a ``register_policies``
hook.

The policy shows the ``m`` best candidates (by score) in a uniformly random order,
then the rest greedily — a cheap way to spread impressions among near-ties at the
top of the list, with propensities that are trivially exact: position j < m holds
one of the ``m - j`` top items not yet shown, each with probability 1/(m - j).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import Field

from explorank import hookimpl
from explorank.plugins.api import PluginParams, Policy, RankContext, Ranking

__version__ = "0.1.0"


class ShuffleTopMPolicy(Policy):
    """Uniformly shuffle the top ``m`` candidates by score; the rest in score order."""

    name = "shuffle_top_m"
    description = "uniform random order of the m best candidates, then greedy"

    class Params(PluginParams):
        m: int = Field(3, ge=1, strict=True, description="how many top candidates to shuffle")

    @property
    def m(self) -> int:
        return int(self.params.m)

    def rank(self, ctx: RankContext) -> Ranking:
        scores = np.asarray(ctx.scores, dtype=np.float64)
        n = scores.shape[0]
        k = min(ctx.top_k, n)
        greedy = np.argsort(-scores, kind="stable")  # ties broken by candidate index
        m = min(self.m, n)
        head = greedy[:m][ctx.rng.permutation(m)]
        order = np.concatenate([head, greedy[m:]])[:k].astype(np.int64)
        positions = np.arange(k)
        propensities = np.where(positions < m, 1.0 / np.maximum(m - positions, 1), 1.0)
        return Ranking(order=order, propensities=propensities, explored=order != greedy[:k])


@hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(ShuffleTopMPolicy)
