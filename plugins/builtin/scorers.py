"""Built-in scorers: ``mf`` (projected dot products) and ``neural`` (ONNX head).

Both score all candidates of a request in one vectorized call. onnxruntime is
imported only when a ``neural`` scorer is constructed. The learning scorer ``mf_online``
lives in :mod:`explorank.plugins.builtin.scorer_mf_online`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from explorank.errors import BundleError, InvalidArgumentError
from explorank.plugins.api import PluginParams, ScoreContext, Scorer, ScorerContext
from explorank.plugins.hookspecs import hookimpl

log = logging.getLogger(__name__)


def _check_inputs(user: np.ndarray, items: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    user = np.asarray(user, dtype=np.float32)
    items = np.asarray(items, dtype=np.float32)
    if user.shape != (dim,):
        raise InvalidArgumentError("user_embedding", f"expected shape ({dim},), got {user.shape}")
    if items.ndim != 2 or items.shape[1] != dim:
        raise InvalidArgumentError(
            "item_embeddings", f"expected shape (n, {dim}), got {items.shape}"
        )
    return user, items


def head_path(context: ScorerContext, head: str) -> Path | None:
    spec = context.heads.get(head)
    if not spec or not spec.get("path"):
        return None
    path = Path(spec["path"])
    if not path.is_absolute() and context.bundle_dir is not None:
        path = context.bundle_dir / path
    if not path.is_file():
        raise BundleError(f"heads.{head}.path: file {path} does not exist")
    return path


class MFScorer(Scorer):
    """Dot products in the MF head's projected space: ``(u·Pu) · (v·Pv)``.

    Computed as ``items @ (Pv @ (Puᵀ u))`` — one matrix-vector product over the
    candidates, never the (n, k) projection. Without an ``mf`` head in the bundle it
    falls back to the cosine of the raw embeddings (identity projections).
    """

    name = "mf"
    description = "dot products in the MF head's projected embedding space (cosine without a head)"

    class Params(PluginParams):
        """No parameters."""

    def __init__(self, context: ScorerContext, **params: Any) -> None:
        super().__init__(context, **params)
        d = int(context.embedding_dim)
        self.user_proj: np.ndarray | None = None
        self.item_proj: np.ndarray | None = None
        path = head_path(context, "mf")
        if path is None:
            log.info("scorer mf: the bundle has no mf head; scoring by cosine similarity")
            return
        try:
            with np.load(path) as data:
                user_proj = np.asarray(data["user_proj"], dtype=np.float32)
                item_proj = np.asarray(data["item_proj"], dtype=np.float32)
        except (KeyError, ValueError, OSError) as exc:
            raise BundleError(
                f"heads.mf: {path} must be an npz with arrays user_proj and item_proj ({exc})"
            ) from exc
        if user_proj.ndim != 2 or user_proj.shape[0] != d or item_proj.shape != user_proj.shape:
            raise BundleError(
                f"heads.mf: user_proj {user_proj.shape} and item_proj {item_proj.shape} "
                f"must both be ({d}, k)"
            )
        self.user_proj, self.item_proj = user_proj, item_proj

    def score(self, ctx: ScoreContext) -> np.ndarray:
        return self.score_arrays(ctx.user_embedding, ctx.item_embeddings)

    def score_arrays(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n,) scores of ``items`` (n, d) for ``user`` (d,)."""
        user, items = _check_inputs(user, items, int(self.context.embedding_dim))
        if self.user_proj is None or self.item_proj is None:
            norms = np.linalg.norm(items, axis=1) * max(float(np.linalg.norm(user)), 1e-12)
            return (items @ user / np.maximum(norms, 1e-12)).astype(np.float32)
        w = self.item_proj @ (user @ self.user_proj)  # (d,)
        return (items @ w).astype(np.float32)


class NeuralScorer(Scorer):
    """The bundle's neural head (ONNX) over ``[u ⊕ v ⊕ u⊙v]``, batched over candidates.

    Features are built in one vectorized step; requests with more than ``chunk_size``
    candidates run in chunks so the feature matrix stays bounded (n · 3d floats).
    """

    name = "neural"
    description = "the bundle's neural head (ONNX) over [u, v, u*v], batched over candidates"

    class Params(PluginParams):
        chunk_size: int = Field(
            4096, ge=1, strict=True, description="candidates per head call (bounds memory)"
        )

    def __init__(self, context: ScorerContext, **params: Any) -> None:
        super().__init__(context, **params)
        self.chunk_size = int(self.params.chunk_size)
        path = head_path(context, "neural")
        if path is None:
            raise BundleError(
                "scorer 'neural' needs heads.neural in the bundle manifest; this bundle has "
                "none: export with a neural head or use the 'mf' scorer"
            )
        import onnxruntime as ort

        spec = context.heads["neural"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(context.intra_op_threads))
        opts.inter_op_num_threads = 1
        available = set(ort.get_available_providers())
        providers = [p for p in context.providers if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"heads.neural: cannot load {path}: {exc}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.input_name = str(spec.get("input", "features"))
        self.output_name = str(spec.get("output", "logits"))
        if self.input_name not in inputs or self.output_name not in outputs:
            raise BundleError(
                f"heads.neural: {path} has inputs {inputs} and outputs {outputs}; the manifest "
                f"names input {self.input_name!r} and output {self.output_name!r}"
            )

    @staticmethod
    def features(user: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, 3d) float32 ``[u ⊕ v ⊕ u⊙v]``."""
        n, d = items.shape
        out = np.empty((n, 3 * d), dtype=np.float32)
        out[:, :d] = user
        out[:, d : 2 * d] = items
        np.multiply(items, user, out=out[:, 2 * d :])
        return out

    def score(self, ctx: ScoreContext) -> np.ndarray:
        user, items = _check_inputs(
            ctx.user_embedding, ctx.item_embeddings, int(self.context.embedding_dim)
        )
        n = items.shape[0]
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, self.chunk_size):
            chunk = items[start : start + self.chunk_size]
            (logits,) = self.session.run(
                [self.output_name], {self.input_name: self.features(user, chunk)}
            )
            out[start : start + chunk.shape[0]] = np.asarray(logits, dtype=np.float32).reshape(-1)
        return out


@hookimpl
def register_scorers(register: Callable[[type], None]) -> None:
    register(MFScorer)
    register(NeuralScorer)
