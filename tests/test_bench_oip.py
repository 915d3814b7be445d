"""``explorank bench serve --api oip``: the same load through the Open Inference Protocol, on a
tiny bundle and sub-second points (light: one in-process server, no subprocess targets)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from explorank.benchmarks.latency.serve_bench import (
    ServeBenchConfig,
    _measure_target,
    oip_outputs,
    oip_request,
)
from explorank.benchmarks.latency.serve_load import RequestFactory
from explorank.cli import main
from explorank.engine.bundle import load_bundle
from tests.server_harness import ThreadServer, make_config


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    tmp = tmp_path_factory.mktemp("bench-oip")
    batching = {"length_buckets": [64, 128], "max_batch_size": 8}
    with ThreadServer(make_config(tiny_bundle, tmp / "state.db", batching=batching)) as server:
        yield server


def _factory(bundle: Path) -> RequestFactory:
    return RequestFactory([(it.id, it.text) for it in load_bundle(bundle).items], candidates=5)


def test_oip_request_carries_the_rank_request(tiny_bundle: Path) -> None:
    import explorank.oip as oip

    req = _factory(tiny_bundle).make("t", 3)
    rank = oip_request(req, "rank")
    assert [t.name for t in rank.inputs] == ["CONTEXT_TEXT", "USER_ID", "CANDIDATE_IDS", "TOP_K"]
    assert len(rank.raw_input_contents) == 4
    assert list(rank.inputs[2].shape) == [5]
    enc = oip_request(req, "encoder")
    assert [t.name for t in enc.inputs] == ["TEXT"]
    assert req.context_text.encode() in enc.raw_input_contents[0]
    resp = oip.ModelInferResponse()
    resp.outputs.add(name="EVENT_ID", datatype="BYTES", shape=[1])
    resp.raw_output_contents.append(b"\x03\x00\x00\x00abc")
    assert oip_outputs(resp) == {"EVENT_ID": ["abc"]}
    # explorank-history's users (history ids instead of text) reach the rank model too
    hist = _factory(tiny_bundle).make("t", 4, history=True)
    assert hist.history_item_ids
    names = [t.name for t in oip_request(hist, "rank").inputs]
    assert "HISTORY_ITEM_IDS" in names
    i = names.index("HISTORY_ITEM_IDS")
    assert list(oip_request(hist, "rank").inputs[i].shape) == [len(hist.history_item_ids)]


@pytest.mark.parametrize("model", ["rank", "encoder"])
def test_the_sweep_drives_the_oip_api(srv: ThreadServer, tiny_bundle: Path, model: str) -> None:
    cfg = ServeBenchConfig(
        api="oip",
        oip_model=model,
        concurrency=[1, 2],
        rates=[20.0],
        duration_s=0.4,
        warmup_s=0.2,
        timeout_s=5.0,
        reward_fraction=1.0,
    )
    cfg.validate()
    before = srv.engine.metrics.requests.labels("ModelInfer", "OK")._value.get()
    rows: list[dict[str, Any]] = asyncio.run(
        _measure_target(
            "explorank",
            srv.address,
            None,
            _factory(tiny_bundle),
            cfg,
            lambda r: [20.0],
            lambda m: None,
        )
    )
    assert [r["mode"] for r in rows] == ["closed", "closed", "open"]
    assert all(r["completed"] > 0 and r["errors"] == 0 for r in rows if r["mode"] == "closed")
    served = srv.engine.metrics.requests.labels("ModelInfer", "OK")._value.get() - before
    assert served >= sum(r["completed"] for r in rows)  # every measured call was a ModelInfer
    followups = sum(r["followups"] for r in rows)
    if model == "rank":  # Rewards follow through the Ranker API with the returned EVENT_ID
        assert followups > 0 and all(r["followup_errors"] == {} for r in rows)
    else:
        assert followups == 0


def test_bad_api_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "serve", "--api", "rest"])
    assert exit_.value.code == 2
    assert "--api: invalid choice: 'rest'" in capsys.readouterr().err
    with pytest.raises(Exception, match="--oip-model"):
        ServeBenchConfig(api="oip", oip_model="bert").validate()
