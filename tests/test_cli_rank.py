"""``explorank rank`` against a real server: each item's text is shown beside its id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorank.cli import main
from explorank.cli.rank import format_result, shorten
from explorank.engine.bundle import load_bundle
from explorank.engine.requests import RankedItemOutput, RankOutput
from tests.fp32_bundle import fp32_bundle_for
from tests.server_harness import ThreadServer, make_config


@pytest.fixture(scope="module")
def fp32_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Path:
    return fp32_bundle_for(tmp_path_factory, tiny_model_dir, tiny_catalog)


@pytest.fixture(scope="module")
def server(fp32_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    config = make_config(fp32_bundle, tmp_path_factory.mktemp("rank") / "state.db")
    with ThreadServer(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def texts(fp32_bundle: Path) -> dict[str, str]:
    return {it.id: it.text for it in load_bundle(fp32_bundle).items}


def test_shorten_cuts_with_an_ellipsis_and_flattens() -> None:
    assert shorten("short text") == "short text"
    assert shorten("a\n  b\tc") == "a b c"
    long = "word " * 30
    cut = shorten(long, 20)
    assert len(cut) == 20 and cut.endswith("…") and cut.startswith("word word")
    assert shorten("x" * 60) == "x" * 60  # exactly the width: kept whole


def test_format_result_puts_the_text_beside_the_id() -> None:
    res = RankOutput(
        event_id="e1",
        items=[RankedItemOutput("film-1", 0.5, 0.9, True, "A quiet drama " * 10)],
        model_version="m",
        scorer="mf",
        policy="greedy",
    )
    header, row = format_result(res).splitlines()[1:]
    assert header.split() == ["#", "item", "score", "propensity", "explored", "text"]
    assert row.split()[:5] == ["1", "film-1", "0.5000", "0.9000", "yes"]
    assert row.endswith(shorten("A quiet drama " * 10))
    assert row.index("A quiet") == header.index("text")  # the text sits in its column


def test_rank_prints_each_items_text(
    server: ThreadServer, texts: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    short = min((i for i in texts if i != "item-00001"), key=lambda i: len(texts[i]))
    candidates = ["item-long", short, "item-00001"]
    args = ["rank", "--address", server.address, "--context", "space", "--top-k", "3"]
    assert main([*args, "--candidates", ",".join(candidates)]) == 0
    rows = {r.split()[1]: r for r in capsys.readouterr().out.strip().splitlines()[2:]}
    assert set(rows) == set(candidates)
    for item_id, row in rows.items():
        assert row.endswith(shorten(texts[item_id]))
    assert rows["item-long"].endswith("…")  # well over 60 characters: cut
    assert rows[short].endswith(texts[short])  # short: whole


def test_rank_json_carries_the_full_text(
    server: ThreadServer, texts: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rank", "--address", server.address, "--top-k", "3", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert len(items) == 3
    assert all(it["text"] == texts[it["item_id"]] for it in items)


def test_rank_no_text_asks_for_ids_only(
    server: ThreadServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rank", "--address", server.address, "--top-k", "2", "--json", "--no-text"]) == 0
    assert [it["text"] for it in json.loads(capsys.readouterr().out)["items"]] == ["", ""]
