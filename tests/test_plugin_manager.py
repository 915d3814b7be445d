"""The plugin manager: built-ins, entry points, blocking, errors, provenance, CLI."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from explorank import __version__, hookimpl
from explorank.cli import main as cli_main
from explorank.errors import ConfigError
from explorank.plugins.api import Policy, RankContext, Ranking
from explorank.plugins.errors import UnknownPluginError
from explorank.plugins.manager import DEFAULT_PLUGINS, PluginManager

BUILTIN_POLICIES = {
    "greedy",
    "epsilon_greedy",
    "softmax",
    "ucb1",
    "thompson",
    "linucb",
    "lin_ts",
    "linucb_hybrid",
    "lin_ts_hybrid",
}


def _policy_module(mod_name: str, policy_name: str) -> types.ModuleType:
    """A plugin module (as a third-party package would ship) registering one policy."""

    class P(Policy):
        name = policy_name

        def rank(self, ctx: RankContext) -> Ranking:
            k = min(ctx.top_k, len(ctx.scores))
            return Ranking(np.arange(k), np.ones(k), np.zeros(k, dtype=bool))

    mod = types.ModuleType(mod_name)

    @hookimpl
    def register_policies(register):  # type: ignore[no-untyped-def]
        register(P)

    mod.register_policies = register_policies  # type: ignore[attr-defined]
    mod.P = P  # type: ignore[attr-defined]
    return mod


def make_dist(root: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> Path:
    """An installed-looking distribution (dist-info with an `explorank` entry point)."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[explorank]\n{ep_name or module} = {module}\n")
    (info / "top_level.txt").write_text(f"{module}\n")
    return root


GOOD_PLUGIN = """
    import numpy as np
    from explorank import hookimpl
    from explorank.plugins.api import Policy, Ranking

    class Reverse(Policy):
        name = "reverse_ep"
        def rank(self, ctx):
            k = min(ctx.top_k, len(ctx.scores))
            order = np.argsort(np.asarray(ctx.scores), kind="stable")[:k]
            return Ranking(order, np.ones(k), np.ones(k, dtype=bool))

    @hookimpl
    def register_policies(register):
        register(Reverse)
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory on sys.path holding one good and one broken plugin dist."""
    monkeypatch.delenv("EXPLORANK_PLUGINS", raising=False)
    make_dist(tmp_path, "good-plugin", "good_plugin_mod", GOOD_PLUGIN, ep_name="good")
    make_dist(tmp_path, "broken-plugin", "broken_plugin_mod", "raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("good_plugin_mod", "broken_plugin_mod"):
        sys.modules.pop(mod, None)


def test_builtins_registered_with_provenance() -> None:
    pm = PluginManager(block_external=True)
    assert set(pm.policy_classes()) >= BUILTIN_POLICIES
    assert {"mf", "neural"} <= set(pm.scorer_classes())
    assert {"sqlite", "redis"} <= set(pm.store_classes())
    assert pm.provenance("policy", "lin_ts") == ("explorank", __version__)
    assert pm.provenance("scorer", "mf") == ("explorank", __version__)
    assert pm.load_errors == []


def test_loading_is_lazy() -> None:
    pm = PluginManager(block_external=True)
    assert pm.pm.get_plugins() == set()
    pm.policy_classes()
    assert len(pm.pm.get_plugins()) >= 4


def test_missing_builtin_module_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="explorank.plugins.manager"):
        pm = PluginManager(
            block_external=True,
            default_plugins=(*DEFAULT_PLUGINS, "explorank.plugins.builtin.not_written_yet"),
        )
        assert "greedy" in pm.policy_classes()
    assert pm.load_errors == []
    assert "not_written_yet" in caplog.text


