"""CUDA graphs for the encoder: which shapes are captured, and how a batch reaches one.

A CUDA graph replays a recorded sequence of kernel launches with one call, which removes the
per-kernel launch cost that dominates a small BERT batch on a fast GPU. ONNX Runtime's CUDA
EP captures one (``enable_cuda_graph``, a graph per ``gpu_graph_id`` run option), but a
captured graph has fixed tensor shapes *and* fixed device addresses. So the engine plans a
fixed set of shapes and pads every batch up to one of them:

- **lengths**: the batcher's length buckets (up to the bundle's ``max_seq_length``, which is
  always one of them); the batcher already pads a batch to at most its bucket, so only the
  last few tokens (< 16 with the default buckets) are added here;
- **batch sizes** per length: powers of two up to the most sequences a batch of that length
  may hold (``max_batch_size``, lowered by ``max_batch_tokens``), plus that limit itself;
  ``backend.gpu.graph_batch_sizes`` replaces the powers of two. A batch of ``n`` rows runs on
  the smallest planned size >= ``n`` (the extra rows repeat its first row and are dropped);
  a batch larger than the largest size runs in chunks.

With the defaults (8 buckets of 16..128 tokens, ``max_batch_size`` 32, 4096 tokens per batch)
that is 8 x 6 = 48 graphs. Their memory: each graph owns its bound input and output buffers
(``B x L x 8`` bytes per int64 input, ``B x d x 4`` bytes of output; 1.3 MB for all 48 with
d = 384), plus the driver's instantiated graph (not measured here); the activations come from
ONNX Runtime's arena, which the serialised graphs share. ``scripts/gpu-check.sh`` measures
the whole on a GPU. :func:`plan_cuda_graphs` and :func:`run_planned` are pure functions,
tested without a GPU; :mod:`explorank.engine.backends.ort` owns the sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from explorank.errors import ConfigError

__all__ = ["GraphPlan", "pad_feeds", "plan_cuda_graphs", "run_planned"]


def _powers_of_two(limit: int) -> list[int]:
    return [1 << k for k in range(limit.bit_length()) if 1 << k <= limit]


@dataclass(frozen=True)
class GraphPlan:
    """The padded shapes that get a CUDA graph: ``sizes[i]`` are the batch sizes planned at
    sequence length ``lengths[i]`` (both ascending)."""

    lengths: tuple[int, ...]
    sizes: tuple[tuple[int, ...], ...]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Every planned ``(batch, length)``, by length then batch; a shape's index + 1 is its
        ``gpu_graph_id`` (ONNX Runtime reserves 0 and -1)."""
        return [
            (b, length)
            for length, sizes in zip(self.lengths, self.sizes, strict=True)
            for b in sizes
        ]

    def __len__(self) -> int:
        return sum(len(s) for s in self.sizes)

    def length_for(self, seq: int) -> int | None:
        """The planned length a ``seq``-token batch is padded to (None: longer than all)."""
        for length in self.lengths:
            if seq <= length:
                return length
        return None

    def batch_for(self, length: int, n: int) -> int:
        """The planned batch size ``n`` rows are padded to at ``length`` (the largest when
        ``n`` exceeds it: the caller chunks)."""
        sizes = self.sizes[self.lengths.index(length)]
        for size in sizes:
            if n <= size:
                return size
        return sizes[-1]

    def io_bytes(self, embedding_dim: int, n_inputs: int = 2) -> int:
        """Device memory of every graph's bound inputs (int64) and output (float32)."""
        return sum(b * length * 8 * n_inputs + b * embedding_dim * 4 for b, length in self.shapes)

    def describe(self) -> dict[str, object]:
        return {
            "graphs": len(self),
            "lengths": list(self.lengths),
            "batch_sizes": {
                str(length): list(s) for length, s in zip(self.lengths, self.sizes, strict=True)
            },
        }


def plan_cuda_graphs(
    length_buckets: Sequence[int],
    *,
    max_seq_length: int,
    max_batch_size: int,
    max_batch_tokens: int | None = None,
    batch_sizes: Sequence[int] | None = None,
) -> GraphPlan:
    """The shapes to capture for a batcher with these settings (see the module docstring).

    Raises :class:`ConfigError` for a non-positive size or length."""
    if max_seq_length < 1 or max_batch_size < 1:
        raise ConfigError(
            f"CUDA graph plan: max_seq_length ({max_seq_length}) and max_batch_size "
            f"({max_batch_size}) must be positive"
        )
    if any(int(b) < 1 for b in length_buckets):
        raise ConfigError(f"batching.length_buckets must be positive, got {list(length_buckets)}")
    if batch_sizes is not None and (not batch_sizes or any(int(s) < 1 for s in batch_sizes)):
        raise ConfigError(
            f"backend.gpu.graph_batch_sizes must be positive batch sizes, got {list(batch_sizes)}"
        )
    lengths = sorted(
        {int(b) for b in length_buckets if int(b) <= max_seq_length} | {max_seq_length}
    )
    planned: list[tuple[int, ...]] = []
    for length in lengths:
        cap = max_batch_size
        if max_batch_tokens is not None:
            cap = max(1, min(max_batch_size, int(max_batch_tokens) // length))
        wanted = _powers_of_two(cap) if batch_sizes is None else [int(s) for s in batch_sizes]
        planned.append(tuple(sorted({s for s in wanted if s <= cap} | {cap})))
    return GraphPlan(tuple(lengths), tuple(planned))


def pad_feeds(feeds: Mapping[str, np.ndarray], batch: int, length: int) -> dict[str, np.ndarray]:
    """``feeds`` (each ``(n, seq)`` int, right-padded) padded to ``(batch, length)``: new
    columns are padding (id 0, mask 0), new rows repeat row 0 (a real sequence, so no kernel
    ever sees an empty row); the caller keeps only the first ``n`` output rows."""
    out: dict[str, np.ndarray] = {}
    for name, arr in feeds.items():
        n, seq = arr.shape
        if n > batch or seq > length:
            raise ValueError(
                f"{name} {arr.shape} does not fit the planned shape ({batch}, {length})"
            )
        padded = np.zeros((batch, length), dtype=arr.dtype)
        padded[:n, :seq] = arr
        if batch > n:
            padded[n:] = padded[0]
        out[name] = padded
    return out


def run_planned(
    plan: GraphPlan,
    feeds: Mapping[str, np.ndarray],
    run_shape: Callable[[dict[str, np.ndarray]], np.ndarray],
) -> np.ndarray | None:
    """Run ``feeds`` through planned shapes only: padded, in chunks no larger than the
    largest planned batch at their length. ``run_shape`` gets feeds of exactly a planned
    shape and returns ``(batch, d)``; the result has one row per input row. None when the
    sequence is longer than every planned length (the caller runs it without a graph)."""
    first = next(iter(feeds.values()))
    n, seq = first.shape
    length = plan.length_for(seq)
    if length is None:
        return None
    largest = plan.batch_for(length, n)
    parts = []
    for start in range(0, n, largest):
        chunk = {name: arr[start : start + largest] for name, arr in feeds.items()}
        rows = next(iter(chunk.values())).shape[0]
        batch = plan.batch_for(length, rows)
        out = np.asarray(run_shape(pad_feeds(chunk, batch, length)))
        parts.append(out[:rows])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
