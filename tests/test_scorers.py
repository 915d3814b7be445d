"""Built-in scorers against numpy references, with heads built by the tests."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from explorank.errors import BundleError, ConfigError, InvalidArgumentError
from explorank.plugins.api import ScoreContext, ScorerContext
from explorank.plugins.builtin.scorers import MFScorer, NeuralScorer
from explorank.plugins.manager import PluginManager

D = 16


def ctx_of(user: np.ndarray, items: np.ndarray) -> ScoreContext:
    return ScoreContext(user, [f"i{j}" for j in range(items.shape[0])], items)


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return _unit(rng, D), _unit(rng, 257, D)


def write_mf(path: Path, rng: np.random.Generator, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    pu = rng.standard_normal((D, k)).astype(np.float32)
    pv = rng.standard_normal((D, k)).astype(np.float32)
    np.savez(path, user_proj=pu, item_proj=pv)
    return pu, pv


def write_mlp_head(
    path: Path,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: float,
    input_name: str = "features",
    output_name: str = "logits",
) -> None:
    """A small MLP head: logits = relu(features @ w1 + b1) @ w2 + b2 (relu skipped
    when w1 is None: logits = features @ w2 + b2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(w2.reshape(-1, 1).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([b2], dtype=np.float32), "b2"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape"),
    ]
    nodes = []
    hidden = input_name
    if w1 is not None:
        inits += [
            numpy_helper.from_array(w1.astype(np.float32), "w1"),
            numpy_helper.from_array(b1.astype(np.float32), "b1"),
        ]
        nodes += [
            helper.make_node("MatMul", [input_name, "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
        ]
        hidden = "h2"
    nodes += [
        helper.make_node("MatMul", [hidden, "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["o1"]),
        helper.make_node("Reshape", ["o1", "shape"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["n", 3 * D])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["n"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_mf_matches_reference(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    u, v = data
    pu, pv = write_mf(tmp_path / "head_mf.npz", np.random.default_rng(1))
    ctx = ScorerContext(embedding_dim=D, heads={"mf": {"path": str(tmp_path / "head_mf.npz")}})
    scores = MFScorer(ctx).score(ctx_of(u, v))
    reference = np.array([(u @ pu) @ (row @ pv) for row in v])
    assert scores.dtype == np.float32 and scores.shape == (257,)
    np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-4)


def test_mf_relative_path_resolved_against_bundle_dir(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    u, v = data
    write_mf(tmp_path / "head_mf.npz", np.random.default_rng(1))
    ctx = ScorerContext(embedding_dim=D, heads={"mf": {"path": "head_mf.npz"}}, bundle_dir=tmp_path)
    assert MFScorer(ctx).user_proj is not None


def test_mf_without_head_is_cosine(
    data: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    u, v = data
    with caplog.at_level(logging.INFO):
        scorer = MFScorer(ScorerContext(embedding_dim=D))
    assert "cosine" in caplog.text
    scaled = v * np.arange(1, 258, dtype=np.float32)[:, None]  # not unit norm
    np.testing.assert_allclose(scorer.score(ctx_of(2.0 * u, scaled)), v @ u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"user_proj": np.zeros((D, 4))}, "item_proj"),
        ({"user_proj": np.zeros((D + 1, 4)), "item_proj": np.zeros((D + 1, 4))}, r"\(16, k\)"),
        ({"user_proj": np.zeros((D, 4)), "item_proj": np.zeros((D, 5))}, "must both be"),
    ],
)
def test_mf_bad_head_is_bundle_error(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "h.npz", **arrays)
    with pytest.raises(BundleError, match=match):
        MFScorer(ScorerContext(embedding_dim=D, heads={"mf": {"path": str(tmp_path / "h.npz")}}))
    with pytest.raises(BundleError, match="does not exist"):
        MFScorer(ScorerContext(embedding_dim=D, heads={"mf": {"path": str(tmp_path / "nope.npz")}}))


def test_scorer_input_validation(data: tuple[np.ndarray, np.ndarray]) -> None:
    u, v = data
    scorer = MFScorer(ScorerContext(embedding_dim=D))
    with pytest.raises(InvalidArgumentError, match="user_embedding"):
        scorer.score(ctx_of(u[:-1], v))
    with pytest.raises(InvalidArgumentError, match="item_embeddings"):
        scorer.score(ctx_of(u, v[:, :-1]))
    assert scorer.score(ctx_of(u, v[:0])).shape == (0,)
    with pytest.raises(ConfigError, match="unknown parameter"):
        MFScorer(ScorerContext(embedding_dim=D), rank=3)


@pytest.mark.parametrize("chunk_size", [4096, 50])
def test_neural_mlp_head_matches_reference(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], chunk_size: int
) -> None:
    u, v = data
    rng = np.random.default_rng(2)
    w1, b1 = rng.normal(size=(3 * D, 32)) * 0.3, rng.normal(size=32) * 0.1
    w2, b2 = rng.normal(size=32), 0.25
    write_mlp_head(tmp_path / "head.onnx", w1, b1, w2, b2)
    ctx = ScorerContext(
        embedding_dim=D,
        heads={"neural": {"path": str(tmp_path / "head.onnx")}},
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        intra_op_threads=1,
    )
    scorer = NeuralScorer(ctx, chunk_size=chunk_size)
    feats = np.concatenate([np.broadcast_to(u, v.shape), v, u * v], axis=1).astype(np.float64)
    reference = np.maximum(feats @ w1 + b1, 0.0) @ w2 + b2
    scores = scorer.score(ctx_of(u, v))
    assert scores.dtype == np.float32 and scores.shape == (257,)
    np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(NeuralScorer.features(u, v[:3]), feats[:3].astype(np.float32))


def test_neural_untrained_default_head_is_scaled_dot(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    """The export's default (untrained) neural head: logit = scale · u·v, i.e. weights
    that pick the u⊙v block. Its ranking equals the cosine ranking."""
    u, v = data
    scale = 5.0
    w = np.concatenate([np.zeros(2 * D), np.full(D, scale)])
    write_mlp_head(tmp_path / "head.onnx", None, None, w, 0.0, input_name="x", output_name="y")  # type: ignore[arg-type]
    ctx = ScorerContext(
        embedding_dim=D,
        heads={"neural": {"path": str(tmp_path / "head.onnx"), "input": "x", "output": "y"}},
    )
    scores = NeuralScorer(ctx, chunk_size=100).score(ctx_of(u, v))
    np.testing.assert_allclose(scores, scale * (v @ u), rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.argsort(-scores, kind="stable"), np.argsort(-(v @ u), kind="stable"))


def test_neural_errors(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="heads.neural"):
        NeuralScorer(ScorerContext(embedding_dim=D))
    write_mlp_head(tmp_path / "head.onnx", None, None, np.ones(3 * D), 0.0)  # type: ignore[arg-type]
    heads = {"neural": {"path": str(tmp_path / "head.onnx"), "input": "wrong"}}
    with pytest.raises(BundleError, match="'wrong'"):
        NeuralScorer(ScorerContext(embedding_dim=D, heads=heads))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="cannot load"):
        NeuralScorer(
            ScorerContext(embedding_dim=D, heads={"neural": {"path": str(tmp_path / "junk.onnx")}})
        )
    good = {"neural": {"path": str(tmp_path / "head.onnx")}}
    with pytest.raises(ConfigError, match="chunk_size"):
        NeuralScorer(ScorerContext(embedding_dim=D, heads=good), chunk_size=0)


def test_scorers_created_through_manager(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    u, v = data
    write_mlp_head(tmp_path / "head.onnx", None, None, np.ones(3 * D), 0.0)  # type: ignore[arg-type]
    pm = PluginManager(block_external=True)
    ctx = ScorerContext(embedding_dim=D, heads={"neural": {"path": str(tmp_path / "head.onnx")}})
    neural = pm.create_scorer("neural", ctx, chunk_size=64)
    expected = (u.sum() + v.sum(axis=1) + v @ u).astype(np.float32)
    np.testing.assert_allclose(neural.score(ctx_of(u, v)), expected, rtol=1e-4, atol=1e-4)
    assert pm.create_scorer("mf", ctx).score(ctx_of(u, v)).shape == (257,)
