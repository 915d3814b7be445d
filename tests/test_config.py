from pathlib import Path

import pytest

from explorank.engine.config import Config, load_config
from explorank.errors import ConfigError


def test_defaults_are_valid() -> None:
    cfg = load_config(environ={})
    assert isinstance(cfg, Config)
    assert cfg.batching.max_batch_size >= 1
    assert cfg.batching.length_buckets == sorted(cfg.batching.length_buckets)


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 6000\nhost = "0.0.0.0"\n[batching]\nmax_batch_size = 8\n')
    env = {
        "EXPLORANK__SERVER__PORT": "7000",
        "EXPLORANK__RANKING__POLICIES": '{"epsilon_greedy": {"epsilon": 0.2}}',
    }
    cfg = load_config(path, environ=env, overrides={"batching": {"max_batch_size": 4}})
    assert cfg.server.host == "0.0.0.0"  # file
    assert cfg.server.port == 7000  # env beats file
    assert cfg.batching.max_batch_size == 4  # CLI beats file
    assert cfg.ranking.policies == {"epsilon_greedy": {"epsilon": 0.2}}


def test_env_parsing_nested_and_typed() -> None:
    cfg = load_config(
        environ={
            "EXPLORANK__STATE__OPTIONS__PATH": "/x.db",
            "explorank__batching__length_buckets": "[64, 16]",
            "EXPLORANK__CACHE__USER_TTL_S": "null",
            "EXPLORANK__PLUGINS__BLOCK_EXTERNAL": "true",
            "OTHER": "1",
        }
    )
    assert cfg.state.options == {"path": "/x.db"}
    assert cfg.batching.length_buckets == [16, 64]
    assert cfg.cache.user_ttl_s is None and cfg.plugins.block_external is True


def test_sections_merge_across_sources(tmp_path: Path) -> None:
    """A flag for one setting of a section keeps the file's other settings of it."""
    path = tmp_path / "c.toml"
    path.write_text('[state]\nstore = "redis"\noptions = {url = "redis://h:1/0"}\n')
    cfg = load_config(
        path,
        environ={"EXPLORANK__STATE__SYNC_INTERVAL_MS": "250"},
        overrides={"state": {"reward_window_s": 60.0}},
    )
    assert cfg.state.store == "redis" and cfg.state.options == {"url": "redis://h:1/0"}
    assert cfg.state.sync_interval_ms == 250.0 and cfg.state.reward_window_s == 60.0


def test_unknown_env_section_is_an_error_not_ignored() -> None:
    msg = _error(environ={"EXPLORANK__BATCHNG__MAX_BATCH_SIZE": "4"})
    assert "batchng.max_batch_size: unknown setting" in msg


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"batching": {"length_buckets": [0, 16]}}, "batching.length_buckets"),
        ({"backend": {"precision": "int4"}}, "backend.precision"),
        ({"serverr": {}}, "serverr: unknown setting"),
        ({"limits": {"default_top_k": 50, "max_top_k": 10}}, "default_top_k"),
    ],
)
def test_invalid_values_name_the_setting(override: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(environ={}, overrides=override)
    assert needle in str(exc.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})


def _error(path: Path | None = None, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return str(exc.value)


def test_unknown_setting_suggests_the_closest_one_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[batching]\nmax_batch_sise = 64\n")
    assert _error(path, environ={}).endswith(
        "batching.max_batch_sise: unknown setting (got 64); did you mean 'batching.max_batch_size'?"
    )


def test_unknown_setting_suggests_from_env_and_overrides() -> None:
    env = {"EXPLORANK__SERVER__METRIC_PORT": "9000"}
    assert (
        "server.metric_port: unknown setting (got '9000'); did you mean 'server.metrics_port'?"
        in (_error(environ=env))
    )
    over = {"ranking": {"default_polcy": "ucb1"}}
    assert "did you mean 'ranking.default_policy'?" in _error(environ={}, overrides=over)


def test_unknown_section_suggests_a_section() -> None:
    msg = _error(environ={}, overrides={"batchng": {"max_batch_size": 4}})
    assert "batchng: unknown setting; did you mean 'batching'?" in msg


def test_setting_in_the_wrong_section_names_the_right_one() -> None:
    msg = _error(environ={}, overrides={"server": {"max_batch_size": 4}})
    assert (
        "server.max_batch_size: unknown setting (got 4); did you mean 'batching.max_batch_size'?"
        in msg
    )


def test_no_suggestion_when_nothing_is_close() -> None:
    msg = _error(environ={}, overrides={"server": {"zzz": 1}})
    assert msg.endswith("server.zzz: unknown setting (got 1)")


def test_lanes_auto_a_number_or_a_clear_error() -> None:
    assert load_config(environ={}).backend.lanes == "auto"
    assert load_config(environ={}).backend.lane_count() == 2
    cfg = load_config(environ={"EXPLORANK__BACKEND__LANES": "1"})  # bench's explorank-1lane
    assert cfg.backend.lanes == 1 and cfg.backend.lane_count() == 1
    cfg = load_config(environ={}, overrides={"backend": {"lanes": "3"}})  # serve --lanes 3
    assert cfg.backend.lane_count() == 3
    for bad in ("0", "65", "many"):
        assert "backend.lanes" in _error(overrides={"backend": {"lanes": bad}})
