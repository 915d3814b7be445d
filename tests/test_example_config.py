from pathlib import Path

from explorank.engine.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_is_valid_and_matches_defaults() -> None:
    cfg = load_config(ROOT / "examples" / "explorank.toml", environ={})
    default = Config()
    # The example documents the defaults: everything it sets equals the default,
    # except the per-policy parameters it shows.
    assert cfg.server == default.server
    assert cfg.batching == default.batching
    assert cfg.backend == default.backend
    assert cfg.state == default.state
    assert cfg.ranking.default_policy == default.ranking.default_policy
    assert cfg.ranking.policies["epsilon_greedy"] == {"epsilon": 0.1}
