"""Native TensorRT backend: serves the bundle's ``encoder.plan`` (TensorRT 10.x Python API).

**Untested on hardware**: this module was written without access to a GPU; only its
error paths (no tensorrt / no GPU / no plan -> :class:`ConfigError`) run in CI. The
GPU-marked tests in ``tests/test_backends.py`` exercise it where a GPU is present.

Design:

- ``tensorrt`` and ``cuda-python`` are imported lazily, inside :class:`TensorRTBackend`,
  so the engine imports without them (``pip install explorank[tensorrt]`` adds them).
- A plan is built with one optimisation profile per length bucket (see the bundle's
  ``encoder.tensorrt.profiles``); each profile gets its own execution context (a
  profile can be active in one context at a time) with device buffers sized for the
  profile's maximum shape, allocated once. A batch uses the profile with the smallest
  maximum sequence length that fits it, so a 16-token batch runs the kernels tuned for
  16 tokens.
- Per call: ``set_input_shape`` for each input, host->device copies, ``execute_async_v3``
  on the backend's stream, one device->host copy of the ``(batch, d)`` output, then a
  stream sync. Device memory comes from ``cuda-python`` (``cudart``), not torch.
- Calls are serialised with a lock (the dynamic batcher uses a single worker thread
  anyway); the plan must have been built on the same GPU model and TensorRT version.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorank.engine.backends.base import Backend, check_batch, cuda_device_count
from explorank.errors import BundleError, ConfigError, InvalidArgumentError

__all__ = ["TensorRTBackend", "tensorrt_unavailable_reason"]

log = logging.getLogger(__name__)


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
    return cudart


def tensorrt_unavailable_reason() -> str | None:
    """Why the native TensorRT backend cannot run here, or ``None`` when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"the tensorrt Python package is not installed ({exc}); pip install 'explorank[tensorrt]'"
    try:
        _import_cudart()
    except ImportError as exc:
        return f"cuda-python is not installed ({exc}); pip install 'explorank[tensorrt]'"
    if cuda_device_count() == 0:
        return "no NVIDIA GPU is usable (no CUDA driver or device)"
    return None


