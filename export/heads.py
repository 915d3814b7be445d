"""Scoring heads: reading them from a checkpoint, writing them into a bundle, checking parity.

A fine-tuned checkpoint directory carries its heads next to the Hugging Face files::

    <model_dir>/explorank_heads/mf.npz       user_proj (d, k), item_proj (d, k)
                                             score = (u @ user_proj) . (v @ item_proj)
    <model_dir>/explorank_heads/neural.npz   w1 (3d, h), b1 (h,), w2 (h,), b2 ()
                                             logit = relu([u, v, u*v] @ w1 + b1) @ w2 + b2

A checkpoint without heads (e.g. the packaged MiniLM) gets **untrained defaults** that reproduce
plain embedding similarity, so every scorer works on a fresh machine:

* ``mf``: identity projections, so score = u . v = cosine (embeddings are L2-normalised);
* ``neural``: two hidden units, ``relu(s * sum(u*v))`` and ``relu(-s * sum(u*v))``, with output
  weights ``+1`` and ``-1``; since ``relu(x) - relu(-x) = x`` the logit is exactly
  ``s * (u . v)`` with ``s = DEFAULT_NEURAL_SCALE = 20`` (the usual contrastive temperature
  0.05, so ``sigmoid(logit)`` spans (0, 1) instead of hugging 0.5).

In the bundle the MF head is an ``.npz`` of its two projections (two GEMMs in numpy are faster
than an ONNX session call) and the neural head is ``head_neural.onnx`` (``features`` (n, 3d)
float32 -> ``logits`` (n,) float32, dynamic n), built directly with ``onnx.helper``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError, ParityError
from explorank.export import parity

HEADS_DIR = "explorank_heads"
DEFAULT_NEURAL_SCALE = 20.0
MF_FILE = "head_mf.npz"
NEURAL_FILE = "head_neural.onnx"


@dataclass
class Heads:
    user_proj: np.ndarray  # (d, k)
    item_proj: np.ndarray  # (d, k)
    w1: np.ndarray  # (3d, h)
    b1: np.ndarray  # (h,)
    w2: np.ndarray  # (h,)
    b2: np.ndarray  # ()
    mf_trained: bool
    neural_trained: bool


def default_mf(dim: int) -> tuple[np.ndarray, np.ndarray]:
    eye = np.eye(dim, dtype=np.float32)
    return eye, eye.copy()


def default_neural(dim: int, scale: float = DEFAULT_NEURAL_SCALE) -> tuple[np.ndarray, ...]:
    """Exact MLP for ``scale * u.v`` (see the module docstring)."""
    w1 = np.zeros((3 * dim, 2), dtype=np.float32)
    w1[2 * dim :, 0] = scale
    w1[2 * dim :, 1] = -scale
    return w1, np.zeros(2, np.float32), np.array([1.0, -1.0], np.float32), np.array(0.0, np.float32)


def _load_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise InvalidArgumentError(
                    "model", f"{path}: missing arrays {missing} (has {data.files})"
                )
            return {n: np.asarray(data[n], dtype=np.float32) for n in names}
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError("model", f"{path}: not a readable .npz file ({exc})") from exc


def _expect(path: Path, name: str, arr: np.ndarray, shape: tuple[int | None, ...]) -> None:
    ok = arr.ndim == len(shape) and all(
        s is None or s == a for s, a in zip(shape, arr.shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise InvalidArgumentError(
            "model", f"{path}: {name} has shape {arr.shape}, expected {want}"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidArgumentError("model", f"{path}: {name} contains NaN or infinity")


def load_heads(model_dir: Path | None, dim: int) -> Heads:
    """Heads of ``model_dir`` (validated against embedding size ``dim``), or the defaults."""
    hdir = Path(model_dir) / HEADS_DIR if model_dir is not None else None
    mf_path = hdir / "mf.npz" if hdir else None
    neural_path = hdir / "neural.npz" if hdir else None
    if mf_path is not None and mf_path.is_file():
        mf = _load_npz(mf_path, ("user_proj", "item_proj"))
        _expect(mf_path, "user_proj", mf["user_proj"], (dim, None))
        _expect(mf_path, "item_proj", mf["item_proj"], (dim, mf["user_proj"].shape[1]))
        user_proj, item_proj, mf_trained = mf["user_proj"], mf["item_proj"], True
    else:
        (user_proj, item_proj), mf_trained = default_mf(dim), False
    if neural_path is not None and neural_path.is_file():
        nn = _load_npz(neural_path, ("w1", "b1", "w2", "b2"))
        _expect(neural_path, "w1", nn["w1"], (3 * dim, None))
        h = nn["w1"].shape[1]
        _expect(neural_path, "b1", nn["b1"], (h,))
        _expect(neural_path, "w2", nn["w2"], (h,))
        _expect(neural_path, "b2", nn["b2"].reshape(()), ())
        w1, b1, w2, b2, neural_trained = nn["w1"], nn["b1"], nn["w2"], nn["b2"].reshape(()), True
    else:
        (w1, b1, w2, b2), neural_trained = default_neural(dim), False
    return Heads(user_proj, item_proj, w1, b1, w2, b2, mf_trained, neural_trained)


def features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[u, v, u*v]`` row-wise: the neural head's input."""
    return np.concatenate([u, v, u * v], axis=-1).astype(np.float32)


