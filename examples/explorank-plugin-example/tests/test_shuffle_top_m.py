"""The example plugin passes explorank's policy contract, including the empirical
propensity check, and is found through its entry point once installed."""

from __future__ import annotations

import pytest
from explorank_plugin_example import ShuffleTopMPolicy

from explorank.plugins.testing import check_policy_contract


@pytest.mark.parametrize("m", [1, 3, 8])
def test_contract(m: int) -> None:
    report = check_policy_contract(ShuffleTopMPolicy, params={"m": m}, empirical_trials=2000)
    assert report.cases > 0


def test_rejects_bad_m() -> None:
    from explorank.errors import ConfigError

    with pytest.raises(ConfigError, match="shuffle_top_m.m"):
        ShuffleTopMPolicy(m=0)