def test_entry_point_plugin_found_with_provenance_and_broken_one_reported(site: Path) -> None:
    pm = PluginManager()
    assert "reverse_ep" in pm.policy_classes()
    assert pm.provenance("policy", "reverse_ep") == ("good-plugin", "1.2.3")
    errors = {e.plugin: e for e in pm.load_errors}
    assert "broken_plugin_mod" in errors
    assert "needs libfoo" in errors["broken_plugin_mod"].error
    assert errors["broken_plugin_mod"].distribution == "broken-plugin"
    assert set(pm.policy_classes()) >= BUILTIN_POLICIES  # the others still load


@pytest.mark.parametrize(
    ("env", "kwargs", "loaded"),
    [
        ("none", {}, False),
        ("NONE", {}, False),
        ("", {"block_external": True}, False),
        ("good", {}, True),  # entry-point name
        ("good_plugin", {}, True),  # distribution name, normalised
        ("other-thing", {}, False),
        ("", {"allow": ["good-plugin"]}, True),
        ("", {"allow": ["nope"]}, False),
        ("good", {"allow": ["nope"]}, False),  # both restrictions apply
    ],
)
def test_block_and_allow(
    site: Path, monkeypatch: pytest.MonkeyPatch, env: str, kwargs: dict, loaded: bool
) -> None:
    if env:
        monkeypatch.setenv("EXPLORANK_PLUGINS", env)
    pm = PluginManager(**kwargs)
    assert ("reverse_ep" in pm.policy_classes()) is loaded
    assert ("good" in pm.skipped) is (not loaded)
    assert set(pm.policy_classes()) >= BUILTIN_POLICIES


def test_clash_with_a_builtin_keeps_the_builtin_and_is_reported() -> None:
    pm = PluginManager(block_external=True)
    pm.register(_policy_module("acme_bandits", "softmax"))
    classes = pm.policy_classes()  # no exception: the clash is reported, not fatal
    assert classes["softmax"].__module__ == "explorank.plugins.builtin.policies_basic"
    (clash,) = pm.clashes
    assert clash.kind == "policy" and clash.name == "softmax"
    msg = str(clash)
    assert "explorank.plugins.builtin.policies_basic" in msg and "acme_bandits" in msg
    assert "plugins.override = ['softmax']" in msg


def test_override_lets_a_third_party_plugin_replace_a_builtin() -> None:
    pm = PluginManager(block_external=True, override=["softmax"])
    pm.register(_policy_module("acme_bandits", "softmax"))
    assert pm.policy_classes()["softmax"].__module__ != "explorank.plugins.builtin.policies_basic"
    assert pm.provenance("policy", "softmax")[0] == "acme_bandits"
    assert "replaces the built-in" in str(pm.clashes[0])


def test_blocking_a_builtin_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = PluginManager(block_external=True, block=["softmax"])
    pm.register(_policy_module("acme_bandits", "softmax"))
    assert "softmax" not in pm.policy_classes()  # every registration of the name
    assert pm.clashes == [] and ("policy", "softmax") in pm.blocked
    assert "greedy" in pm.policy_classes()  # the rest of the built-in module stays
    monkeypatch.setenv("EXPLORANK_PLUGINS_BLOCK", "ucb1, thompson")
    env_blocked = PluginManager(block_external=True)
    assert not {"ucb1", "thompson"} & set(env_blocked.policy_classes())
    with pytest.raises(ConfigError, match="blocked"):
        env_blocked.require("policy", "ucb1")
    whole_module = PluginManager(
        block_external=True, block=["explorank.plugins.builtin.policies_linear"]
    )
    assert not {"linucb", "lin_ts"} & set(whole_module.policy_classes())
    assert "explorank.plugins.builtin.policies_linear" in whole_module.skipped


def test_clash_between_two_third_party_plugins_makes_the_name_unusable() -> None:
    pm = PluginManager(block_external=True)
    pm.register(_policy_module("first_pkg", "shared_name"))
    pm.register(_policy_module("second_pkg", "shared_name"))
    assert "shared_name" not in pm.policy_classes()
    with pytest.raises(ConfigError, match="first_pkg.*second_pkg.*neither is used"):
        pm.create_policy("shared_name")
    resolved = PluginManager(block_external=True, block=["second_pkg"])
    resolved.register(_policy_module("first_pkg", "shared_name"))
    resolved.register(_policy_module("second_pkg", "shared_name"))
    assert resolved.provenance("policy", "shared_name")[0] == "first_pkg"


