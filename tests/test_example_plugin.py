"""The example third-party plugin (examples/explorank-plugin-example): registered
directly (fast), and pip-installed and found through its entry point (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from explorank.plugins.manager import PluginManager
from explorank.plugins.testing import check_policy_contract, make_context

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "explorank-plugin-example"
SCORER_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "explorank-scorer-example"


@pytest.fixture
def example_module(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import explorank_plugin_example

    yield explorank_plugin_example
    sys.modules.pop("explorank_plugin_example", None)


def test_example_registered_directly_passes_contract(example_module) -> None:  # type: ignore[no-untyped-def]
    pm = PluginManager(block_external=True)
    pm.register(example_module)
    assert pm.get_policy_class("shuffle_top_m") is example_module.ShuffleTopMPolicy
    policy = pm.create_policy("shuffle_top_m", m=4)
    ranking = policy.rank(make_context(np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.0]), top_k=6, seed=3))
    assert set(ranking.order[:4].tolist()) == {1, 2, 3, 4}  # the top 4, shuffled
    assert ranking.order[4:].tolist() == [0, 5]
    np.testing.assert_allclose(ranking.propensities, [1 / 4, 1 / 3, 1 / 2, 1, 1, 1])
    check_policy_contract(example_module.ShuffleTopMPolicy, params={"m": 3}, empirical_trials=2000)


PROBE = textwrap.dedent(
    """
    import json
    import numpy as np
    from explorank.plugins.manager import PluginManager
    from explorank.plugins.testing import make_context
    pm = PluginManager()
    out = {"found": "shuffle_top_m" in pm.policy_classes(), "errors": [str(e) for e in pm.load_errors]}
    if out["found"]:
        out["provenance"] = list(pm.provenance("policy", "shuffle_top_m"))
        ctx = make_context(np.array([0.3, 0.2, 0.1]), top_k=3, seed=0)
        out["order"] = pm.create_policy("shuffle_top_m", m=2).rank(ctx).order.tolist()
    print(json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pip_installed_example_found_through_entry_point(tmp_path: Path) -> None:
    """``pip install`` the example (into a target directory on the interpreter's path, so
    the shared venv is not changed under parallel test runs) and check that a fresh
    process finds it through the ``explorank`` entry point, with its provenance, that
    ``explorank plugins`` lists it, and that EXPLORANK_PLUGINS=none hides it."""
    src = tmp_path / "src"
    shutil.copytree(
        EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        timeout=240,
        capture_output=True,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("EXPLORANK_PLUGINS", None)

    def probe(**extra: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE],
            env={**env, **extra},
            cwd=tmp_path,
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    found = probe()
    assert found["found"], found
    assert found["provenance"] == ["explorank-plugin-example", "0.1.0"]
    assert sorted(found["order"][:2]) == [0, 1] and found["order"][2] == 2
    assert probe(EXPLORANK_PLUGINS="none")["found"] is False
    assert probe(EXPLORANK_PLUGINS="explorank-plugin-example")["found"] is True
    assert probe(EXPLORANK_PLUGINS="someone-else")["found"] is False

    cli = subprocess.run(
        [sys.executable, "-m", "explorank", "plugins", "--json"],
        env=env,
        cwd=tmp_path,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    rows = {r["name"]: r for r in json.loads(cli.stdout)["plugins"]}
    assert rows["shuffle_top_m"]["package"] == "explorank-plugin-example"
    assert rows["shuffle_top_m"]["version"] == "0.1.0"
    assert rows["greedy"]["package"] == "explorank"


@pytest.mark.timeout(300)
def test_engine_ranks_with_example_policy_by_name(
    tiny_bundle: Path, tmp_path: Path, example_module
) -> None:  # type: ignore[no-untyped-def]
    """A Rank request naming the plugin's policy is served by it, with its propensities."""
    import asyncio

    from explorank.engine.pipeline import Engine
    from explorank.engine.requests import RankInput
    from tests.server_harness import make_config

    config = make_config(
        tiny_bundle, tmp_path / "state.db", ranking={"policies": {"shuffle_top_m": {"m": 3}}}
    )
    pm = PluginManager(block_external=True)
    pm.register(example_module)

    async def scenario() -> list:
        engine = Engine.from_config(config, plugins=pm)
        await engine.start(warmup=False)
        try:
            out = await engine.rank(
                RankInput(
                    user_id="u1",
                    context_text="a quiet mystery novel",
                    top_k=5,
                    policy="shuffle_top_m",
                )
            )
            greedy = await engine.rank(
                RankInput(
                    user_id="u1", context_text="a quiet mystery novel", top_k=5, policy="greedy"
                )
            )
        finally:
            await engine.stop(1.0)
        return [out, greedy]

    out, greedy = asyncio.run(scenario())
    assert out.policy == "shuffle_top_m"
    assert [round(i.propensity, 6) for i in out.items] == [round(1 / 3, 6), 0.5, 1.0, 1.0, 1.0]
    top3 = {i.item_id for i in greedy.items[:3]}
    assert {i.item_id for i in out.items[:3]} == top3  # the greedy top 3, shuffled
    assert [i.item_id for i in out.items[3:]] == [i.item_id for i in greedy.items[3:]]


@pytest.fixture
def scorer_example(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(SCORER_EXAMPLE))
    import explorank_scorer_example

    yield explorank_scorer_example
    sys.modules.pop("explorank_scorer_example", None)


def test_example_scorer_passes_contract_and_learns_through_a_real_server(
    tiny_bundle: Path, tmp_path: Path, scorer_example
) -> None:  # type: ignore[no-untyped-def]
    """The learning example scorer, named in Rank requests to a real gRPC server: its
    statistics are learned from rewards, stored durably, and move the item's score."""
    from explorank.engine.decision import scorer_key
    from explorank.plugins.testing import check_scorer_contract
    from explorank.v1 import ranker_pb2, ranker_pb2_grpc
    from tests.server_harness import ThreadServer, make_config

    check_scorer_contract(scorer_example.ItemBiasScorer)
    pm = PluginManager(block_external=True)
    pm.register(scorer_example)
    config = make_config(tiny_bundle, tmp_path / "s.db")
    request = ranker_pb2.RankRequest(
        context_text="a quiet mystery novel", top_k=60, scorer="item_bias", policy="greedy"
    )
    with ThreadServer(config, plugins=pm) as srv:
        stub = ranker_pb2_grpc.RankerStub(srv.channel())
        first = stub.Rank(request, timeout=10)
        assert first.scorer == "item_bias"
        last = first.items[-1]
        for _ in range(3):
            ev = stub.Rank(request, timeout=10)
            stub.Reward(
                ranker_pb2.RewardRequest(event_id=ev.event_id, item_id=last.item_id, value=1.0),
                timeout=10,
            )
        after = stub.Rank(request, timeout=10)
        stored = srv.run(srv.engine.store.load_stats(scorer_key("item_bias")))
    assert stored.items[last.item_id][0] == 3.0  # three rewards, durable
    before = {i.item_id: (pos, i.score) for pos, i in enumerate(first.items)}
    moved = {i.item_id: (pos, i.score) for pos, i in enumerate(after.items)}
    cosine = before[last.item_id][1]
    bias = 3 * (1.0 - cosine) / (3 + 5.0)  # residual sum / (count + prior)
    assert moved[last.item_id][1] == pytest.approx(cosine + bias, abs=1e-5)
    assert moved[last.item_id][0] < before[last.item_id][0]  # ranked higher than before
    others = [k for k in before if k != last.item_id]
    assert all(moved[k][1] == pytest.approx(before[k][1], abs=1e-6) for k in others)
