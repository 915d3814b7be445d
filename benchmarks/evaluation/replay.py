"""Replay evaluation on logged interactions (rejection sampling, Li et al. 2011).

Each logged event is (user, logged item, reward). The policy is shown a candidate set made
of the logged item and ``K - 1`` other catalog items drawn uniformly at random, in a random
order. The event *counts* only when the policy's top pick is the logged item: its reward is
then the logged reward, the policy learns from it, and the user's history grows. Other
events are discarded as if they never happened. The replayed CTR is the mean reward of the
accepted events.

Li et al. prove the replayed value is unbiased when the logging policy chose the logged item
uniformly at random among the candidates. A ratings log (MovieLens) was not: users chose
what to watch and rate, so items people pick anyway are over-represented among accepted
events, and a policy that imitates popularity looks better than it would be online. The
caveat is printed and stored in the report whenever ``uniform`` is False.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from explorank.benchmarks.evaluation.representations import Representation
from explorank.benchmarks.evaluation.simulator import rank_step
from explorank.engine import decision as core
from explorank.plugins.api import Policy, Scorer

BIAS_CAVEAT = (
    "CAVEAT: replay (Li et al. 2011) is unbiased only when the logging policy picked the logged "
    "item uniformly at random among the candidates. This log was not uniformly random (users "
    "chose what they rated), so replayed CTRs favour policies that imitate the logging "
    "behaviour; read them as a ranking sanity check, not as online CTRs."
)


@dataclass
class ReplayResult:
    events: int
    accepted: int
    reward_sum: float
    distinct_items: int
    uniform_log: bool

    @property
    def ctr(self) -> float:
        return self.reward_sum / self.accepted if self.accepted else math.nan

    def summary(self) -> dict[str, Any]:
        ctr = self.ctr
        se = (
            math.sqrt(ctr * (1 - ctr) / self.accepted)
            if self.accepted and 0 <= ctr <= 1
            else math.nan
        )
        return {
            "events": self.events,
            "accepted": self.accepted,
            "acceptance_rate": self.accepted / self.events if self.events else math.nan,
            "replay_ctr": ctr,
            "replay_ctr_stderr": se,
            "distinct_accepted_items": self.distinct_items,
            "uniform_log": self.uniform_log,
            "caveat": None if self.uniform_log else BIAS_CAVEAT,
        }


def replay(
    log: Sequence[tuple[int, int, float]],
    item_ids: Sequence[str],
    policy: Policy,
    scorer: Scorer | None,
    rep: Representation,
    *,
    n_candidates: int,
    uniform_log: bool,
    seed: int = 0,
    max_events: int | None = None,
    no_click_reward: float = -1.0,
) -> ReplayResult:
    """Replay ``log`` (user, item index, reward) through ``policy`` (see module docstring).
    ``scorer=None`` makes the scores all zero (for policies that ignore them). Each event is
    decided and learned from through the engine's decision core (event ``replay-<e>``)."""
    rng = np.random.default_rng(seed)
    n_items = len(item_ids)
    k = min(n_candidates, n_items)
    stats = core.StatsBook()
    policies = {policy.name: policy}
    scorers = {scorer.name: scorer} if scorer is not None else {}
    learn = policy.stateful or any(getattr(s, "stateful", False) for s in scorers.values())
    accepted, reward_sum = 0, 0.0
    picked: set[int] = set()
    events = log if max_events is None else log[:max_events]
    for e, (user, item, reward) in enumerate(events):
        others = rng.choice(n_items - 1, size=k - 1, replace=False)
        others[others >= item] += 1  # every item but the logged one
        cands = np.concatenate([[item], others]).astype(np.int64)
        rng.shuffle(cands)
        user_vec = rep.user_vector(user)
        item_vecs = rep.item_vectors(cands)
        cand_ids = [item_ids[i] for i in cands.tolist()]
        event_id = f"replay-{e}"
        decision = rank_step(
            policy,
            scorer,
            user=user_vec,
            cand_ids=cand_ids,
            cand_vecs=item_vecs,
            top_k=1,
            rng=core.event_rng(seed + 1, event_id),
            stats=stats,
            true_scores=np.zeros(k, dtype=np.float32),
        )
        top = int(decision.order[0])
        if cands[top] != item:
            continue
        accepted += 1
        reward_sum += reward
        picked.add(item)
        if learn:
            event = core.to_event(
                decision, event_id=event_id, created_at=float(e), user=user_vec, cand_vecs=item_vecs
            )
            stats.apply(
                core.deltas_for(
                    event,
                    cand_ids[top],
                    float(reward) if reward > 0 else no_click_reward,
                    policies=policies,
                    scorers=scorers,
                    stats=stats,
                )
            )
        rep.observe(user, cands[[top]], np.array([reward]), user_vec)
    return ReplayResult(len(events), accepted, reward_sum, len(picked), uniform_log)
