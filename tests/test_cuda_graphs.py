"""CUDA-graph shape planning and the padding/chunking that routes a batch to a planned shape.

Pure functions, tested on the CPU: padding is checked against a real fused BERT encoder on
ONNX Runtime's CPU EP (a padded row must give the same embedding as the unpadded one).
Capturing and replaying the graphs needs a GPU: test_gpu_path.py has those tests (``gpu``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explorank.engine.backends.cuda_graphs import (
    GraphPlan,
    pad_feeds,
    plan_cuda_graphs,
    run_planned,
)
from explorank.errors import ConfigError

DEFAULT_BUCKETS = [16, 32, 48, 64, 80, 96, 112, 128]


def test_default_plan_is_buckets_times_powers_of_two() -> None:
    plan = plan_cuda_graphs(
        DEFAULT_BUCKETS, max_seq_length=128, max_batch_size=32, max_batch_tokens=4096
    )
    assert plan.lengths == tuple(DEFAULT_BUCKETS)
    assert all(s == (1, 2, 4, 8, 16, 32) for s in plan.sizes)
    assert len(plan) == 48 and len(plan.shapes) == 48
    assert plan.shapes[0] == (1, 16) and plan.shapes[-1] == (32, 128)
    # bound I/O: two int64 inputs + float32 output per graph, all 48 together
    expected = sum(b * length * 16 + b * 384 * 4 for b, length in plan.shapes)
    assert plan.io_bytes(384) == expected and 1_000_000 < expected < 2_000_000


def test_token_budget_lowers_the_batch_limit_of_long_buckets() -> None:
    plan = plan_cuda_graphs(
        [16, 64, 128], max_seq_length=128, max_batch_size=32, max_batch_tokens=1024
    )
    by_length = dict(zip(plan.lengths, plan.sizes, strict=True))
    assert by_length[16] == (1, 2, 4, 8, 16, 32)
    assert by_length[64] == (1, 2, 4, 8, 16)  # 1024 // 64
    assert by_length[128] == (1, 2, 4, 8)
    # a limit that is no power of two is planned as well
    odd = plan_cuda_graphs([16], max_seq_length=16, max_batch_size=24)
    assert odd.sizes == ((1, 2, 4, 8, 16, 24),)


def test_lengths_follow_max_seq_length() -> None:
    plan = plan_cuda_graphs([16, 32, 64], max_seq_length=48, max_batch_size=4)
    assert plan.lengths == (16, 32, 48)  # 64 dropped, the model's maximum always planned
    assert plan.length_for(1) == 16 and plan.length_for(16) == 16 and plan.length_for(17) == 32
    assert plan.length_for(48) == 48 and plan.length_for(49) is None


def test_custom_batch_sizes_are_capped_and_completed() -> None:
    plan = plan_cuda_graphs([32], max_seq_length=32, max_batch_size=32, batch_sizes=[3, 12, 100])
    assert plan.sizes == ((3, 12, 32),)
    assert plan.batch_for(32, 1) == 3 and plan.batch_for(32, 3) == 3
    assert plan.batch_for(32, 4) == 12 and plan.batch_for(32, 13) == 32
    assert plan.batch_for(32, 33) == 32  # larger batches run in chunks of the largest


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_sizes": [0, 4]}, "backend.gpu.graph_batch_sizes"),
        ({"batch_sizes": []}, "backend.gpu.graph_batch_sizes"),
        ({"max_batch_size": 0}, "max_batch_size"),
    ],
)
def test_bad_plans_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"max_seq_length": 128, "max_batch_size": 32, **kwargs}
    with pytest.raises(ConfigError, match=match):
        plan_cuda_graphs([16, 32], **args)


def test_pad_feeds_pads_columns_with_padding_and_rows_with_the_first_row() -> None:
    ids = np.array([[101, 7, 102, 0], [101, 8, 9, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    out = pad_feeds({"input_ids": ids, "attention_mask": mask}, 4, 8)
    assert out["input_ids"].shape == (4, 8) and out["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(out["input_ids"][:2, :4], ids)
    assert not out["input_ids"][:2, 4:].any() and not out["attention_mask"][:2, 4:].any()
    np.testing.assert_array_equal(out["input_ids"][2], out["input_ids"][0])
    np.testing.assert_array_equal(out["attention_mask"][3], out["attention_mask"][0])
    with pytest.raises(ValueError, match="does not fit"):
        pad_feeds({"input_ids": ids}, 1, 8)


def test_run_planned_calls_only_planned_shapes_and_keeps_row_order() -> None:
    plan = plan_cuda_graphs([16, 32], max_seq_length=32, max_batch_size=8)
    seen: list[tuple[int, int]] = []

    def run_shape(feeds: dict[str, np.ndarray]) -> np.ndarray:
        ids = feeds["input_ids"]
        seen.append(ids.shape)
        return ids[:, :1].astype(np.float32)  # the first token identifies the row

    ids = np.arange(1, 20, dtype=np.int64)[:, None] * np.ones((1, 20), np.int64)
    out = run_planned(plan, {"input_ids": ids, "attention_mask": np.ones_like(ids)}, run_shape)
    assert out is not None and out.shape == (19, 1)
    np.testing.assert_array_equal(out[:, 0], np.arange(1, 20))
    assert seen == [(8, 32), (8, 32), (4, 32)]  # 19 rows: two full graphs and 3 rows padded to 4
    assert all(shape in plan.shapes for shape in seen)
    too_long = np.ones((1, 33), np.int64)
    assert run_planned(plan, {"input_ids": too_long}, run_shape) is None


def test_padding_to_planned_shapes_leaves_embeddings_unchanged(tiny_bundle: Path) -> None:
    """The real fused BERT on the CPU EP: rows padded to the planned (batch, length) give the
    embeddings of the unpadded batch (what replaying a larger graph relies on)."""
    import onnxruntime as ort

    from explorank.engine.bundle import load_bundle
    from explorank.engine.tokenizer import Tokenizer

    bundle = load_bundle(tiny_bundle)
    sess = ort.InferenceSession(
        str(bundle.encoder_path("fp32")), providers=["CPUExecutionProvider"]
    )
    tok = Tokenizer.from_bundle(bundle)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(sess.run(["embedding"], feeds)[0])

    plan = plan_cuda_graphs([16, 32, 64], max_seq_length=64, max_batch_size=8)
    texts = [it.text for it in bundle.items]
    for n in (1, 3, 8, 11):
        seqs = [s[:30] for s in tok.encode_batch(texts[n : 2 * n])]
        ids, mask = tok.pad(seqs)
        feeds = {"input_ids": ids, "attention_mask": mask}
        planned = run_planned(plan, feeds, run)
        assert planned is not None and planned.shape == (n, bundle.embedding_dim)
        np.testing.assert_allclose(planned, run(feeds), atol=2e-5)


def test_plan_describe_is_plain_data() -> None:
    plan = GraphPlan((16, 32), ((1, 2), (1,)))
    assert plan.describe() == {
        "graphs": 3,
        "lengths": [16, 32],
        "batch_sizes": {"16": [1, 2], "32": [1]},
    }
