"""The example scorer passes explorank's scorer contract and learns what it should."""

from __future__ import annotations

import numpy as np
import pytest
from explorank_scorer_example import ItemBiasScorer

from explorank.errors import ConfigError
from explorank.plugins.api import PolicyStats, RewardContext, ScoreContext, ScorerContext
from explorank.plugins.testing import check_scorer_contract


@pytest.mark.parametrize("prior", [0.5, 5.0])
def test_contract(prior: float) -> None:
    report = check_scorer_contract(ItemBiasScorer, params={"prior": prior})
    assert report.cases == 5 and report.rewards > 0


def test_rewarded_item_moves_up_and_punished_item_down() -> None:
    scorer = ItemBiasScorer(ScorerContext(embedding_dim=2), prior=1.0)
    user = np.array([1.0, 0.0], dtype=np.float32)
    items = np.array([[0.6, 0.8], [0.6, -0.8]], dtype=np.float32)  # equal cosine 0.6
    stats = PolicyStats()
    for item, value in (("a", 1.0), ("b", -1.0)):
        row = 0 if item == "a" else 1
        stats.apply(
            scorer.update(RewardContext("e", item, value, 0.0, 0, 1.0, user, items[row]), stats)
        )
    scores = scorer.score(ScoreContext(user, ["a", "b"], items, stats=stats))
    np.testing.assert_allclose(scores, [0.6 + 0.4 / 2, 0.6 - 1.6 / 2], rtol=1e-6)


def test_rejects_bad_prior() -> None:
    with pytest.raises(ConfigError, match="ranking.scorers.item_bias.prior"):
        ItemBiasScorer(ScorerContext(embedding_dim=2), prior=0)
