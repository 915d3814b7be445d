"""The machine's measured single-precision matrix-multiply rate: the "ceiling".

An encoder is a stack of GEMMs; the best a backend can reach is roughly what the
machine's tuned sgemm reaches on large square matrices with the same number of
threads. This module measures exactly that with numpy (which calls its BLAS, usually
OpenBLAS): ``n x n`` float32 matrices, best of ``repeats`` timed products after one
warm-up, ``2·n³`` FLOPs each. Best-of (not mean) because the ceiling is a capability:
interference only ever makes a run slower.

Threads: the BLAS thread pool is limited with ``threadpoolctl`` when it is installed
(then the measured rate uses the same thread count as the backends). Without it the
BLAS uses its own default (often all cores, which equals the backends' default of
"CPUs available" on an unconstrained machine); the result records which happened.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from explorank.errors import InvalidArgumentError

__all__ = ["CeilingResult", "blas_info", "measure_matmul_ceiling"]


@dataclass
class CeilingResult:
    gflops: float
    numpy_gflops: float
    torch_gflops: float | None
    n: int
    threads: int
    threads_enforced: bool
    repeats: int
    best_s: float
    blas: list[dict[str, Any]] = field(default_factory=list)
    #: ONNX Runtime's own GEMM (MLAS) on a one-node MatMul graph: the kernels the ORT
    #: backends actually run, so the ceiling is never below what they can reach.
    ort_gflops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def blas_info() -> list[dict[str, Any]]:
    """Which BLAS numpy calls, as ``[{library, version, internal_api, threading_layer, num_threads}]``.

    From ``threadpoolctl`` when installed (it reads the loaded libraries, so it is what
    actually runs); otherwise from ``numpy.show_config(mode="dicts")`` (build-time info).
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None  # type: ignore[assignment]
    if threadpool_info is not None:
        out = []
        for entry in threadpool_info():
            if entry.get("user_api") != "blas":
                continue
            out.append(
                {
                    "library": entry.get("internal_api"),
                    "version": entry.get("version"),
                    "threading_layer": entry.get("threading_layer"),
                    "architecture": entry.get("architecture"),
                    "num_threads": entry.get("num_threads"),
                    "source": "threadpoolctl",
                }
            )
        if out:
            return out
    try:
        cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = cfg.get("Build Dependencies", {}).get("blas", {})  # type: ignore[union-attr]
        return [
            {
                "library": blas.get("name"),
                "version": blas.get("version"),
                "source": "numpy.show_config",
            }
        ]
    except (TypeError, AttributeError):  # pragma: no cover - very old numpy
        return [{"library": "unknown", "source": "numpy.show_config unavailable"}]


@contextlib.contextmanager
def _blas_threads(threads: int) -> Iterator[bool]:
    """Limit the BLAS pool to ``threads``; yields whether the limit could be enforced."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield True


def measure_torch_matmul(
    threads: int, *, n: int = 2048, repeats: int = 5, timer: Callable[[], float] = time.perf_counter
) -> float | None:
    """The same measurement with ``torch.matmul`` (MKL/oneDNN), or None without torch.

    A second opinion: numpy's BLAS may run generic kernels on a CPU it does not
    recognise (OpenBLAS picks "Haswell" kernels on some virtualised AVX-512 CPUs), and a
    ceiling below what a backend reaches would be no ceiling. Only used when torch is
    already loaded (importing it just for this costs seconds).
    """
    import sys

    if "torch" not in sys.modules:
        return None
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    with torch.inference_mode():
        torch.matmul(a, b, out=out)
        best = float("inf")
        for _ in range(repeats):
            t0 = timer()
            torch.matmul(a, b, out=out)
            best = min(best, timer() - t0)
    return 2.0 * n**3 / max(best, 1e-9) / 1e9


def measure_ort_matmul(
    threads: int, *, n: int = 2048, repeats: int = 5, timer: Callable[[], float] = time.perf_counter
) -> float | None:
    """The same measurement through ONNX Runtime (a single MatMul node, MLAS kernels), or
    None when ``onnx`` is not installed to build the graph."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        return None
    import onnxruntime as ort

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "ceiling",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(
        onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString(),
        opts,
        providers=["CPUExecutionProvider"],
    )
    rng = np.random.default_rng(1)
    feeds = {
        "a": rng.standard_normal((n, n), dtype=np.float32),
        "b": rng.standard_normal((n, n), dtype=np.float32),
    }
    sess.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        t0 = timer()
        sess.run(None, feeds)
        best = min(best, timer() - t0)
    return 2.0 * n**3 / max(best, 1e-9) / 1e9


def measure_matmul_ceiling(
    threads: int,
    *,
    n: int = 2048,
    repeats: int = 5,
    timer: Callable[[], float] = time.perf_counter,
    seed: int = 0,
    with_torch: bool = False,
    with_ort: bool = False,
) -> CeilingResult:
    """Best-of-``repeats`` float32 ``n x n`` matmul rate in GFLOP/s with ``threads`` BLAS threads.

    ``gflops`` is the fastest of numpy's rate, torch's (``with_torch``, torch already
    imported) and ONNX Runtime's MLAS (``with_ort``); each is recorded.
    """
    if threads < 1:
        raise InvalidArgumentError("threads", f"must be >= 1, got {threads}")
    if n < 64:
        raise InvalidArgumentError(
            "n", f"matrix size must be >= 64 to measure a GEMM rate, got {n}"
        )
    if repeats < 1:
        raise InvalidArgumentError("repeats", f"must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    with _blas_threads(threads) as enforced:
        np.matmul(a, b, out=out)  # warm-up: thread pool start, page faults
        best = float("inf")
        for _ in range(repeats):
            t0 = timer()
            np.matmul(a, b, out=out)
            best = min(best, timer() - t0)
        info = blas_info()
    best = max(best, 1e-9)
    numpy_gflops = 2.0 * n**3 / best / 1e9
    torch_gflops = (
        measure_torch_matmul(threads, n=n, repeats=repeats, timer=timer) if with_torch else None
    )
    ort_gflops = (
        measure_ort_matmul(threads, n=n, repeats=repeats, timer=timer) if with_ort else None
    )
    return CeilingResult(
        gflops=max(numpy_gflops, torch_gflops or 0.0, ort_gflops or 0.0),
        ort_gflops=ort_gflops,
        numpy_gflops=numpy_gflops,
        torch_gflops=torch_gflops,
        n=n,
        threads=threads,
        threads_enforced=enforced,
        repeats=repeats,
        best_s=best,
        blas=info,
    )