def _check(result: Any, what: str) -> Any:
    """cuda-python returns ``(err, *values)``; raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class _Profile:
    """One optimisation profile: its context and device buffers sized for its max shape."""

    def __init__(
        self, index: int, context: Any, min_shape: tuple[int, int], max_shape: tuple[int, int]
    ):
        self.index = index
        self.context = context
        self.min_shape = min_shape
        self.max_shape = max_shape
        self.buffers: dict[str, int] = {}

    def fits(self, batch: int, seq: int) -> bool:
        return (
            self.min_shape[0] <= batch <= self.max_shape[0]
            and self.min_shape[1] <= seq <= self.max_shape[1]
        )


class TensorRTBackend(Backend):
    """A deserialised TensorRT engine with one execution context per optimisation profile."""

    name = "tensorrt"
    provider = "TensorRT"

    def __init__(
        self,
        plan_path: str | os.PathLike[str],
        *,
        input_names: Sequence[str],
        output_name: str,
        embedding_dim: int,
        precision: str = "fp16",
    ) -> None:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise ConfigError(f"backend=tensorrt cannot run: {reason}")
        import tensorrt as trt

        self._trt = trt
        self._cudart = cudart = _import_cudart()
        self.plan_path = Path(plan_path)
        if not self.plan_path.is_file():
            raise BundleError(f"TensorRT plan {self.plan_path} is missing")
        self.precision = precision
        self.embedding_dim = int(embedding_dim)
        self._output = output_name
        self._lock = threading.Lock()
        self._closed = False

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            raise BundleError(
                f"{self.plan_path} cannot be deserialised by TensorRT {trt.__version__} "
                "(a plan only loads on the TensorRT version and GPU model it was built with; rebuild it)"
            )
        self._engine = engine
        tensors = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [t for t in tensors if engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT]
        names = list(input_names) or inputs
        if sorted(names) != sorted(inputs):
            raise BundleError(
                f"manifest encoder inputs {names} do not match the plan's inputs {inputs}"
            )
        if output_name not in tensors:
            raise BundleError(f"the plan has no output {output_name!r} (tensors: {tensors})")
        self._inputs = names
        self._dtypes = {t: np.dtype(trt.nptype(engine.get_tensor_dtype(t))) for t in tensors}
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")

        self._profiles: list[_Profile] = []
        for p in range(engine.num_optimization_profiles):
            lo, _opt, hi = engine.get_tensor_profile_shape(names[0], p)
            ctx = engine.create_execution_context()
            ctx.set_optimization_profile_async(p, int(self._stream))
            prof = _Profile(p, ctx, (int(lo[0]), int(lo[1])), (int(hi[0]), int(hi[1])))
            batch, seq = prof.max_shape
            for t in names:
                nbytes = batch * seq * self._dtypes[t].itemsize
                prof.buffers[t] = _check(cudart.cudaMalloc(nbytes), "cudaMalloc")
            out_bytes = batch * self.embedding_dim * self._dtypes[output_name].itemsize
            prof.buffers[output_name] = _check(cudart.cudaMalloc(out_bytes), "cudaMalloc")
            for t, ptr in prof.buffers.items():
                ctx.set_tensor_address(t, int(ptr))
            self._profiles.append(prof)
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        # smallest max sequence first: the first profile that fits is the tightest
        self._profiles.sort(key=lambda pr: (pr.max_shape[1], pr.max_shape[0]))
        log.info(
            "tensorrt %s: %s precision=%s profiles=%s",
            trt.__version__,
            self.plan_path.name,
            precision,
            [(p.min_shape, p.max_shape) for p in self._profiles],
        )

    @property
    def profiles(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """``(min (batch, seq), max (batch, seq))`` of each optimisation profile."""
        return [(p.min_shape, p.max_shape) for p in self._profiles]

    def _profile_for(self, batch: int, seq: int) -> _Profile:
        for prof in self._profiles:
            if prof.fits(batch, seq):
                return prof
        raise InvalidArgumentError(
            "input_ids",
            f"batch shape ({batch}, {seq}) fits no TensorRT optimisation profile {self.profiles}; "
            "keep max_batch_size and the length buckets within the profiles the plan was built with",
        )

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = check_batch(input_ids, attention_mask)
        batch, seq = ids.shape
        limit = max(
            (p.max_shape[0] for p in self._profiles if p.min_shape[1] <= seq <= p.max_shape[1]),
            default=0,
        )
        if 0 < limit < batch:  # larger than the profile allows: run it in chunks
            return np.concatenate(
                [
                    self.encode(ids[i : i + limit], mask[i : i + limit])
                    for i in range(0, batch, limit)
                ]
            )
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        host: dict[str, np.ndarray] = {}
        for name in self._inputs:
            src = (
                ids
                if name == "input_ids"
                else mask
                if name == "attention_mask"
                else np.zeros_like(ids)
            )
            host[name] = np.ascontiguousarray(src, dtype=self._dtypes[name])
        out = np.empty((batch, self.embedding_dim), dtype=self._dtypes[self._output])
        with self._lock:
            if self._closed:
                raise RuntimeError("TensorRT backend is closed")
            prof = self._profile_for(batch, seq)
            ctx = prof.context
            for name, arr in host.items():
                ctx.set_input_shape(name, (batch, seq))
                _check(
                    cudart.cudaMemcpyAsync(
                        prof.buffers[name], arr.ctypes.data, arr.nbytes, h2d, self._stream
                    ),
                    "cudaMemcpyAsync(H2D)",
                )
            if not ctx.execute_async_v3(int(self._stream)):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for shape ({batch}, {seq})")
            _check(
                cudart.cudaMemcpyAsync(
                    out.ctypes.data, prof.buffers[self._output], out.nbytes, d2h, self._stream
                ),
                "cudaMemcpyAsync(D2H)",
            )
            _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for prof in self._profiles:
                for ptr in prof.buffers.values():
                    self._cudart.cudaFree(ptr)
                prof.buffers.clear()
                prof.context = None
            self._profiles.clear()
            self._cudart.cudaStreamDestroy(self._stream)
            self._engine = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {
                "plan": self.plan_path.name,
                "tensorrt_version": self._trt.__version__,
                "profiles": [{"min": list(lo), "max": list(hi)} for lo, hi in self.profiles],
            }
        )
        return info
