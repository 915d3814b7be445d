"""The sqlite state database lives in a state directory, never in the current directory;
``explorank events export`` finds it the same way ``explorank serve`` does."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from explorank.cli import main
from explorank.engine.client import RankerClient
from explorank.engine.config import Config, load_config
from explorank.paths import default_cache_dir, default_state_db, default_state_dir
from explorank.plugins.builtin.sqlite_store import SqliteStore
from tests.fp32_bundle import fp32_bundle_for
from tests.server_harness import ProcessServer

STATE_ENV = ("EXPLORANK_STATE_DIR", "XDG_STATE_HOME", "EXPLORANK_CACHE_DIR", "XDG_CACHE_HOME")


@pytest.fixture(scope="session")
def fp32_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Path:
    return fp32_bundle_for(tmp_path_factory, tiny_model_dir, tiny_catalog)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No state/cache variables set, HOME in tmp; returns HOME."""
    for name in STATE_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory; tests assert it stays empty."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def test_state_dir_precedence(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_state_dir() == clean_env / ".local" / "state" / "explorank"
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg/state")
    assert default_state_dir() == Path("/xdg/state/explorank")
    monkeypatch.setenv("EXPLORANK_STATE_DIR", "/srv/explorank-state")
    assert default_state_dir() == Path("/srv/explorank-state")
    assert default_state_db() == Path("/srv/explorank-state/state.db")


def test_cache_dir_precedence(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_cache_dir() == clean_env / ".cache" / "explorank"
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg/cache")
    assert default_cache_dir() == Path("/xdg/cache/explorank")
    monkeypatch.setenv("EXPLORANK_CACHE_DIR", "/srv/cache")
    assert default_cache_dir() == Path("/srv/cache")


def test_store_options_fill_the_sqlite_path(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Config().state.store_options() == {"path": str(tmp_path / "xdg/explorank/state.db")}
    # state.dir from TOML, environment (EXPLORANK__STATE__DIR) or --state-dir
    cfg = load_config(environ={"EXPLORANK__STATE__DIR": str(tmp_path / "s")})
    assert cfg.state.store_options()["path"] == str(tmp_path / "s" / "state.db")
    # an explicit path (--state-db / state.options.path) wins over the directory
    cfg = load_config(
        environ={}, overrides={"state": {"dir": "/d", "options": {"path": "/x/my.db"}}}
    )
    assert cfg.state.store_options() == {"path": "/x/my.db"}
    # other stores get their options untouched
    cfg = load_config(environ={}, overrides={"state": {"store": "redis", "options": {"url": "u"}}})
    assert cfg.state.store_options() == {"url": "u"}


def test_sqlite_store_without_path_opens_in_the_state_dir(
    clean_env: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EXPLORANK_STATE_DIR", str(tmp_path / "state"))

    async def go() -> None:
        store = SqliteStore()
        await store.open()
        await store.close()

    asyncio.run(go())
    assert (tmp_path / "state" / "state.db").is_file()
    assert list(cwd.iterdir()) == []


def _rank_and_reward(address: str) -> str:
    with RankerClient(address) as client:
        res = client.rank(user_id="u1", context_text="a quiet drama", top_k=3)
        client.reward(res.event_id, res.items[0].item_id, 1.0)
    return res.event_id


def _export(out: Path, *args: str) -> list[dict]:
    assert main(["events", "export", "--out", str(out), *args]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_serve_keeps_state_in_xdg_state_home_and_export_finds_it(
    fp32_bundle: Path,
    clean_env: Path,
    cwd: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    xdg = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(xdg))
    work = tmp_path / "work"
    work.mkdir()
    server = ProcessServer(["--bundle", str(fp32_bundle)], work, env=dict(os.environ), cwd=cwd)
    try:
        server.wait_ready()
        event_id = _rank_and_reward(server.address)
    finally:
        assert server.stop() == 0, server.output()
    assert (xdg / "explorank" / "state.db").is_file()
    assert list(cwd.iterdir()) == []  # nothing where the server started
    rows = _export(tmp_path / "events.jsonl")  # same default as the server: no flag needed
    assert [r["event_id"] for r in rows] == [event_id]


@pytest.mark.slow
def test_serve_and_export_with_state_dir_flag_and_env(
    fp32_bundle: Path,
    clean_env: Path,
    cwd: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flag_dir = tmp_path / "flag-state"
    work = tmp_path / "work"
    work.mkdir()
    args = ["--bundle", str(fp32_bundle), "--state-dir", str(flag_dir)]
    server = ProcessServer(args, work, env=dict(os.environ), cwd=cwd)
    try:
        server.wait_ready()
        event_id = _rank_and_reward(server.address)
    finally:
        assert server.stop() == 0, server.output()
    assert (flag_dir / "state.db").is_file()
    assert list(cwd.iterdir()) == []
    assert not (clean_env / ".local").exists()  # the default directory was not touched
    # export: --state-dir, EXPLORANK_STATE_DIR, and --db all find the same log
    assert [r["event_id"] for r in _export(tmp_path / "a.jsonl", "--state-dir", str(flag_dir))] == [
        event_id
    ]
    monkeypatch.setenv("EXPLORANK_STATE_DIR", str(flag_dir))
    assert [r["event_id"] for r in _export(tmp_path / "b.jsonl")] == [event_id]
    db = str(flag_dir / "state.db")
    assert [r["event_id"] for r in _export(tmp_path / "c.jsonl", "--db", db)] == [event_id]


def test_export_without_a_database_names_where_it_looked(
    clean_env: Path, cwd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["events", "export", "--out", str(tmp_path / "e.jsonl"), "--state-dir", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"--state-dir: no sqlite state database at {tmp_path / 'state.db'}" in err