def test_register_after_load_is_visible() -> None:
    pm = PluginManager(block_external=True)
    assert "late_policy" not in pm.policy_classes()
    pm.register(_policy_module("late_mod", "late_policy"))
    assert "late_policy" in pm.policy_classes()
    assert pm.provenance("policy", "late_policy")[0] == "late_mod"


def test_unknown_name_lists_known_ones() -> None:
    pm = PluginManager(block_external=True)
    with pytest.raises(UnknownPluginError) as info:
        pm.get_scorer_class("bm25")
    assert "bm25" in str(info.value) and "mf" in str(info.value) and "neural" in str(info.value)
    with pytest.raises(UnknownPluginError, match="greedy"):
        pm.create_policy("nope")


def test_require_names_registered_and_load_errors(site: Path) -> None:
    pm = PluginManager()
    pm.require("policy", "softmax")
    pm.require("state store", "sqlite")
    with pytest.raises(ConfigError) as info:
        pm.require("policy", "fancy_bandit")
    msg = str(info.value)
    assert "fancy_bandit" in msg and "lin_ts" in msg and "broken_plugin_mod" in msg
    assert "registered policies: " in msg and "policys" not in msg


@pytest.mark.parametrize(
    ("kind", "plural"),
    [("scorer", "scorers"), ("policy", "policies"), ("state store", "state stores")],
)
def test_require_pluralises_each_kind(kind: str, plural: str) -> None:
    with pytest.raises(ConfigError, match=f"; registered {plural}: "):
        PluginManager().require(kind, "no_such_plugin")


def test_invalid_registration_reported_not_raised() -> None:
    class NoName(Policy):
        name = ""

        def rank(self, ctx: RankContext) -> Ranking:  # pragma: no cover - never called
            raise NotImplementedError

    class NotAPolicy:
        name = "not_a_policy"

    mod = types.ModuleType("sloppy_plugin")

    @hookimpl
    def register_policies(register):  # type: ignore[no-untyped-def]
        register(NoName)
        register(NotAPolicy)
        register(NotAPolicy())  # an instance, not a class

    mod.register_policies = register_policies  # type: ignore[attr-defined]
    pm = PluginManager(block_external=True)
    pm.register(mod)
    names = pm.policy_classes()
    assert "not_a_policy" not in names and "" not in names
    errors = [e for e in pm.load_errors if e.plugin == "sloppy_plugin"]
    assert len(errors) == 3
    assert any("string attribute 'name'" in e.error for e in errors)
    assert any("missing rank, update" in e.error for e in errors)


def test_hookimpl_with_unknown_hook_is_a_load_error() -> None:
    mod = types.ModuleType("typo_plugin")

    @hookimpl
    def register_policy(register):  # type: ignore[no-untyped-def]  # typo: no such hook
        pass

    mod.register_policy = register_policy  # type: ignore[attr-defined]
    pm = PluginManager(block_external=True)
    pm.load()
    pm.register(mod)
    assert [e.plugin for e in pm.load_errors] == ["typo_plugin"]
    assert "register_policy" in pm.load_errors[0].error
    assert "greedy" in pm.policy_classes()