def mf_reference(heads: Heads, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float64 reference MF scores for aligned rows of ``u`` and ``v``."""
    pu = u.astype(np.float64) @ heads.user_proj.astype(np.float64)
    pv = v.astype(np.float64) @ heads.item_proj.astype(np.float64)
    return np.sum(pu * pv, axis=-1)


def neural_reference(heads: Heads, feats: np.ndarray) -> np.ndarray:
    """float64 reference neural logits for ``feats`` (n, 3d)."""
    hidden = np.maximum(feats.astype(np.float64) @ heads.w1.astype(np.float64) + heads.b1, 0.0)
    return hidden @ heads.w2.astype(np.float64) + float(heads.b2)


def neural_onnx(heads: Heads) -> Any:
    """The neural head as an ONNX model (opset 17): MatMul+Add, Relu, MatMul, Squeeze, Add."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    three_d, h = heads.w1.shape
    inits = [
        numpy_helper.from_array(heads.w1.astype(np.float32), "w1"),
        numpy_helper.from_array(heads.b1.astype(np.float32), "b1"),
        numpy_helper.from_array(heads.w2.astype(np.float32).reshape(h, 1), "w2"),
        numpy_helper.from_array(np.asarray(heads.b2, np.float32).reshape(()), "b2"),
        numpy_helper.from_array(np.array([1], np.int64), "squeeze_axes"),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h_pre"]),
        helper.make_node("Add", ["h_pre", "b1"], ["h_bias"]),
        helper.make_node("Relu", ["h_bias"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["out_col"]),
        helper.make_node("Squeeze", ["out_col", "squeeze_axes"], ["out"]),
        helper.make_node("Add", ["out", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "explorank_neural_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", three_d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n"])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="explorank"
    )
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model


def _pairs(embeddings: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = embeddings.shape[0]
    u = embeddings[rng.integers(0, rows, n)]
    v = embeddings[rng.integers(0, rows, n)]
    return u.astype(np.float32), v.astype(np.float32)


def write_heads(
    out_dir: Path,
    heads: Heads,
    embeddings: np.ndarray,
    tolerances: dict[str, float],
    *,
    n_pairs: int = 512,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write both heads into ``out_dir``, check them; return ``(manifest heads, parity entries)``.

    Parity uses pairs of real item embeddings: the MF head as the engine computes it (float32
    numpy on the arrays re-read from the file) and the neural head through ONNX Runtime, both
    against float64 references. A miss raises :class:`ParityError` naming the head.
    """
    import onnx
    import onnxruntime as ort

    out_dir = Path(out_dir)
    np.savez(
        out_dir / MF_FILE,
        user_proj=heads.user_proj.astype(np.float32),
        item_proj=heads.item_proj.astype(np.float32),
    )
    onnx.save(neural_onnx(heads), str(out_dir / NEURAL_FILE))

    u, v = _pairs(embeddings, n_pairs, seed=0)
    with np.load(out_dir / MF_FILE) as data:
        mf_scores = np.sum((u @ data["user_proj"]) * (v @ data["item_proj"]), axis=-1)
    feats = features(u, v)
    sess = ort.InferenceSession(str(out_dir / NEURAL_FILE), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"features": feats})[0]
    if logits.shape != (n_pairs,):
        raise ParityError(
            f"parity gate failed for head neural: output shape {logits.shape}, expected ({n_pairs},)"
        )
    entries = {
        "head_mf": parity.gate(
            "head mf", parity.score_metrics(mf_reference(heads, u, v), mf_scores), tolerances
        ),
        "head_neural": parity.gate(
            "head neural", parity.score_metrics(neural_reference(heads, feats), logits), tolerances
        ),
    }
    section = {
        "mf": {
            "path": MF_FILE,
            "format": "npz",
            "dim": int(heads.user_proj.shape[1]),
            "arrays": ["user_proj", "item_proj"],
            "trained": heads.mf_trained,
            "note": ""
            if heads.mf_trained
            else "untrained default: identity projections (score = cosine)",
        },
        "neural": {
            "path": NEURAL_FILE,
            "format": "onnx",
            "input": "features",
            "output": "logits",
            "features": "[u, v, u*v]",
            "hidden": int(heads.w1.shape[1]),
            "trained": heads.neural_trained,
            "note": ""
            if heads.neural_trained
            else f"untrained default: logit = {DEFAULT_NEURAL_SCALE:g} * (u . v), exact",
        },
    }
    return section, entries
