"""The Triton dynamic-batching peer of ``bench serve`` (target ``triton-peer``): its ranking
logic on a tiny bundle, the request shapes Triton's batcher needs, its batch metrics, and a
clear skip where nvidia-pytriton is not installed (it is not in CI: it needs numpy < 2)."""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from explorank.benchmarks.latency import peer_triton_server as peer
from explorank.benchmarks.latency.serve_bench import (
    TRITON_TARGET,
    ServeBenchConfig,
    _triton_unavailable,
    oip_request,
    run_serve_bench,
)
from explorank.benchmarks.latency.serve_load import RequestFactory
from explorank.benchmarks.latency.serve_procs import triton_peer_command, window_stats
from explorank.engine.bundle import load_bundle


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> peer.RankModel:
    return peer.RankModel(tiny_bundle, threads=1)


def test_a_batch_padded_to_its_longest_text_embeds_each_text_as_alone(
    model: peer.RankModel,
) -> None:
    texts = ["short", "a much longer text about space travel and old films " * 3, "mid length"]
    together = model.encode(texts)
    alone = np.vstack([model.encode([t]) for t in texts])
    assert together.shape == (3, model.items.shape[1])
    np.testing.assert_allclose(together, alone, atol=1e-5)  # fp32: padding is masked out


def test_rank_scores_the_candidates_by_dot_product(model: peer.RankModel) -> None:
    ids = list(model.row)
    # an unknown id first: the ranked ids must be the known ones' (not shifted by one)
    cands = [ids[:12], ids[5:9] + ["not-an-item"], ["not-an-item", *ids[20:26]]]
    texts = ["space opera", "cooking show", "a detective story"]
    out_ids, out_scores = model.rank(texts, cands, [5, 0, 3])
    users = model.encode(texts)
    for u, c, k, got, scores in zip(users, cands, (5, 10, 3), out_ids, out_scores, strict=True):
        known = [x for x in c if x in model.row]
        want = sorted(known, key=lambda x: -float(model.items[model.row[x]] @ u))[
            : min(k, len(known))
        ]
        assert got == want
        assert np.all(np.diff(scores) <= 0)
        np.testing.assert_allclose(scores, [model.items[model.row[x]] @ u for x in got], rtol=1e-5)
    assert "not-an-item" not in out_ids[1] and len(out_ids[1]) == 4  # top_k 0 -> 10, 4 known


def test_requests_for_triton_carry_a_batch_dimension(tiny_bundle: Path) -> None:
    items = load_bundle(tiny_bundle).items
    req = RequestFactory([(it.id, it.text) for it in items], candidates=5).make("t", 1)
    plain = {t.name: list(t.shape) for t in oip_request(req, "rank").inputs}
    batched = {t.name: list(t.shape) for t in oip_request(req, "rank", batch_dim=True).inputs}
    assert plain["CANDIDATE_IDS"] == [5] and batched["CANDIDATE_IDS"] == [1, 5]
    assert batched["CONTEXT_TEXT"] == [1, 1] and batched["TOP_K"] == [1, 1]


def test_triton_batch_metrics() -> None:
    before = {"nv_inference_count_total": 10.0, "nv_inference_exec_count_total": 4.0}
    after = {"nv_inference_count_total": 70.0, "nv_inference_exec_count_total": 14.0}
    stats = window_stats(before, after)
    assert stats == {"avg_batch_size": 6.0, "padding_efficiency": None, "batches": 10}


def test_the_peer_command_runs_the_script_with_the_given_python(tmp_path: Path) -> None:
    cmd = triton_peer_command("/opt/tri/bin/python", tmp_path, tmp_path / "p", 9999, threads=2)
    assert cmd[0] == "/opt/tri/bin/python" and cmd[1] == "-P"
    assert Path(cmd[2]).name == "peer_triton_server.py" and Path(cmd[2]).exists()
    assert cmd[cmd.index("--metrics-port") + 1] == "9999" and cmd[-2:] == ["--threads", "2"]


def _no_pytriton_python(tmp_path: Path) -> str:
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'pytriton'\" >&2\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return str(fake)


def test_the_peer_is_skipped_with_a_reason(tmp_path: Path) -> None:
    why = _triton_unavailable(ServeBenchConfig(), sys.executable)
    assert why is not None and "--api oip" in why
    why = _triton_unavailable(ServeBenchConfig(api="oip"), _no_pytriton_python(tmp_path))
    assert why is not None and "pytriton" in why and "--triton-python" in why
    if importlib.util.find_spec("pytriton") is None:
        assert _triton_unavailable(ServeBenchConfig(api="oip"), sys.executable) is not None


def test_a_sweep_without_pytriton_lists_the_peer_as_skipped(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    cfg = ServeBenchConfig(
        bundle=tiny_bundle,
        api="oip",
        targets=[TRITON_TARGET],
        triton_python=_no_pytriton_python(tmp_path),
        concurrency=[1],
        duration_s=0.2,
    )
    report = run_serve_bench(cfg, progress=lambda m: None)
    assert [s["target"] for s in report["skipped"]] == [TRITON_TARGET]
    assert "--triton-python" in report["skipped"][0]["reason"]
    assert report["failed"] == [] and report["rows"] == []