def test_create_policy_validates_parameters() -> None:
    pm = PluginManager(block_external=True)
    assert pm.create_policy("epsilon_greedy", epsilon=0.3).epsilon == 0.3
    with pytest.raises(ConfigError, match="epsilon"):
        pm.create_policy("epsilon_greedy", epsilon=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        pm.create_policy("softmax", temperature=0)
    with pytest.raises(ConfigError, match=r"unknown parameter.*'tempreature'"):
        pm.create_policy("softmax", tempreature=0.2)


def test_lifecycle_hooks_log_exceptions_and_call_everyone(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    bad, good = types.ModuleType("bad_hooks"), types.ModuleType("good_hooks")

    @hookimpl
    def engine_started(engine):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    @hookimpl
    def engine_stopping(engine):  # type: ignore[no-untyped-def]
        calls.append(f"stopping {engine}")

    @hookimpl(specname="engine_started")
    def started_ok(engine):  # type: ignore[no-untyped-def]
        calls.append(f"started {engine}")

    bad.engine_started = engine_started  # type: ignore[attr-defined]
    good.engine_stopping, good.started_ok = engine_stopping, started_ok  # type: ignore[attr-defined]
    pm = PluginManager(block_external=True)
    pm.register(good)
    pm.register(bad)
    with caplog.at_level(logging.ERROR):
        pm.call_engine_started("E")
        pm.call_engine_stopping("E")
    assert calls == ["started E", "stopping E"]
    assert "bad_hooks" in caplog.text and "boom" in caplog.text


def test_cli_lists_plugins_with_packages(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {(r["kind"], r["name"]): r for r in data["plugins"]}
    assert rows[("policy", "reverse_ep")]["package"] == "good-plugin"
    assert rows[("policy", "reverse_ep")]["version"] == "1.2.3"
    assert rows[("policy", "ucb1")]["package"] == "explorank"
    assert rows[("store", "sqlite")]["version"] == __version__
    assert "broken_plugin_mod" in [e["plugin"] for e in data["load_errors"]]

    assert cli_main(["plugins"]) == 0
    out, err = capsys.readouterr()
    table = out.splitlines()
    assert table[0].split()[:4] == ["KIND", "NAME", "PACKAGE", "VERSION"]
    assert any(
        line.split()[:4] == ["policy", "reverse_ep", "good-plugin", "1.2.3"] for line in table
    )
    assert "broken_plugin_mod" in err and "needs libfoo" in err

    assert cli_main(["plugins", "--no-external", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "reverse_ep" not in {r["name"] for r in data["plugins"]}
    assert {"good", "broken_plugin_mod"} <= set(data["blocked"])


def test_loading_plugins_imports_no_heavy_modules() -> None:
    """Collecting every built-in imports neither torch/transformers nor onnxruntime
    (the neural scorer imports onnxruntime only when constructed)."""
    import subprocess

    code = (
        "import sys; from explorank.plugins.manager import PluginManager; "
        "pm = PluginManager(block_external=True); pm.policy_classes(); pm.scorer_classes(); "
        "bad = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


CLASHING_PLUGIN = """
    import numpy as np
    from explorank import hookimpl
    from explorank.plugins.api import Policy, Ranking

    class MySoftmax(Policy):
        name = "softmax"
        def rank(self, ctx):
            k = min(ctx.top_k, len(ctx.scores))
            return Ranking(np.arange(k), np.ones(k), np.zeros(k, dtype=bool))

    @hookimpl
    def register_policies(register):
        register(MySoftmax)
"""


def test_cli_verbose_shows_tracebacks_clashes_parameters_and_bad_params(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dist(site, "clash-plugin", "clash_plugin_mod", CLASHING_PLUGIN, ep_name="clash")
    config = tmp_path / "c.toml"
    config.write_text("[ranking.policies.thompson]\nsamples = 0\n")
    try:
        assert cli_main(["plugins", "-v", "--config", str(config)]) == 0
        captured = capsys.readouterr()
        out, err = captured.out, captured.err
        assert "Traceback (most recent call last)" in err and "needs libfoo" in err
        assert "name clash: policy 'softmax' is registered by" in out
        assert "plugins.override = ['softmax']" in out
        assert "epsilon_greedy.epsilon (float, default 0.1): exploration probability" in out
        assert "policy thompson cannot be constructed" in out and "samples" in out
        assert cli_main(["plugins", "--json", "--config", str(config)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert "traceback" not in data["load_errors"][0]
        assert data["clashes"][0]["name"] == "softmax"
    finally:
        sys.modules.pop("clash_plugin_mod", None)
